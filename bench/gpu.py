"""GPU benchmark: raw ONNX Runtime / torch throughput, the real server on top, and cold loads to the GPU.

On a GPU machine, from a checkout (no install, no Ray, no HAProxy; about 3 minutes, at most 5):

    PYTHONPATH=app python3 bench/gpu.py --json gpu.json

It needs torch (CUDA), onnx, onnxruntime-gpu, numpy and the replica's HTTP stack (starlette, uvicorn,
httptools, uvloop, orjson, pydantic, prometheus-client, fsspec, pyyaml, httpx); torchvision is optional.
``--device cpu --quick`` runs the same measurements with small models in about half a minute.

1. build: an MLP (1024 -> 4096 -> 4096 -> 10) and ResNet-18 (torchvision's, else bench/gpu_models.py's
   copy of it), random weights, float32, exported to ONNX (dynamic batch) and saved as torch state
   dicts, published into a temporary local store.
2. raw: samples/s at batch 1/8/32/128 for ONNX Runtime (CUDA EP) and torch, with inputs and outputs
   resident on the device (IO binding / CUDA tensors: the ceiling) and numpy in / numpy out through
   our runtime's ``LoadedModel.infer`` (what the server pays per call); the two alternate in rounds and
   the best round counts.
3. served: the replica's real HTTP server (``EmbeddedServer``: DataPlane + ASGI app under uvicorn, in
   its own process) and closed-loop keep-alive clients (bench/loadgen.py, 4 processes on a GPU) sending
   batch-1 binary OIP requests at 1/32/128 clients, each model with and without dynamic batching
   (``max_batch_size: 32, max_queue_delay_ms: 2``); served throughput is compared with raw numpy
   in/out throughput at the mean batch size the server reached (its ``manymodels_batch_size`` metric).
4. cold: a request for a model that is not resident (unloaded through the repository API) until its
   answer, vs creating the session / module and running it once in this process.

Every ratio compares numbers measured in this run. Sections print their table as soon as they end;
``--json`` is rewritten after each section, so a timeout keeps what was measured; measurements that
would overrun ``--budget`` (285 s) are skipped and say so.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import http.client
import json
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import Result, post_request, run_load  # noqa: E402

HOST = "127.0.0.1"
BINARY_HEADER = "inference-header-content-length"  # manymodels.codec.BINARY_HEADER
RUNTIMES = ("onnx", "torch")
MAX_ONGOING = 256
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


# ---- what to run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    mlp: list[int]
    image: int  # ResNet input: 3 x image x image
    width: int  # the hand-written ResNet's base width (torchvision's is 64)
    classes: int
    batches: list[int]
    clients: list[int]
    seconds: float  # each served measurement
    raw_seconds: float  # each raw measurement
    warmup: float
    cold_reps: int
    client_procs: int
    budget_s: float  # the whole run; measurements that no longer fit are skipped


def make_plan(device: str, quick: bool, seconds: float | None, budget: float) -> Plan:
    if device == "cuda":
        plan = Plan(
            mlp=[1024, 4096, 4096, 10],
            image=224,
            width=64,
            classes=1000,
            batches=[1, 32] if quick else [1, 8, 32, 128],
            clients=[1, 32] if quick else [1, 32, 128],
            seconds=1.0 if quick else 2.5,
            raw_seconds=0.3 if quick else 0.6,
            warmup=0.5,
            cold_reps=2 if quick else 4,
            client_procs=4,  # one Python client process tops out below what the GPU serves
            budget_s=budget,
        )
    else:
        plan = Plan(
            mlp=[256, 1024, 1024, 10],
            image=32,
            width=16,
            classes=10,
            batches=[1, 8, 32] if quick else [1, 8, 32, 128],
            clients=[1, 16] if quick else [1, 8, 32],
            seconds=1.0 if quick else 2.0,
            raw_seconds=0.25 if quick else 0.5,
            warmup=0.3 if quick else 0.5,
            cold_reps=3 if quick else 5,
            client_procs=1,
            budget_s=budget,
        )
    if seconds is not None:
        plan = Plan(**{**asdict(plan), "seconds": seconds, "raw_seconds": max(0.2, seconds / 4)})
    return plan


class Deadline:
    def __init__(self, budget_s: float) -> None:
        self.end = STARTED + budget_s

    def fits(self, seconds: float) -> bool:
        return time.perf_counter() + seconds < self.end


@dataclass
class Model:
    name: str  # "mlp" or "resnet"
    label: str  # what it is, for the tables
    sample_shape: list[int]
    classes: int
    module: str  # import path of the torch module class (or function) the server builds
    options: dict[str, Any]
    onnx_path: Path = field(default=Path())
    state_path: Path = field(default=Path())

    def served(self, runtime: str, batched: bool = False) -> str:
        return f"{self.name}-{runtime}" + ("-b" if batched else "")

    def factory(self) -> Any:
        from manymodels.imports import import_object

        return import_object(self.module, "torch module")(**self.options)

    def example(self, batch: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((batch, *self.sample_shape), dtype=np.float32)


# ---- 1. build -------------------------------------------------------------------------------------


def define_models(plan: Plan, device: str) -> list[Model]:
    mlp = Model(
        "mlp",
        "MLP " + "->".join(map(str, plan.mlp)),
        [plan.mlp[0]],
        plan.mlp[-1],
        "gpu_models:MLP",
        {"sizes": plan.mlp},
    )
    image = [3, plan.image, plan.image]
    try:
        if device != "cuda":  # the small CPU version is the hand-written one at a reduced width
            raise ImportError
        import torchvision.models  # noqa: F401

        resnet = Model(
            "resnet",
            f"torchvision resnet18, 3x{plan.image}x{plan.image}",
            image,
            plan.classes,
            "torchvision.models:resnet18",
            {"num_classes": plan.classes},
        )
    except ImportError:
        resnet = Model(
            "resnet",
            f"ResNet-18 layout, width {plan.width}, 3x{plan.image}x{plan.image} (gpu_models)",
            image,
            plan.classes,
            "gpu_models:ResNet18",
            {"width": plan.width, "num_classes": plan.classes},
        )
    return [mlp, resnet]


def build(models: list[Model], work: Path, root: Path) -> list[list[str]]:
    """Random weights -> ONNX + state dict -> published as {name}-{onnx,torch}[-b] version 1."""
    import torch

    from manymodels.store import TensorSpec, publish_version

    rows = []
    for model in models:
        torch.manual_seed(0)
        module = model.factory().eval()
        model.onnx_path = work / f"{model.name}.onnx"
        model.state_path = work / f"{model.name}.pt"
        torch.save(module.state_dict(), model.state_path)
        example = torch.from_numpy(model.example(2))
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter: it needs no onnxscript and works the same on torch 2.11
            # and 2.15 (the dynamo exporter is the default since 2.9 and would need onnxscript).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(model.onnx_path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        inputs = [TensorSpec(name="input", dtype="float32", shape=[-1, *model.sample_shape])]
        outputs = [TensorSpec(name="logits", dtype="float32", shape=[-1, model.classes])]
        for runtime in RUNTIMES:
            artifact = model.onnx_path if runtime == "onnx" else model.state_path
            fmt = "onnx" if runtime == "onnx" else "torch_state_dict"
            for batched in (False, True):
                publish_version(
                    root,
                    model.served(runtime, batched),
                    "1",
                    runtime=runtime,
                    format=fmt,
                    artifact=artifact,
                    inputs=inputs,
                    outputs=outputs,
                )
        params = sum(p.numel() for p in module.parameters())
        # The two artifacts must compute the same function, or the comparisons mean nothing.
        import onnxruntime as ort

        x = model.example(4, seed=1)
        with torch.inference_mode():
            want = module(torch.from_numpy(x)).numpy()
        got = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )[0]
        diff = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
        rows.append(
            [
                model.name,
                model.label,
                f"{params / 1e6:.1f} M",
                f"{model.onnx_path.stat().st_size / 2**20:.1f}",
                f"{model.state_path.stat().st_size / 2**20:.1f}",
                f"{diff:.1e}",
            ]
        )
        log(f"built {model.name}: {model.label}")
    return rows


# ---- 2. raw ---------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], seconds: float) -> tuple[float, list[float]]:
    """(calls per second, seconds of each call) over at least ``seconds`` and 5 calls."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        now = time.perf_counter()
        times.append(now - t0)
        if now - start >= seconds and len(times) >= 5:
            return len(times) / (now - start), times


