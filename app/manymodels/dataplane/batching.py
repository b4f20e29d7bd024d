"""Per-model dynamic batching: concurrent requests for one resident model version, one model call.

Every ``ServedModel`` whose options turn ``batching`` on gets its own queue, so versions never mix,
and a retired version still finishes what it queued (each queued request holds it until answered).
A new ``user_config`` changes the batching of resident versions in place (``batching_changes``).
Requests are grouped by signature (input dtypes and every dimension but the first), stacked along
axis 0, run once and split back by each request's row count.

When a batch starts (Triton-style, but without taxing light traffic):

* a request to an idle model starts at the end of the current event-loop turn, with whatever else
  arrived in that turn: it never waits for ``max_queue_delay_ms`` (alone, it runs in its own
  coroutine exactly as without batching);
* while a batch of the model runs, up to ``MAX_BATCHES_IN_FLIGHT`` run at once: the next one starts
  when it reaches ``max_batch_size`` rows or a preferred size, or when its oldest request has waited
  ``max_queue_delay_ms``;
* what queued while every slot was busy starts as soon as a slot frees.

So ``max_queue_delay_ms`` chooses, under load only, between parallelism and batch size: 0 starts a
second batch at once, a delay longer than a batch takes makes one big batch follow another. With
few cores (the HTTP loop, the Gateway and the model share them) the second batch gains nothing and
a longer delay is faster (docs/benchmarks.md); on a GPU or many cores, a short one.

A batch that fails is re-run one request at a time, so only the request that caused the failure
gets the error (inputs passed ``check_inputs``: failures are the model's, mapped by ``inference``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from manymodels.config import BatchingOptions, ServerConfig
from manymodels.dataplane.served import ServedModel
from manymodels.errors import ConfigurationError, InferenceError
from manymodels.metrics import Metrics
from manymodels.store.manifest import ModelManifest

log = logging.getLogger("manymodels")

# Batches of one model version running at once. Two: one batch forms (for up to max_queue_delay_ms)
# while the other runs, which can keep a GPU fed or two cores busy; more would only split the same
# traffic into smaller batches.
MAX_BATCHES_IN_FLIGHT = 2

# A model whose last requests all ran alone stops waiting for the end of the loop turn (for a model
# that runs inline, a turn is ~5-10 % of a request at one client) and looks for company every this many.
LONELY_PROBE = 8

Tensors = dict[str, np.ndarray]
# Runs one model call (inline or in a thread) and maps its failures: Inference._execute.
Execute = Callable[[ServedModel, Tensors, float], Awaitable[Tensors]]


def check_batchable(manifest: ModelManifest) -> None:
    """Batching needs a dynamic first dimension on every input and output (ConfigurationError)."""
    fixed = [s.name for s in (*manifest.inputs, *manifest.outputs) if not s.shape or s.shape[0] != -1]
    if fixed:
        raise ConfigurationError(
            f"model {manifest.name} version {manifest.version}: batching needs a dynamic first "
            f"dimension (-1) on every input and output, and {fixed} have none; remove "
            f"models.{manifest.name}.batching or publish a model with a batch dimension"
        )


def batching_changes(
    config: ServerConfig, resident: list[ServedModel]
) -> list[tuple[ServedModel, BatchingOptions | None]]:
    """The resident versions whose batching ``config`` changes, and to what; each new setting checked
    against the version's manifest (ConfigurationError), so a bad one refuses the whole config."""
    changes = []
    for served in resident:
        options = config.models.get(served.manifest.name)
        wanted = options.batching if options else None
        if wanted != served.options.batching:
            if wanted is not None:
                check_batchable(served.manifest)
            changes.append((served, wanted))
    return changes


@dataclass(eq=False, slots=True)
class _Request:
    served: ServedModel
    inputs: Tensors
    rows: int
    key: object  # requests with equal keys can be stacked
    inline_max_ms: float
    future: asyncio.Future[Tensors]
    queued_at: float


