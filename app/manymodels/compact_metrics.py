"""Labelled counters and histograms for the per-model series, stored and rendered cheaply.

Their label sets grow with the catalog, and prometheus_client's representation does not scale to
10,000 models: a child object per label set with an object and a lock per histogram bucket (~9.8 KB
per model for the three per-model families, 93 MiB for 10,000), and a scrape that builds a Sample
namedtuple and a label dict per line (+43 MiB of transient RSS for 5,000 models). Here one label set
costs a dict entry and one ``array('d')`` (~1 KB per model in all), and the families write the text
exposition format straight into a buffer. The page is the same as prometheus_client's (names, label
values, ``le`` bounds) minus the ``_created`` series, which nothing reads.

Updates take one uncontended lock per family (loads are observed from the loader's threads).
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections.abc import Sequence

from prometheus_client.utils import floatToGoString


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class _Family:
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        # Labels are written sorted by name, as prometheus_client does.
        self._order = sorted(range(len(self.labelnames)), key=lambda i: self.labelnames[i])
        self._lock = threading.Lock()

    def _key(self, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        return tuple(map(str, values))

    def _labels(self, key: tuple[str, ...]) -> str:
        return ",".join(f'{self.labelnames[i]}="{_escape(key[i])}"' for i in self._order)

    @staticmethod
    def _braces(labels: str, extra: str = "") -> str:
        inner = f"{labels},{extra}" if labels and extra else labels or extra
        return f"{{{inner}}}" if inner else ""

    def _header(self, exposed: str) -> str:
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {exposed} {doc}\n# TYPE {exposed} {self.kind}\n"


class _CounterChild:
    __slots__ = ("_family", "_key")

    def __init__(self, family: CompactCounter, key: tuple[str, ...]) -> None:
        self._family, self._key = family, key

    def inc(self, amount: float = 1.0) -> None:
        self._family._inc(self._key, amount)


class CompactCounter(_Family):
    """A counter with labels: ``labels(*values).inc()`` as in prometheus_client; exposed as
    ``<name>_total``."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def labels(self, *values: str) -> _CounterChild:
        return _CounterChild(self, self._key(values))

    def inc_labelled(self, values: tuple[str, ...], amount: float = 1.0) -> None:
        """``labels(*values).inc(amount)`` without the child object: the per-request path."""
        self._inc(self._key(values), amount)

    def _inc(self, key: tuple[str, ...], amount: float) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up, got {amount}")
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *values: str) -> float:
        with self._lock:
            return self._values.get(self._key(values), 0.0)

    def render_into(self, out: bytearray) -> None:
        total = f"{self.name}_total"
        out += self._header(total).encode()
        with self._lock:
            items = list(self._values.items())
        for key, value in items:
            out += f"{total}{self._braces(self._labels(key))} {floatToGoString(value)}\n".encode()


class _HistogramChild:
    __slots__ = ("_family", "_key")

    def __init__(self, family: CompactHistogram, key: tuple[str, ...]) -> None:
        self._family, self._key = family, key

    def observe(self, amount: float) -> None:
        self._family._observe(self._key, amount)


class CompactHistogram(_Family):
    """A histogram with labels: ``labels(*values).observe(x)`` as in prometheus_client."""

    kind = "histogram"

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = sorted(float(b) for b in buckets if b != float("inf"))
        if not bounds:
            raise ValueError(f"{name}: needs at least one finite bucket")
        self._bounds = bounds
        self._les = [floatToGoString(b) for b in bounds] + ["+Inf"]
        self._le_pairs = [f'le="{le}"' for le in self._les]
        # Per label set: a count for each bucket (not cumulative; the last one is +Inf), then the sum.
        self._values: dict[tuple[str, ...], array[float]] = {}

    def labels(self, *values: str) -> _HistogramChild:
        return _HistogramChild(self, self._key(values))

    def observe_labelled(self, values: tuple[str, ...], amount: float) -> None:
        """``labels(*values).observe(amount)`` without the child object: the per-request path."""
        self._observe(self._key(values), amount)

    def _observe(self, key: tuple[str, ...], amount: float) -> None:
        slot = bisect.bisect_left(self._bounds, amount)  # le: the first bound >= amount
        with self._lock:
            counts = self._values.get(key)
            if counts is None:
                counts = self._values[key] = array("d", bytes(8 * (len(self._les) + 1)))
            counts[slot] += 1
            counts[-1] += amount

    def snapshot(self, *values: str) -> tuple[list[float], float]:
        """(cumulative count per ``le`` bound, +Inf last; sum): what a scrape shows."""
        with self._lock:
            counts = self._values.get(self._key(values))
            raw = counts.tolist() if counts is not None else [0.0] * (len(self._les) + 1)
        cumulative, running = [], 0.0
        for count in raw[:-1]:
            running += count
            cumulative.append(running)
        return cumulative, raw[-1]

    def render_into(self, out: bytearray) -> None:
        out += self._header(self.name).encode()
        with self._lock:
            items = [(key, counts.tolist()) for key, counts in self._values.items()]
        bucket, name = f"{self.name}_bucket", self.name
        for key, counts in items:
            labels = self._labels(key)
            lines, running = [], 0.0
            for le, count in zip(self._le_pairs, counts, strict=False):  # counts ends with the sum
                running += count
                lines.append(f"{bucket}{self._braces(labels, le)} {floatToGoString(running)}\n")
            plain = self._braces(labels)
            lines.append(f"{name}_count{plain} {floatToGoString(running)}\n")
            lines.append(f"{name}_sum{plain} {floatToGoString(counts[-1])}\n")
            out += "".join(lines).encode()
