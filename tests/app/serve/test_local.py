"""serve/local.py: which answers of /v2/health/ready count as "the server is up" while starting."""

from __future__ import annotations

import httpx

from manymodels.serve.local import _not_ready_reason


def response(status: int, body: object | str) -> httpx.Response:
    if isinstance(body, str):
        return httpx.Response(status, text=body)
    return httpx.Response(status, json=body)


def test_a_replica_not_ready_for_its_catalog_counts_as_started_with_its_reason() -> None:
    reason = "the default model 'text-sentiment' is not servable (not in the catalog, or failed to load)"
    assert _not_ready_reason(response(503, {"ready": False, "reason": reason})) == reason


def test_anything_else_is_not_started_yet() -> None:
    # HAProxy's own JSON 503 while no replica is up, a plain 503, other statuses, a ready answer
    assert _not_ready_reason(response(503, {"error": "no replica available"})) is None
    assert _not_ready_reason(response(503, "<html>503</html>")) is None
    assert _not_ready_reason(response(502, {"ready": False, "reason": "x"})) is None
    assert _not_ready_reason(response(200, {"ready": True})) is None
    assert _not_ready_reason(response(503, ["ready", False])) is None