class _ModelQueue:
    """The queue of one resident model version."""

    def __init__(self, options: BatchingOptions, execute: Execute, metrics: Metrics | None, model: str):
        self.options = options
        self._execute = execute
        self._delay_s = options.max_queue_delay_ms / 1000
        self._preferred = frozenset(options.preferred_batch_sizes)
        self._pending: list[_Request] = []
        self.in_flight = 0
        self._soon = False  # a dispatch is scheduled for the end of this loop turn
        self._timer: asyncio.TimerHandle | None = None
        self._expired = float("-inf")  # requests queued before this have waited their delay
        self._tasks: set[asyncio.Task[None]] = set()  # the loop holds tasks only weakly
        self._unbatchable = False
        self._lonely = 0  # requests in a row that found the model idle and ran alone
        self._sizes = metrics.batch_size.labels(metrics.replica, model) if metrics else None
        self._waits = metrics.batch_queue.labels(metrics.replica, model) if metrics else None

    @property
    def queued(self) -> int:
        """Requests waiting (cancelled ones may count until the next dispatch)."""
        return len(self._pending)

    @property
    def queued_rows(self) -> int:
        return sum(r.rows for r in self._pending)

    async def submit(self, served: ServedModel, inputs: Tensors, inline_max_ms: float) -> Tensors:
        if self._unbatchable:
            return await self._execute(served, inputs, inline_max_ms)
        if self.in_flight == 0 and not self._pending:
            return await self._lead(served, inputs, inline_max_ms)
        request = self._request(served, inputs, inline_max_ms)
        self._pending.append(request)
        if not self._soon:
            self._soon = True
            request.future.get_loop().call_soon(self._turn_ended)
        return await request.future  # a cancelled caller cancels the future: never run, or dropped

    @staticmethod
    def _request(served: ServedModel, inputs: Tensors, inline_max_ms: float) -> _Request:
        loop = asyncio.get_running_loop()
        rows = {a.shape[0] for a in inputs.values()}
        key: object = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items()))
        if len(rows) > 1:  # inputs that disagree on their row count cannot be split back: alone
            key = object()
        return _Request(served, inputs, max(rows), key, inline_max_ms, loop.create_future(), loop.time())

    async def _lead(self, served: ServedModel, inputs: Tensors, inline_max_ms: float) -> Tensors:
        """An idle model: wait for the end of this loop turn, then run alone if nothing else came (in
        this coroutine, as without batching: no task, no future; light traffic pays nothing), or
        start a batch with what did, like any other."""
        self.in_flight += 1
        self._lonely += 1
        if self._lonely <= LONELY_PROBE or self._lonely % LONELY_PROBE == 0:
            try:
                await asyncio.sleep(0)  # requests arriving in this turn queue behind this one
            except asyncio.CancelledError:
                self.in_flight -= 1
                self._dispatch()
                raise
        if not self._pending:
            try:
                self._observe_alone(next(iter(inputs.values())).shape[0])
                return await self._execute(served, inputs, inline_max_ms)
            finally:
                self.in_flight -= 1
                if self._pending:  # queued while this ran in a thread
                    self._dispatch()
        self._lonely = 0
        self.in_flight -= 1  # the batch takes the slot back
        request = self._request(served, inputs, inline_max_ms)
        batch = self._take(force=True, lead=request)
        assert batch is not None
        self._launch(batch, request.queued_at, request.future.get_loop())
        self._dispatch()  # a request that did not fit, or did not stack with this one
        return await request.future

    def _turn_ended(self) -> None:
        self._soon = False
        self._dispatch()

    def _timer_fired(self, deadline: float) -> None:
        self._timer = None
        self._expired = max(self._expired, deadline)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start every batch the rules above allow; arm the timer for the oldest one left."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = [r for r in self._pending if not r.future.done()]
        loop = asyncio.get_running_loop()
        while self._pending and self.in_flight < MAX_BATCHES_IN_FLIGHT:
            deadline = self._pending[0].queued_at + self._delay_s
            now = loop.time()
            batch = self._take(force=self.in_flight == 0 or deadline <= max(now, self._expired))
            if batch is None:
                self._timer = loop.call_at(deadline, self._timer_fired, deadline)
                return
            self._launch(batch, now, loop)

    def _take(self, *, force: bool, lead: _Request | None = None) -> list[_Request] | None:
        """The oldest request (or ``lead``) and, in order, the queued ones that stack with it and fit,
        if they should start now.

        A request that does not fit (or does not stack) stays queued and heads a later batch; one
        larger than ``max_batch_size`` runs alone."""
        head, limit = lead or self._pending[0], self.options.max_batch_size
        batch: list[_Request] = []
        total, cut, full = 0, 0, head.rows >= limit
        for request in [lead, *self._pending] if lead else self._pending:
            if request.key != head.key or (batch and total + request.rows > limit):
                continue
            batch.append(request)
            total += request.rows
            if total in self._preferred:
                cut = len(batch)
            if total >= limit:
                full = True
                break
        if cut:
            batch = batch[:cut]
        elif not (full or force):
            return None
        taken = {id(r) for r in batch}
        self._pending = [r for r in self._pending if id(r) not in taken]
        return batch

    def _launch(self, batch: list[_Request], now: float, loop: asyncio.AbstractEventLoop) -> None:
        self.in_flight += 1
        self._observe(batch, now)
        task = loop.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _observe_alone(self, rows: int) -> None:
        if self._sizes is not None and self._waits is not None:
            self._sizes.observe(rows)
            self._waits.observe(0.0)

    def _observe(self, batch: list[_Request], now: float) -> None:
        if self._sizes is not None and self._waits is not None:
            self._sizes.observe(sum(r.rows for r in batch))
            for request in batch:
                self._waits.observe(now - request.queued_at)

    async def _run(self, batch: list[_Request]) -> None:
        """Run ``batch`` (it holds one of the ``in_flight`` slots) and answer each of its requests."""
        try:
            if len(batch) == 1:
                await self._run_alone(batch[0])
                return
            head = batch[0]
            try:
                stacked = {n: np.concatenate([r.inputs[n] for r in batch]) for n in head.inputs}
                outputs = await self._execute(head.served, stacked, head.inline_max_ms)
                parts = self._split(head.served, outputs, [r.rows for r in batch])
            except Exception as exc:
                m = head.served.manifest
                log.warning(
                    "model %s version %s: a batch of %d requests failed (%s); re-running them one by one",
                    m.name,
                    m.version,
                    len(batch),
                    exc,
                )
                for request in batch:
                    await self._run_alone(request)
                return
            for request, part in zip(batch, parts, strict=True):
                if not request.future.done():
                    request.future.set_result(part)
        except asyncio.CancelledError:  # the replica is shutting down: so are the waiting requests
            for request in batch:
                request.future.cancel()
            raise
        finally:
            self.in_flight -= 1
            self._dispatch()

    async def _run_alone(self, request: _Request) -> None:
        if request.future.done():  # its client went away while it was queued
            return
        try:
            result = await self._execute(request.served, request.inputs, request.inline_max_ms)
        except Exception as exc:
            if not request.future.done():
                request.future.set_exception(exc)
        else:
            if not request.future.done():
                request.future.set_result(result)

    def _split(self, served: ServedModel, outputs: Tensors, rows: list[int]) -> list[Tensors]:
        total = sum(rows)
        bad = [n for n, a in outputs.items() if a.ndim == 0 or a.shape[0] != total]
        if bad:
            # The model does not answer row for row: batching can never work for it, so stop trying
            # (its requests are answered one by one from now on) and say so once.
            self._unbatchable = True
            m = served.manifest
            log.error(
                "model %s version %s: outputs %s are not batched along the first dimension; "
                "batching is off for this version",
                m.name,
                m.version,
                bad,
            )
            raise InferenceError(f"outputs {bad} of a batch of {total} rows do not have {total} rows")
        bounds = list(itertools.accumulate(rows))[:-1]
        parts: list[Tensors] = [{} for _ in rows]
        for name, array in outputs.items():
            for part, piece in zip(parts, np.split(array, bounds), strict=True):
                part[name] = piece
        return parts


class Batcher:
    """The queues of every resident model version with batching on; a queue goes with its version."""

    def __init__(self, execute: Execute, metrics: Metrics | None = None) -> None:
        self._execute = execute
        self._metrics = metrics
        self._queues: weakref.WeakKeyDictionary[ServedModel, _ModelQueue] = weakref.WeakKeyDictionary()

    async def run(self, served: ServedModel, inputs: Tensors, inline_max_ms: float) -> Tensors:
        options = served.options.batching
        assert options is not None, "only models with batching options are queued"
        queue = self._queues.get(served)
        if queue is None or queue.options is not options:  # a new setting: the old queue drains alone
            queue = self._queues[served] = _ModelQueue(
                options, self._execute, self._metrics, served.manifest.name
            )
        return await queue.submit(served, inputs, inline_max_ms)

    def queue_of(self, served: ServedModel) -> _ModelQueue | None:
        """The version's queue, if it has one."""
        return self._queues.get(served)