def compare(
    a: Callable[[], Any], b: Callable[[], Any], seconds: float, rounds: int = 3
) -> list[tuple[float, float]]:
    """[(calls/s, median ms)] for ``a`` and ``b``, measured in alternating rounds; the best round counts,
    so a burst of other work on a shared machine hits both alike and is mostly filtered out."""
    for _ in range(3):  # first calls: allocations, kernel/algorithm selection
        a()
        b()
    best, calls = [0.0, 0.0], [[], []]
    for _ in range(rounds):
        for i, fn in enumerate((a, b)):
            rate, times = timed(fn, seconds / rounds)
            best[i] = max(best[i], rate)
            calls[i] += times
    return [(best[i], statistics.median(calls[i]) * 1000) for i in range(2)]


def ort_providers(device: str) -> list[Any]:
    from manymodels.runtimes import RuntimeSettings
    from manymodels.runtimes.onnx import _providers

    # Exactly the providers (and CUDA options) the runtime asks for, so raw and served differ only
    # by what the server adds.
    return _providers(RuntimeSettings(device=device))[1]


def ort_session(path: Path, device: str) -> Any:
    import onnxruntime as ort

    from manymodels.runtimes import RuntimeSettings
    from manymodels.runtimes.onnx import session_options

    return ort.InferenceSession(
        str(path),
        sess_options=session_options(RuntimeSettings(device=device)),
        providers=ort_providers(device),
    )


