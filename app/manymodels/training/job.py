"""One training run, end to end: train, export, score against ``stable``, publish, move the aliases.

Order matters for failing early and for readers of the store:

1. the task is imported and built, the store is read (aliases; the stable version's artifact is
   fetched sha-verified and scored), and the new version name is checked to be free, all before
   any training, so a bad import path, an unreachable store or an unscorable stable version costs
   nothing;
2. Ray Train trains; the result is exported to ONNX and scored on the same held-out data;
3. the version is published (manifest last, so servers see it complete or not at all), then
   ``aliases.json`` is rewritten once: ``canary`` -> the new version, ``stable`` -> the new version
   only when :func:`manymodels.training.promotion.decide` says so. Other aliases are kept.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec

from manymodels.errors import ModelNotFound, VersionNotFound
from manymodels.store import ModelStore, open_store, publish_version, set_store_aliases, validate_name
from manymodels.training.evaluation import EvaluationError, is_finite, score_artifact
from manymodels.training.export import export_onnx
from manymodels.training.promotion import Decision, decide
from manymodels.training.ray_trainer import train_with_ray
from manymodels.training.settings import JobSettings
from manymodels.training.task import TrainingTask, load_task

log = logging.getLogger("manymodels.training")

CANARY = "canary"
STABLE = "stable"
ARTIFACT = "model.onnx"
WRITE_PROBE = ".manymodels-write-probe"  # at the store root (see _check_writable)


class VersionTaken(ValueError):
    """The requested version is already published (published versions are immutable)."""


class AliasesNotSet(RuntimeError):
    """The new version is published but the aliases write failed: said in so many words."""


@dataclass(frozen=True)
class JobSummary:
    model: str
    version: str
    score: float | None  # None when the score is not a finite number
    stable_version: str | None  # the version behind stable before this run
    stable_score: float | None
    promoted: bool
    reason: str
    train_loss: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_version(now: datetime | None = None) -> str:
    """``t20261130-013000``: sorts by time, and after plain numeric versions (the store's natural order)."""
    return (now or datetime.now(UTC)).strftime("t%Y%m%d-%H%M%S")


def run_training_job(
    settings: JobSettings, ray_session: Callable[[], AbstractContextManager[Any]] = nullcontext
) -> JobSummary:
    """Train, score, publish and move the aliases. Training runs inside ``ray_session()`` (entered
    after the checks that need no Ray); by default the caller has initialised Ray already."""
    model = validate_name("model", settings.model)
    version = validate_name("version", settings.version or default_version())
    if settings.min_improvement < 0:
        raise ValueError(f"--min-improvement must be >= 0, got {settings.min_improvement}")
    task = load_task(settings.task, settings.options)
    log.info("task %s: %s", settings.task, task.description())
    with tempfile.TemporaryDirectory(prefix="manymodels-train-job-") as tmp:
        store = _open(settings, Path(tmp))
        _check_free(store, model, version)
        aliases = store.store_aliases(model)
        stable_version = aliases.get(STABLE)
        data = task.evaluation_data()
        stable_score = None
        if stable_version is not None:
            stable_score = _score_stable(store, task, model, stable_version, data)
            log.info("stable is version %s, score %s", stable_version, stable_score)
        else:
            log.info("model %s has no stable version in %s yet", model, settings.store)
        _check_writable(settings)  # last of the checks: the only one that writes

        scaling = settings.scaling
        log.info(
            "training with Ray Train TorchTrainer: %d worker(s), %s, %d epoch(s)",
            scaling.num_workers,
            "GPU" if scaling.use_gpu else f"{scaling.cpus_per_worker:g} CPU each",
            task.epochs,
        )
        with ray_session():
            outcome = train_with_ray(
                settings.task,
                settings.options,
                scaling,
                run_name=f"{model}-{version}",
            )
        artifact = Path(tmp) / ARTIFACT
        inputs, outputs = export_onnx(
            outcome.model,
            task.example_input(),
            artifact,
            input_name=task.input_name,
            output_name=task.output_name,
        )
        score = score_artifact(task, artifact, data)
        decision = decide(
            score, stable_score, min_score=settings.min_score, min_improvement=settings.min_improvement
        )
        log.info("new version %s: score %s, final training loss %s", version, score, outcome.final_loss)

        manifest = publish_version(
            settings.store,
            model,
            version,
            runtime="onnx",
            artifact=artifact,
            inputs=inputs,
            outputs=outputs,
            description=f"{task.description()}; score {score:.6g}",
            storage_options=settings.storage_options,
        )
        log.info("published %s version %s (sha256 %s)", model, version, manifest.sha256)
        try:
            store.refresh()  # aliases another writer may have set meanwhile are kept
            current = store.store_aliases(model)
            if decision.promote and current.get(STABLE) != stable_version:
                # another run (or a person) moved stable since this one scored against it: promoting
                # now could replace a better version with one never compared to it
                decision = Decision(
                    False,
                    f"stable moved from {stable_version!r} to {current.get(STABLE)!r} during this run; "
                    "run again to compare against it",
                )
            new_aliases = {**current, CANARY: version}
            if decision.promote:
                new_aliases[STABLE] = version
            set_store_aliases(settings.store, model, new_aliases, storage_options=settings.storage_options)
        except Exception as exc:
            raise AliasesNotSet(
                f"published {model} version {version}, but its aliases were not set ({type(exc).__name__}: "
                f"{exc}); set them with: python -m manymodels alias {settings.store} {model} canary {version}"
            ) from exc
        log.info("canary -> %s", version)
        if decision.promote:
            log.info("stable -> %s (promoted: %s)", version, decision.reason)
        else:
            log.info("stable stays at %s (not promoted: %s)", stable_version, decision.reason)
    return JobSummary(
        model=model,
        version=version,
        score=score if is_finite(score) else None,
        stable_version=stable_version,
        stable_score=stable_score if is_finite(stable_score) else None,
        promoted=decision.promote,
        reason=decision.reason,
        train_loss=outcome.final_loss if is_finite(outcome.final_loss) else None,
    )


def _open(settings: JobSettings, tmp: Path) -> ModelStore:
    # The store as the server reads it; a remote store's disk tier is a throwaway folder.
    uri = settings.store
    cache_dir = None if uri.startswith("file://") else tmp / "tier"
    return open_store(uri, cache_dir=cache_dir, storage_options=settings.storage_options)


def _check_writable(settings: JobSettings) -> None:
    """Write an empty probe object at the store root before training: an identity that may only read
    (the serving one often is) fails here, not after an hour of training at publish time. One fixed
    name, overwritten by every run and never deleted: publishing needs no delete right, and servers
    list folders only, so they never see it."""
    fs, base = fsspec.core.url_to_fs(settings.store, **settings.storage_options)
    try:
        fs.pipe_file(f"{base.rstrip('/')}/{WRITE_PROBE}", b"")
    except Exception as exc:
        raise PermissionError(
            f"cannot write to the store {settings.store} ({type(exc).__name__}: {exc}): the training "
            "job publishes there, so its identity needs write access (docs/chart.md, Training job)"
        ) from exc


def _check_free(store: ModelStore, model: str, version: str) -> None:
    try:
        store.manifest(model, version)
    except (ModelNotFound, VersionNotFound):  # VersionNotFound is a ModelNotFound; both mean free
        return
    raise VersionTaken(
        f"model {model!r} version {version!r} is already published in {store.uri} "
        "(published versions are immutable; pass another --version)"
    )


def _score_stable(
    store: ModelStore, task: TrainingTask, model: str, version: str, data: tuple[Any, Any]
) -> float:
    where = f"the stable version {version!r} of model {model!r}"
    try:
        manifest = store.manifest(model, version)
    except VersionNotFound as exc:
        raise EvaluationError(f"{where} is not published: {exc}") from None
    if manifest.runtime != "onnx":
        raise EvaluationError(
            f"{where} is a {manifest.runtime}/{manifest.format} artifact; the job compares ONNX "
            "artifacts only (point stable at an ONNX version, or remove the alias)"
        )
    path = store.fetch(model, version)  # sha256-verified against its manifest
    try:
        return score_artifact(task, path, data)
    except EvaluationError as exc:
        raise EvaluationError(f"cannot score {where} with the task's held-out data: {exc}") from None
