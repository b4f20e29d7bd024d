"""The reference for routing: Ray Serve's own model multiplexing (LRU by count, Serve's router).

Each response carries ``x-loads: <replica>=<loads so far>`` so the benchmark can count reloads.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response


def build(root: str, models_per_replica: int, replicas: int) -> Application:
    @serve.deployment(
        num_replicas=replicas, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5}
    )
    class Multiplexed:
        def __init__(self) -> None:
            self._root = Path(root)
            self._loads = 0
            self._id = serve.get_replica_context().replica_id.unique_id

        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def get_model(self, model_id: str) -> tuple[ort.InferenceSession, str]:
            self._loads += 1
            manifest = json.loads((self._root / model_id / "1" / "manifest.json").read_text())
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            path = str(self._root / model_id / "1" / manifest["artifact"])
            session = await asyncio.to_thread(
                ort.InferenceSession, path, options, ["CPUExecutionProvider"]
            )
            return session, manifest["inputs"][0]["name"]

        async def __call__(self, request: Request) -> Response:
            session, input_name = await self.get_model(serve.get_multiplexed_model_id())
            body = orjson.loads(await request.body())
            array = np.asarray(body["input_data"], dtype=np.float32)
            outputs = session.run(None, {input_name: array[None]})
            return Response(
                orjson.dumps({"model": body["model"], "outputs": outputs[0][0].tolist()}),
                media_type="application/json",
                headers={"x-loads": f"{self._id}={self._loads}"},
            )

    return Multiplexed.bind()