def torch_module(model: Model, device: str) -> Any:
    import torch

    module = model.factory()
    module.load_state_dict(torch.load(str(model.state_path), map_location="cpu", weights_only=True))
    return module.to(device).eval()


def device_resident(model: Model, runtime: str, device: str) -> Callable[[np.ndarray], Callable[[], Any]]:
    """x -> a call that runs the model on x already on the device, output left there (synchronised)."""
    if runtime == "onnx":
        import onnxruntime as ort

        session = ort_session(model.onnx_path, device)

        def bind(x: np.ndarray) -> Callable[[], Any]:
            binding = session.io_binding()
            binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, device, 0))
            binding.bind_output("logits", device)

            def call() -> None:
                session.run_with_iobinding(binding)
                binding.synchronize_outputs()

            return call

        return bind
    import torch

    module = torch_module(model, device)

    def bind_torch(x: np.ndarray) -> Callable[[], Any]:
        xt = torch.from_numpy(x).to(device)

        def call() -> None:
            with torch.inference_mode():
                module(xt)
            if device == "cuda":
                torch.cuda.synchronize()

        return call

    return bind_torch


def runtime_model(model: Model, runtime: str, device: str, root: Path) -> Any:
    """The model as the server's runtime loads it (manymodels.runtimes.load_model)."""
    from manymodels.runtimes import RuntimeSettings, load_model
    from manymodels.store import LocalStore

    store = LocalStore(root)
    name = model.served(runtime)
    return load_model(
        store.manifest(name, "1"),
        store.fetch(name, "1"),
        RuntimeSettings(device=device),
        module_factory=model.factory,
    )


def placement(loaded: Any) -> dict[str, Any]:
    """Where a loaded model runs: the runtime's device and, for ONNX, the session's providers in use."""
    session = getattr(loaded, "session", None)
    return {"device": loaded.device, "providers": session.get_providers() if session is not None else None}


def on_device(placed: dict[str, Any], device: str) -> bool:
    providers = placed["providers"]
    if device == "cuda" and providers is not None:
        return providers[0] == "CUDAExecutionProvider"  # ORT falls back to CPU without raising
    return placed["device"] == device


def free_device_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def raw_part(
    models: list[Model], plan: Plan, device: str, root: Path, deadline: Deadline, skip: set[str]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model in models:
        for runtime in RUNTIMES:
            if runtime in skip:
                continue
            if not deadline.fits(2 * plan.raw_seconds + 5):
                log(f"raw {model.name} {runtime}: skipped (time budget)")
                continue
            resident = device_resident(model, runtime, device)
            loaded = runtime_model(model, runtime, device, root)
            placed = placement(loaded)
            log(f"raw {model.name} {runtime}: the runtime placed it on {placed}")
            if not on_device(placed, device):
                log(f"WARNING: raw {model.name} {runtime}: our runtime did not put it on {device}")
            for batch in plan.batches:
                if not deadline.fits(2 * plan.raw_seconds + 3):
                    log(f"raw {model.name} {runtime} batch {batch}: skipped (time budget)")
                    continue
                x = model.example(batch)
                (dev_cps, dev_ms), (np_cps, np_ms) = compare(
                    resident(x), functools.partial(loaded.infer, {"input": x}), 2 * plan.raw_seconds
                )
                row = {
                    "model": model.name,
                    "runtime": runtime,
                    "batch": batch,
                    "device_sps": dev_cps * batch,
                    "device_ms": dev_ms,
                    "numpy_sps": np_cps * batch,
                    "numpy_ms": np_ms,
                }
                rows.append(row)
                log(
                    f"raw {model.name} {runtime} b={batch}: {row['device_sps']:,.0f} samples/s on device, "
                    f"{row['numpy_sps']:,.0f} numpy in/out"
                )
            loaded.close()
            del resident, loaded
            free_device_memory()
    return rows


def raw_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = table(
        [
            "model",
            "runtime",
            "batch",
            "device-resident samples/s",
            "ms/call",
            "numpy in/out samples/s (our runtime)",
            "ms/call",
            "numpy / device",
        ]
    )
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['device_sps']:,.0f} | {r['device_ms']:.3f} "
            f"| {r['numpy_sps']:,.0f} | {r['numpy_ms']:.3f} | {r['numpy_sps'] / r['device_sps']:.2f}x |"
        )
    return lines


