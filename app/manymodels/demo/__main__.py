"""``make demo``: build the demo catalog, start Serve on this machine, print working curl lines."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from manymodels.cli import say, serve_forever
from manymodels.config import load_serve_config
from manymodels.supervisor import run_supervised, supervisor_pid

DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")


def curl_lines(url: str) -> str:
    return f"""
  # the original contract: the default model (a text classifier with a Python pre-processor)
  curl -s -X POST {url}/predict -H 'content-type: application/json' -d '{{"input_data": "I love this product, it works great"}}'
  # a named model and version alias
  curl -s -X POST {url}/predict -d '{{"model": "text-sentiment", "version": "canary", "input_data": ["terrible, broken, a waste of money"]}}'
  # a tensor model, one sample of 64 floats
  curl -s -X POST {url}/predict -d '{{"model": "mlp-003", "input_data": [{", ".join(["0.5"] * 64)}]}}'
  # Open Inference Protocol v2 (Triton/KServe clients work unmodified)
  curl -s {url}/v2/models/mlp-003
  curl -s -X POST {url}/v2/models/mlp-003/infer -d '{{"inputs": [{{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [{", ".join(["0.1"] * 64)}]}}]}}'
  curl -s -X POST {url}/v2/repository/index
  curl -s {url}/metrics | grep manymodels_cache_
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manymodels.demo", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML")
    parser.add_argument("--models", default=os.environ.get("MM_MODEL_ROOT", ".demo/models"))
    parser.add_argument("--host", default=os.environ.get("MM_HOST", "127.0.0.1"))
    parser.add_argument("--port", default=os.environ.get("MM_PORT", "8000"))
    parser.add_argument("--mlp", type=int, default=30, help="number of demo MLP models")
    args = parser.parse_args(argv)
    if supervisor_pid() is None:
        return run_supervised("manymodels.demo", sys.argv[1:] if argv is None else argv)

    os.environ.update(
        MM_MODEL_ROOT=str(Path(args.models).resolve()), MM_HOST=args.host, MM_PORT=str(args.port)
    )
    root = Path(os.environ["MM_MODEL_ROOT"])
    if not (root / "text-sentiment").exists():
        say(f"building the demo catalog in {root} (ONNX and PyTorch models, made locally)")
        from manymodels.demo.catalog import build_demo_catalog

        names = build_demo_catalog(root, n_mlp=args.mlp)
        say(f"built {len(names)} models")
    config = load_serve_config(args.config)
    return serve_forever(config, on_ready=lambda url: print("Try:\n" + curl_lines(url), flush=True))


if __name__ == "__main__":
    sys.exit(main())
