"""The Gateway's choice of replicas for its node's /metrics page (manymodels.serve.gateway.node_local)."""

from __future__ import annotations

from manymodels.serve.gateway import node_local
from manymodels.serve.registry import Endpoint


def test_a_gateway_serves_only_its_own_nodes_replicas() -> None:
    replicas = [
        Endpoint("a", "10.0.0.1", 40001),
        Endpoint("b", "10.0.0.2", 40002),
        Endpoint("c", "10.0.0.1", 40003),
    ]
    assert [r.replica for r in node_local(replicas, "10.0.0.1")] == ["a", "c"]
    assert [r.replica for r in node_local(replicas, "10.0.0.2")] == ["b"]
    assert node_local(replicas, "10.0.0.3") == []


def test_every_replica_is_on_exactly_one_nodes_page() -> None:
    """What makes a scrape of every serving pod count each replica's series once."""
    nodes = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    replicas = [Endpoint(f"r{i}", nodes[i % 2], 40000 + i) for i in range(7)]
    pages = [r.replica for node in nodes for r in node_local(replicas, node)]
    assert sorted(pages) == sorted(r.replica for r in replicas)


def test_loopback_replicas_are_local() -> None:
    """A replica bound to 127.0.0.1 (a local `make demo`) can only be on the Gateway's own node."""
    replicas = [Endpoint("a", "127.0.0.1", 40001), Endpoint("b", "localhost", 40002)]
    assert len(node_local(replicas, "192.168.1.5")) == 2