def raw_at(raw: list[dict[str, Any]], model: str, runtime: str, batch: float) -> float | None:
    """numpy in/out samples/s at ``batch``, log-log interpolated between the measured batch sizes."""
    points = sorted(
        (r["batch"], r["numpy_sps"]) for r in raw if r["model"] == model and r["runtime"] == runtime
    )
    if not points:
        return None
    xs = np.log([p[0] for p in points])
    ys = np.log([p[1] for p in points])
    return float(np.exp(np.interp(np.log(max(batch, 1.0)), xs, ys)))


# ---- 3. served ------------------------------------------------------------------------------------


def server_config(models: list[Model], device: str, root: Path, batching: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for model in models:
        for batched in (False, True) if batching else (False,):
            torch_opts: dict[str, Any] = {"module": model.module, "module_options": model.options}
            batch_opts = {"batching": {"max_batch_size": 32, "max_queue_delay_ms": 2}} if batched else {}
            options[model.served("torch", batched)] = {**torch_opts, **batch_opts}
            if batched:
                options[model.served("onnx", batched)] = batch_opts
    return {
        "store": {"uri": str(root), "refresh_interval_s": 0},
        "cache": {"capacity_bytes": "32Gi" if device == "cuda" else "4Gi"},
        "runtime": {"device": device},
        "models": options,
        # A batch-32 warm-up request of 224x224 images is ~19 MB.
        "limits": {"max_body_bytes": "256Mi"},
    }


def batching_supported(config: dict[str, Any]) -> str | None:
    """None if the app accepts the config's ``batching`` options, else why not."""
    from pydantic import ValidationError

    from manymodels.config import ServerConfig

    try:
        ServerConfig.model_validate(config)
    except ValidationError as exc:
        if "batching" in str(exc):
            return str(exc).splitlines()[0] + " (" + str(exc).splitlines()[1].strip() + ")"
        raise
    return None


class ServerProcess:
    """The real replica HTTP server in its own process (``--serve``), like a replica beside its clients."""

    def __init__(self, config: dict[str, Any], work: Path, preload_dlls: bool) -> None:
        path = work / "server.json"
        path.write_text(json.dumps(config))
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(path)]
        if preload_dlls:
            command.append("--ort-preload-dlls")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self._reply("PORT "))
        # http.client: one keep-alive connection and little client time in the cold figures (httpx
        # adds about a millisecond per request).
        self.conn = http.client.HTTPConnection(HOST, self.port, timeout=300)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> bytes:
        self.conn.request(method, path, body, headers or {})
        reply = self.conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {reply.status}: {data[:500]!r}")
        return data

    def placements(self) -> dict[str, dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("placements\n")
        self.proc.stdin.flush()
        return json.loads(self._reply("PLACEMENTS "))

    def _reply(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            self.proc.kill()
            raise RuntimeError(
                f"server process: expected {prefix.strip()}, got {line!r} (exit {self.proc.wait()})"
            )
        return line[len(prefix) :]

    def infer(self, name: str, x: np.ndarray) -> float:
        """One request; seconds to the answer (raises on a non-200)."""
        header, payload = oip_body(x)
        body, headers = header + payload, {BINARY_HEADER: str(len(header))}
        started = time.perf_counter()
        self.request("POST", f"/v2/models/{name}/infer", body, headers)
        return time.perf_counter() - started

    def unload(self, name: str) -> None:
        self.request("POST", f"/v2/repository/models/{name}/unload")

    def batch_stats(self, name: str) -> tuple[float, float]:
        """(sum, count) of the model's ``manymodels_batch_size`` histogram; zeros when absent."""
        text = self.request("GET", "/metrics").decode()
        found = {}
        for kind in ("sum", "count"):
            match = re.search(
                rf'^manymodels_batch_size_{kind}\{{[^}}]*model="{re.escape(name)}"[^}}]*\}} (\S+)$',
                text,
                re.M,
            )
            found[kind] = float(match.group(1)) if match else 0.0
        return found["sum"], found["count"]

    def close(self) -> None:
        self.conn.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the server stops when its stdin closes
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def oip_body(x: np.ndarray) -> tuple[bytes, bytes]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header, x.tobytes()


def request_bytes(port: int, name: str, model: Model, n: int = 8) -> list[bytes]:
    """``n`` distinct batch-1 binary OIP requests, whole HTTP bytes for the load generator."""
    out = []
    for i in range(n):
        header, payload = oip_body(model.example(1, seed=100 + i))
        out.append(
            post_request(
                HOST, port, f"/v2/models/{name}/infer", header + payload, {BINARY_HEADER: str(len(header))}
            )
        )
    return out


def load(pool: Any, port: int, bodies: list[bytes], clients: int, seconds: float, procs: int) -> Result:
    """Closed-loop load from ``procs`` client processes (one Python client tops out at ~10k req/s)."""
    procs = max(1, min(procs, clients))
    if procs == 1 or pool is None:
        return run_load(HOST, port, bodies, clients=clients, seconds=seconds, warmup=0)
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    jobs = [pool.apply_async(_load_share, (port, bodies, share, seconds)) for share in shares]
    parts = [job.get(timeout=seconds + 120) for job in jobs]
    merged = Result(seconds=max(p.seconds for p in parts))
    for part in parts:
        merged.requests += part.requests
        merged.errors += part.errors
        merged.latencies += part.latencies
    return merged


def _load_share(port: int, bodies: list[bytes], clients: int, seconds: float) -> Result:
    return run_load(HOST, port, bodies, clients=clients, seconds=seconds, warmup=0)


def _exit_with(parent: int) -> None:
    """Pool initializer: a client process leaves when the benchmark dies (e.g. killed by a timeout)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def served_part(
    models: list[Model],
    plan: Plan,
    server: ServerProcess,
    batching: bool,
    pool: Any,
    deadline: Deadline,
    skip: set[str],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model in models:
        for runtime in RUNTIMES:
            if runtime in skip:
                continue
            for batched in (False, True) if batching else (False,):
                name = model.served(runtime, batched)
                if batched:
                    # ORT's CUDA EP picks cuDNN algorithms per new input shape (exhaustive search by
                    # default): meet every batch size once so the measurement sees the steady state.
                    t0 = time.perf_counter()
                    for b in range(1, 33):
                        server.infer(name, model.example(b))
                    log(
                        f"served {name}: one request of each batch size 1..32 took "
                        f"{time.perf_counter() - t0:.1f} s"
                    )
                bodies = request_bytes(server.port, name, model)
                for clients in plan.clients:
                    if not deadline.fits(plan.warmup + plan.seconds + 3):
                        log(f"served {name} {clients} clients: skipped (time budget)")
                        continue
                    load(pool, server.port, bodies, clients, plan.warmup, plan.client_procs)
                    before = server.batch_stats(name)
                    r = load(pool, server.port, bodies, clients, plan.seconds, plan.client_procs)
                    after = server.batch_stats(name)
                    calls = after[1] - before[1]
                    row = {
                        "model": model.name,
                        "runtime": runtime,
                        "batching": batched,
                        "clients": clients,
                        "rps": r.rps,
                        "p50_ms": r.pct(50),
                        "p99_ms": r.pct(99),
                        "errors": r.errors,
                        "mean_batch": (after[0] - before[0]) / calls if calls else (None if batched else 1.0),
                    }
                    rows.append(row)
                    log(
                        f"served {name} {clients} clients: {r.rps:,.0f} req/s p50 {r.pct(50):.2f} ms "
                        f"p99 {r.pct(99):.2f} ms errors {r.errors}"
                        + (f" mean batch {row['mean_batch']:.1f}" if batched and row["mean_batch"] else "")
                    )
    return rows


def served_table(rows: list[dict[str, Any]], raw: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    lines = table(
        [
            "model",
            "runtime",
            "batching",
            "clients",
            "req/s (= samples/s)",
            "p50 ms",
            "p99 ms",
            "errors",
            "mean batch",
            "raw numpy samples/s at that batch",
            "served / raw",
            "batched / unbatched",
        ]
    )
    unbatched = {(r["model"], r["runtime"], r["clients"]): r for r in rows if not r["batching"]}
    verdicts: list[str] = []
    for r in rows:
        batch = r["mean_batch"]
        ceiling = raw_at(raw, r["model"], r["runtime"], batch) if batch else None
        r["raw_sps_at_batch"] = ceiling
        r["served_vs_raw"] = r["rps"] / ceiling if ceiling else None
        base = unbatched.get((r["model"], r["runtime"], r["clients"]))
        r["batched_vs_unbatched"] = r["rps"] / base["rps"] if r["batching"] and base and base["rps"] else None
        lines.append(
            f"| {r['model']} | {r['runtime']} | {'on' if r['batching'] else 'off'} | {r['clients']} "
            f"| {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} "
            f"| {_num(batch, '.1f')} | {_num(ceiling, ',.0f')} | {_num(r['served_vs_raw'], '.2f', 'x')} "
            f"| {_num(r['batched_vs_unbatched'], '.2f', 'x')} |"
        )
    # Issue 12's batching targets (set for the CPU), applied to this device.
    for (model, runtime, clients), base in unbatched.items():
        on = next(
            (
                r
                for r in rows
                if r["batching"] and (r["model"], r["runtime"], r["clients"]) == (model, runtime, clients)
            ),
            None,
        )
        if on is None:
            continue
        where = f"{model} {runtime} {clients} clients"
        if clients == 1:
            ratio = on["p50_ms"] / base["p50_ms"]
            verdicts.append(_verdict(f"{where}: p50 with batching / without", ratio, 1.1, upper=True))
        else:
            verdicts.append(
                _verdict(f"{where}: throughput with batching / without", on["batched_vs_unbatched"], 3.0)
            )
            verdicts.append(
                _verdict(f"{where}: batched throughput / raw at its mean batch", on["served_vs_raw"], 0.5)
            )
    return lines, verdicts


def warm_up(
    server: ServerProcess,
    models: list[Model],
    batching: bool,
    skip: set[str],
    device: str,
    used_before: tuple[int, int] | None,
) -> tuple[dict[str, Any], list[str]]:
    """Load every served model with one request; report where the server put each one."""
    import torch

    t0 = time.perf_counter()
    for model in models:
        for runtime in RUNTIMES:
            for batched in (False, True) if batching else (False,):
                if runtime not in skip:
                    server.infer(model.served(runtime, batched), model.example(1))
    log(f"server up on port {server.port}; every model loaded in {time.perf_counter() - t0:.1f} s")
    placed = server.placements()
    lines = table(["served model", "runtime device", "ORT providers in use", "counted bytes"])
    for key, p in sorted(placed.items()):
        providers = ", ".join(p["providers"]) if p["providers"] else "-"
        lines.append(f"| {key} | {p['device']} | {providers} | {p['bytes']:,} |")
    if used_before is not None:
        free, total = torch.cuda.mem_get_info()
        lines.append(
            f"\nGPU memory in use (whole device) went from {(total - used_before[0]) / 2**20:,.0f} MiB "
            f"to {(total - free) / 2**20:,.0f} MiB with the server's models resident "
            f"(the cache counts {sum(p['bytes'] for p in placed.values()) / 2**20:,.0f} MiB)"
        )
    wrong = sorted(k for k, p in placed.items() if not on_device(p, device))
    if wrong:
        lines.append(f"\n**WARNING: not on {device}: {', '.join(wrong)}**")
    return placed, lines


# ---- 4. cold --------------------------------------------------------------------------------------


def raw_cold(model: Model, runtime: str, device: str) -> tuple[float, float]:
    """(create + one run, create alone) in ms: an ORT session / a torch module from the state dict."""
    import torch

    x = model.example(1)
    t0 = time.perf_counter()
    if runtime == "onnx":
        session = ort_session(model.onnx_path, device)
        t1 = time.perf_counter()
        session.run(None, {"input": x})
        del session
    else:
        module = torch_module(model, device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            module(torch.from_numpy(x).to(device)).cpu().numpy()
        del module
    t2 = time.perf_counter()
    free_device_memory()
    return (t2 - t0) * 1000, (t1 - t0) * 1000


def cold_part(
    models: list[Model], plan: Plan, device: str, server: ServerProcess, deadline: Deadline, skip: set[str]
) -> list[dict[str, Any]]:
    rows = []
    for model in models:
        for runtime in RUNTIMES:
            if runtime in skip:
                continue
            name = model.served(runtime)
            if not deadline.fits(plan.cold_reps * 4 + 5):
                log(f"cold {name}: skipped (time budget)")
                continue
            x = model.example(1)
            server.infer(name, x)  # resident before the first unload, whatever ran before
            misses, hots = [], []
            for _ in range(plan.cold_reps):
                server.unload(name)
                time.sleep(0.2)  # the unloaded version is closed once idle; let its memory go
                misses.append(server.infer(name, x) * 1000)
                hots += [server.infer(name, x) * 1000 for _ in range(3)]
            raw_cold(model, runtime, device)  # first one pays this process's one-off set-up; not counted
            raws = [raw_cold(model, runtime, device) for _ in range(plan.cold_reps)]
            row = {
                "model": model.name,
                "runtime": runtime,
                "miss_ms": statistics.median(misses),
                "hot_ms": statistics.median(hots),
                "raw_ms": statistics.median(r[0] for r in raws),
                "raw_create_ms": statistics.median(r[1] for r in raws),
            }
            row["ratio"] = row["miss_ms"] / row["raw_ms"]
            rows.append(row)
            log(f"cold {name}: miss {row['miss_ms']:.1f} ms, raw create+run {row['raw_ms']:.1f} ms")
    return rows


def cold_table(rows: list[dict[str, Any]], reps: int) -> tuple[list[str], list[str]]:
    lines = table(
        [
            "model",
            "runtime",
            f"miss: request -> answer ms (median of {reps})",
            "hot request ms",
            "raw create + 1 run ms",
            "of which create ms",
            "miss / raw",
        ]
    )
    verdicts = []
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['miss_ms']:.1f} | {r['hot_ms']:.2f} | {r['raw_ms']:.1f} "
            f"| {r['raw_create_ms']:.1f} | **{r['ratio']:.2f}x** |"
        )
        verdicts.append(
            _verdict(
                f"cold {r['model']} {r['runtime']}: miss / (create + one run)", r["ratio"], 1.2, upper=True
            )
        )
    return lines, verdicts


# ---- the server side (--serve) ---------------------------------------------------------------------


def serve(config_path: str, preload_dlls: bool) -> None:
    """Run the replica's HTTP server until stdin closes; answer ``placements`` lines with JSON."""
    if preload_dlls:
        import onnxruntime as ort

        ort.preload_dlls()
    from manymodels.config import ServerConfig
    from manymodels.metrics import Metrics
    from manymodels.serve.concurrency import ConcurrencyLimits
    from manymodels.serve.embedded import EmbeddedServer

    # Replies go to a private copy of stdout; fd 1 itself goes to stderr, so nothing a library prints
    # (ORT prints its provider fallback) can garble them.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    config = ServerConfig.model_validate(json.loads(Path(config_path).read_text()))
    # The chart's default max_ongoing_requests: admission control on, and no client turned away at 128.
    limits = ConcurrencyLimits(max_ongoing=MAX_ONGOING)
    server = EmbeddedServer(config, Metrics("bench-gpu"), HOST, 0, limits)

    async def placements() -> dict[str, Any]:  # on the serving loop: the cache is not thread-safe
        cache = server.plane.cache
        found = {}
        for key, size in cache.resident():
            served = cache.peek(key)
            if served is not None:
                found[key] = {**placement(served.model), "bytes": size}
        return found

    print(f"PORT {server.start()}", file=replies, flush=True)
    for line in sys.stdin:
        if line.strip() == "placements":
            found = server.submit(placements()).result(60)
            print(f"PLACEMENTS {json.dumps(found)}", file=replies, flush=True)
    server.stop()


# ---- output -----------------------------------------------------------------------------------------


def table(headers: list[str]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _verdict(what: str, ratio: float | None, target: float, upper: bool = False) -> str:
    if ratio is None:
        return f"{what}: n/a"
    ok = ratio <= target if upper else ratio >= target
    return f"{what}: {ratio:.2f}x (target {'<=' if upper else '>='} {target}x) {'PASS' if ok else 'MISS'}"


def section(title: str, lines: list[str]) -> None:
    print(f"\n## {title}\n\n" + "\n".join(lines) + "\n", flush=True)


def environment(device: str) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        info["tf32"] = {
            "torch matmul": torch.backends.cuda.matmul.allow_tf32,
            "torch cudnn": torch.backends.cudnn.allow_tf32,
        }
    return info


def ort_cuda_ready(models: list[Model]) -> dict[str, Any]:
    """Whether ONNX Runtime really runs on CUDA here (a session that silently fell back to CPU, the CUDA
    EP listed but its libraries missing, counts as unusable), whether that took ``ort.preload_dlls()``,
    and the CUDA EP options in effect (TF32, cuDNN algorithm search, arena)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"usable": False, "note": "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    for attempt in range(2):
        try:
            session = ort_session(models[0].onnx_path, "cuda")
            providers = session.get_providers()
        except Exception as exc:  # some ORT versions raise instead of falling back
            log(f"ORT CUDA session failed: {exc}")
            providers = []
        if providers and providers[0] == "CUDAExecutionProvider":
            options = session.get_provider_options().get("CUDAExecutionProvider", {})
            keys = ("use_tf32", "cudnn_conv_algo_search", "arena_extend_strategy", "gpu_mem_limit")
            return {
                "usable": True,
                "preload": attempt == 1,
                "note": "needed ort.preload_dlls()" if attempt else "",
                "options": {k: options[k] for k in keys if k in options},
            }
        if attempt == 0 and hasattr(ort, "preload_dlls"):
            log("ORT fell back to CPU for a CUDA session; retrying after ort.preload_dlls()")
            ort.preload_dlls()
    return {
        "usable": False,
        "note": "CUDAExecutionProvider is listed but sessions fall back to CPU (CUDA/cuDNN libraries?)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when torch sees a GPU")
    parser.add_argument("--part", choices=["raw", "served", "cold", "all"], default="all")
    parser.add_argument("--seconds", type=float, help="each served measurement (raw: a quarter of it)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter measurements (smoke run)")
    parser.add_argument("--budget", type=float, default=285.0, help="whole-run seconds; later cells skip")
    parser.add_argument(
        "--client-procs", type=int, help="load generator processes (default: 4 on cuda, 1 on cpu)"
    )
    parser.add_argument("--json", type=Path, help="write the results here (after every section)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: the server process
    parser.add_argument("--ort-preload-dlls", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.ort_preload_dlls)
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here")
    plan = make_plan(device, args.quick, args.seconds, args.budget)
    if args.client_procs:
        plan = Plan(**{**asdict(plan), "client_procs": args.client_procs})
    deadline = Deadline(plan.budget_s)
    parts = {"raw", "served", "cold"} if args.part == "all" else {args.part}
    # Client processes are forked now, before this process starts CUDA or any thread pool.
    pool = None
    if "served" in parts and plan.client_procs > 1:
        pool = multiprocessing.get_context("fork").Pool(plan.client_procs, _exit_with, (os.getpid(),))
    # Same intra-op threads as the runtime's default (1): raw and served run the same kernels.
    torch.set_num_threads(1)
    results: dict[str, Any] = {"environment": environment(device), "plan": asdict(plan)}
    print(f"# bench/gpu.py: {json.dumps(results['environment'])}", flush=True)

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))

    with tempfile.TemporaryDirectory(prefix="mm-bench-gpu-") as tmp:
        work, root = Path(tmp), Path(tmp) / "store"
        models = define_models(plan, device)
        section(
            "build",
            table(["model", "what", "params", "ONNX MiB", "state dict MiB", "ONNX vs torch, max rel. diff"])
            + [f"| {' | '.join(row)} |" for row in build(models, work, root)],
        )
        skip: set[str] = set()
        preload = False
        if device == "cuda":
            ort_cuda = results["ort_cuda"] = ort_cuda_ready(models)
            preload = ort_cuda.get("preload", False)
            if not ort_cuda["usable"]:
                skip.add("onnx")
                print(f"ONNX Runtime on CUDA unavailable: {ort_cuda['note']}; ONNX rows skipped", flush=True)
            else:
                extra = f"; {ort_cuda['note']} (the server process gets the same)" if preload else ""
                print(f"ONNX Runtime CUDA EP in use, options {ort_cuda['options']}{extra}", flush=True)
        raw: list[dict[str, Any]] = []
        if "raw" in parts:
            raw = raw_part(models, plan, device, root, deadline, skip)
            results["raw"] = raw
            section(f"raw ({device}, samples/s)", raw_table(raw))
            save()
        verdicts: list[str] = []
        if parts & {"served", "cold"} and not deadline.fits(40):
            print("served and cold: skipped (time budget)", flush=True)
        elif parts & {"served", "cold"}:
            config = server_config(models, device, root, batching=True)
            why = batching_supported(config)
            if why:
                print(f"batching unavailable: {why}; served without it", flush=True)
                config = server_config(models, device, root, batching=False)
            results["batching_available"] = why is None
            used_before = torch.cuda.mem_get_info() if device == "cuda" else None
            server = ServerProcess(config, work, preload)
            try:
                placed, lines = warm_up(server, models, why is None, skip, device, used_before)
                results["placements"] = placed
                section("server placement", lines)
                if "served" in parts:
                    served = served_part(models, plan, server, why is None, pool, deadline, skip)
                    lines, served_verdicts = served_table(served, raw)
                    verdicts += served_verdicts
                    results["served"] = served
                    section(
                        f"served ({device}; batch-1 binary OIP requests, closed loop, "
                        f"{plan.client_procs} client process(es), max_ongoing_requests {MAX_ONGOING}; "
                        "batching: "
                        f"{'max_batch_size 32, max_queue_delay_ms 2' if why is None else 'unavailable'})",
                        lines + (["", *served_verdicts] if served_verdicts else []),
                    )
                    save()
                if "cold" in parts:
                    cold = cold_part(models, plan, device, server, deadline, skip)
                    lines, cold_verdicts = cold_table(cold, plan.cold_reps)
                    verdicts += cold_verdicts
                    results["cold"] = cold
                    section(
                        f"cold ({device}; model unloaded, then one batch-1 request)",
                        lines + ["", *cold_verdicts],
                    )
                    save()
            finally:
                server.close()
        if pool is not None:
            pool.terminate()
        results["verdicts"] = verdicts
        results["seconds"] = time.perf_counter() - STARTED
        save()
        print(f"total {results['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
