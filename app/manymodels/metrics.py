"""Prometheus metrics for one replica: requests and latency per model, and the cache's own stats.

Cache counters are read from ``ModelCache.stats()`` at scrape time (a custom collector), so the hot
path pays nothing for them. Every series carries a ``replica`` label; the Gateway concatenates the
replicas' pages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from manymodels.cache import CacheStats
from manymodels.compact_metrics import CompactCounter, CompactHistogram
from manymodels.process_memory import HEAP_TRIMMER, HeapTrimmer, resident_bytes

if TYPE_CHECKING:  # the data plane imports this module
    from manymodels.dataplane.response_cache import ResponseCacheStats

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
PAGE_TRIM_BYTES = 1 << 20


class _CacheCollector(Collector):
    def __init__(
        self,
        replica: str,
        stats: Callable[[], CacheStats],
        resident: Callable[[], list[tuple[str, int]]],
    ) -> None:
        self._replica = replica
        self._stats = stats
        self._resident = resident

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        counters = {
            "hits": ("requests served from a resident model", s.hits),
            "misses": ("requests that had to wait for a load", s.misses),
            "evictions": ("models evicted to make room", s.evictions),
            "loads": ("model loads", s.loads),
            "load_failures": ("failed model loads", s.load_failures),
            "rejected": ("loaded models the admission policy did not keep", s.rejected),
            "load_seconds": ("seconds spent loading models", s.load_seconds_total),
        }
        for name, (doc, value) in counters.items():
            family = CounterMetricFamily(f"manymodels_cache_{name}", doc, labels=["replica"])
            family.add_metric([self._replica], value)
            yield family
        gauges = {
            "resident_bytes": ("bytes of resident models", s.resident_bytes),
            "capacity_bytes": ("cache budget in bytes", s.capacity_bytes),
            "entries": ("resident models", s.entries),
            "pinned": ("pinned models", s.pinned),
        }
        for name, (doc, value) in gauges.items():
            family = GaugeMetricFamily(f"manymodels_cache_{name}", doc, labels=["replica"])
            family.add_metric([self._replica], value)
            yield family
        per_model = GaugeMetricFamily(
            "manymodels_model_resident_bytes",
            "resident bytes per model version",
            labels=["replica", "model", "version"],
        )
        for key, size in self._resident():
            model, _, version = key.partition(":")
            per_model.add_metric([self._replica, model, version], size)
        yield per_model


class _ResponseCacheCollector(Collector):
    def __init__(self, replica: str, stats: Callable[[], ResponseCacheStats]) -> None:
        self._replica = replica
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        for name, doc, per_model in (
            ("hits", "requests answered from the response cache", s.hits),
            ("misses", "requests of models with the response cache on that ran the model", s.misses),
        ):
            family = CounterMetricFamily(
                f"manymodels_response_cache_{name}", doc, labels=["replica", "model"]
            )
            for model, value in sorted(per_model.items()):
                family.add_metric([self._replica, model], value)
            yield family
        counters = {
            "evictions": ("answers evicted to stay within the budget", s.evictions),
            "skipped": ("answers not kept: bigger than the per-entry limit", s.skipped),
        }
        for name, (doc, value) in counters.items():
            family = CounterMetricFamily(f"manymodels_response_cache_{name}", doc, labels=["replica"])
            family.add_metric([self._replica], value)
            yield family
        gauges = {
            "entries": ("cached answers", s.entries),
            "bytes": ("bytes of cached answers, keys and bookkeeping", s.bytes),
            "capacity_bytes": ("response cache budget in bytes", s.capacity_bytes),
        }
        for name, (doc, value) in gauges.items():
            family = GaugeMetricFamily(f"manymodels_response_cache_{name}", doc, labels=["replica"])
            family.add_metric([self._replica], value)
            yield family


class _AdmissionCollector(Collector):
    """Inference requests running and waiting for a slot, read at scrape time."""

    def __init__(self, replica: str, inflight: Callable[[], int], queued: Callable[[], int]) -> None:
        self._replica = replica
        self._gauges = {
            "inflight": ("inference requests running on the replica", inflight),
            "queued": ("inference requests waiting for a slot on the replica", queued),
        }

    def collect(self) -> Iterator[Metric]:
        for name, (doc, read) in self._gauges.items():
            family = GaugeMetricFamily(f"manymodels_requests_{name}", doc, labels=["replica"])
            family.add_metric([self._replica], read())
            yield family


class _ProcessCollector(Collector):
    """The replica process's RSS, beside the cache's resident bytes: what the budget must bound.
    Read at scrape time (one /proc read), as are the heap trims that keep it near the budget."""

    def __init__(self, replica: str, trimmer: HeapTrimmer) -> None:
        self._replica = replica
        self._trimmer = trimmer

    def collect(self) -> Iterator[Metric]:
        rss = resident_bytes()
        if rss is not None:
            family = GaugeMetricFamily(
                "manymodels_process_resident_bytes",
                "resident set size of the replica's process (compare manymodels_cache_resident_bytes)",
                labels=["replica"],
            )
            family.add_metric([self._replica], rss)
            yield family
        counters = {
            "heap_trims": ("times freed heap memory was returned to the OS", self._trimmer.trims),
            "heap_trim_seconds": ("seconds spent returning freed heap memory", self._trimmer.seconds),
        }
        for name, (doc, value) in counters.items():
            counter = CounterMetricFamily(f"manymodels_process_{name}", doc, labels=["replica"])
            counter.add_metric([self._replica], value)
            yield counter


class Metrics:
    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.registry = CollectorRegistry(auto_describe=False)
        # Per-model series grow with the catalog (10,000 models are 10,000 label sets): compact ones.
        self.requests = CompactCounter(
            "manymodels_requests",
            "requests by model and HTTP status",
            ["replica", "model", "code"],
        )
        self.latency = CompactHistogram(
            "manymodels_request_seconds",
            "request latency by model",
            ["replica", "model"],
            buckets=LATENCY_BUCKETS,
        )
        self.loads = CompactHistogram(
            "manymodels_model_load_seconds",
            "time to fetch, verify, load and warm a model",
            ["replica", "model"],
            buckets=LOAD_BUCKETS,
        )
        self._compact = (self.requests, self.latency, self.loads)
        self.registry.register(_ProcessCollector(replica, HEAP_TRIMMER))
        self.rollout_failures = Counter(
            "manymodels_rollout_failures",
            "alias moves refused because the new version failed to load",
            ["replica", "model"],
            registry=self.registry,
        )
        # Only models with batching on get these series (no version label: bounded like the others).
        self.batch_size = Histogram(
            "manymodels_batch_size",
            "rows per model call, for models with dynamic batching",
            ["replica", "model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_queue = Histogram(
            "manymodels_batch_queue_seconds",
            "time a request waited in its model's batch queue",
            ["replica", "model"],
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )

        self.rejected = Counter(
            "manymodels_requests_rejected",
            "inference requests refused with 503 before running (queue_full: every slot taken, line full)",
            ["replica", "reason"],
            registry=self.registry,
        )
        self.config_rejected = Counter(
            "manymodels_config_rejected",
            "user_config updates refused (e.g. a processor that does not import); the old one serves",
            ["replica"],
            registry=self.registry,
        )

    def watch_cache(
        self, stats: Callable[[], CacheStats], resident: Callable[[], list[tuple[str, int]]]
    ) -> None:
        self.registry.register(_CacheCollector(self.replica, stats, resident))

    def watch_responses(self, stats: Callable[[], ResponseCacheStats]) -> None:
        """Read at scrape time, like the model cache's: the request path only bumps plain ints."""
        self.registry.register(_ResponseCacheCollector(self.replica, stats))

    def watch_admission(self, inflight: Callable[[], int], queued: Callable[[], int]) -> None:
        self.registry.register(_AdmissionCollector(self.replica, inflight, queued))

    def observe(self, model: str, code: int, seconds: float) -> None:
        self.requests.inc_labelled((self.replica, model, str(code)))
        self.latency.observe_labelled((self.replica, model), seconds)

    def render(self) -> bytes:
        page = bytearray(generate_latest(self.registry))
        for family in self._compact:
            family.render_into(page)
        if len(page) > PAGE_TRIM_BYTES:
            # A big page's buffers stay in malloc's heaps once freed, as a closed model's would.
            HEAP_TRIMMER.request()
        return bytes(page)
