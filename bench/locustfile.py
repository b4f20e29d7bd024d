"""Load test for a running manymodels endpoint: many models, Zipf popularity.

    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s

Models come from the server's own repository index (``POST /v2/repository/index``), so the same file
works against ``make demo`` and against a cluster (port-forward or ingress). Environment:
``MM_ZIPF`` (default 1.0) skews popularity; ``MM_MODELS`` (comma list) pins the model set.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, events, task

ZIPF = float(os.environ.get("MM_ZIPF", "1.0"))
SAMPLE = [round(random.Random(1).random(), 4) for _ in range(64)]
TEXTS = ["I love this product, it works great", "terrible, broken, a waste of money"]
_models: list[str] = []
_weights: list[float] = []


@events.test_start.add_listener
def discover(environment, **_: object) -> None:
    """One look at the repository index: tensor models with a 64-wide input, plus the text model."""
    import httpx

    wanted = os.environ.get("MM_MODELS")
    if wanted:
        names = wanted.split(",")
    else:
        index = httpx.post(f"{environment.host}/v2/repository/index", timeout=30).json()
        names = sorted({m["name"] for m in index if m["name"].startswith(("mlp-", "text-"))})
    _models[:] = names
    _weights[:] = [1.0 / (rank + 1) ** ZIPF for rank in range(len(names))]


class ModelUser(FastHttpUser):
    wait_time = between(0, 0.01)

    @task(10)
    def predict(self) -> None:
        model = random.choices(_models, _weights)[0]
        data = random.choice(TEXTS) if model.startswith("text-") else SAMPLE
        self.client.post("/predict", json={"model": model, "input_data": data}, name="/predict")

    @task(1)
    def infer_oip(self) -> None:
        model = random.choices(_models, _weights)[0]
        if model.startswith("text-"):
            return
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": SAMPLE}]}
        self.client.post(f"/v2/models/{model}/infer", json=body, name="/v2/models/[name]/infer")
