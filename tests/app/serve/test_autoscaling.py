import pytest

from manymodels.serve.autoscaling import desired_replicas


def test_desired_replicas_follow_inflight_requests() -> None:
    assert desired_replicas(2, inflight=16, target_per_replica=4) == 4
    assert desired_replicas(2, inflight=0, target_per_replica=4) == 0
    assert desired_replicas(0, inflight=16, target_per_replica=4) == 0


def test_target_must_be_positive() -> None:
    with pytest.raises(ValueError):
        desired_replicas(1, inflight=1, target_per_replica=0)
