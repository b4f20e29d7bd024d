"""The baseline: bare uvicorn + starlette + onnxruntime serving the same catalog, no cache budget.

``python bench/bare_server.py <catalog root> <port>``; same uvicorn settings as the real server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def main() -> None:
    root, port = Path(sys.argv[1]), int(sys.argv[2])
    sessions: dict[str, tuple[ort.InferenceSession, str]] = {}
    for manifest_path in sorted(root.glob("*/1/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        if manifest["runtime"] != "onnx":
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(manifest_path.parent / manifest["artifact"]), options, ["CPUExecutionProvider"]
        )
        sessions[manifest["name"]] = (session, manifest["inputs"][0]["name"])

    async def predict(request: Request) -> Response:
        body = orjson.loads(await request.body())
        session, input_name = sessions[body["model"]]
        array = np.asarray(body["input_data"], dtype=np.float32)
        single = array.ndim == 1
        outputs = session.run(None, {input_name: array[None] if single else array})
        result = {"logits": (outputs[0][0] if single else outputs[0]).tolist()}
        return Response(
            orjson.dumps({"model": body["model"], "version": "1", "outputs": result}),
            media_type="application/json",
        )

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
    )


if __name__ == "__main__":
    main()
