"""The Gateway's own series from HAProxy's ``show stat`` (a real HAProxy feeds it in
test_haproxy_config.py; here the arithmetic on canned rows, and the socket protocol)."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from manymodels.serve.concurrency import ConcurrencyLimits
from manymodels.serve.gateway_metrics import read_stats, render_page

FIELDS = "pxname,svname,qcur,scur,hrsp_5xx,status"
CSV = f"""# {FIELDS},
manymodels,FRONTEND,,7,12,OPEN,
replicas,r1,3,8,2,UP,
replicas,r2,0,5,1,UP,
replicas,BACKEND,1,16,9,UP,
control,r1,,0,0,UP,
control,BACKEND,0,0,0,UP,
queue_full,BACKEND,0,0,6,UP,

"""


def samples(page: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("reason", "")): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.labels["gateway"] == "gw-1"
    }


def test_read_stats_speaks_the_stats_socket() -> None:
    path = Path(tempfile.mkdtemp(prefix="mm-")) / "stats.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    asked: list[bytes] = []

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            asked.append(conn.recv(100))
            conn.sendall(CSV.encode())

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        rows = read_stats(str(path))
    finally:
        thread.join()
        listener.close()
        path.unlink()
        path.parent.rmdir()
    assert asked == [b"show stat\n"]
    assert [(r["pxname"], r["svname"]) for r in rows][:4] == [
        ("manymodels", "FRONTEND"),
        ("replicas", "r1"),
        ("replicas", "r2"),
        ("replicas", "BACKEND"),
    ]
    page = samples(render_page("gw-1", rows, ConcurrencyLimits(8, 4)))
    # queued: the backend's own queue plus each server's; inflight: what the servers run
    assert page[("manymodels_gateway_queued", "")] == 1 + 3 + 0
    assert page[("manymodels_gateway_inflight", "")] == 8 + 5
    assert page[("manymodels_gateway_max_ongoing_requests", "")] == 8
    assert page[("manymodels_gateway_max_queued_requests", "")] == 4
    assert page[("manymodels_gateway_rejected_total", "queue_full")] == 6
    # HAProxy's own 5xx: the backend's 9 less the 3 the replicas answered
    assert page[("manymodels_gateway_rejected_total", "unavailable")] == 6


def test_no_rows_and_no_limits() -> None:
    page = samples(render_page("gw-1", [], None))
    assert page == {
        ("manymodels_gateway_queued", ""): 0,
        ("manymodels_gateway_inflight", ""): 0,
        ("manymodels_gateway_rejected_total", "queue_full"): 0,
        ("manymodels_gateway_rejected_total", "unavailable"): 0,
    }
