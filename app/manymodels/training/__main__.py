"""``python -m manymodels.training``: train a task with Ray Train, publish it, move canary (and stable).

    python -m manymodels.training --store URI --model NAME [--task IMPORT_PATH] [--num-workers N]
        [--use-gpu] [--cpus-per-worker F] [--min-score F] [--min-improvement F]
        [--options-json JSON] [--version V] [--storage-options JSON|@FILE]

Connects to the Ray cluster in ``RAY_ADDRESS`` (as in a RayJob) or starts a local one. Logs go to
stderr; the last line on stdout is one JSON object: model, version, score, stable_version,
stable_score, promoted, reason, train_loss. Exit status 0 whether or not the version was promoted;
2 for a mistake in the command line (a bad task import path or options, an invalid name, a version
that is already published), 1 for any other failure (store unreachable, training failed, the
stable version cannot be scored). Needs torch and ray[train]: the GPU image has both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from manymodels.cli_publish import UsageError as PublishUsageError
from manymodels.cli_publish import storage_options
from manymodels.errors import InvalidName
from manymodels.store.names import validate_name
from manymodels.training.settings import JobSettings, Scaling
from manymodels.training.task import DEFAULT_TASK, TaskError

PROG = "python -m manymodels.training"
log = logging.getLogger("manymodels.training")


class UsageError(Exception):
    """Something the caller can fix: one line on stderr, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a model with Ray Train, export it to ONNX, score it against the version "
        "behind 'stable', publish it as a new version, point 'canary' at it and 'stable' too when "
        "it passes.",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("MM_MODEL_ROOT"),
        help="the model store: a local path or an fsspec URI (s3://, gs://, az://); default $MM_MODEL_ROOT",
    )
    parser.add_argument("--model", required=True, help="the model name in the store")
    parser.add_argument(
        "--task",
        default=DEFAULT_TASK,
        help=f"a TrainingTask subclass, package.module:Class (default {DEFAULT_TASK})",
    )
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker (export stays on the CPU)")
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs each worker reserves (default 1; may be a fraction)",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="promote to stable only at this score or above (default: none)",
    )
    parser.add_argument(
        "--min-improvement",
        type=float,
        default=0.0,
        help="promote only when the score beats the stable version's by at least this much (default 0)",
    )
    parser.add_argument("--options-json", default="{}", help="options for the task, a JSON object")
    parser.add_argument(
        "--version", default=None, help="the new version's name (default: the UTC time, tYYYYMMDD-HHMMSS)"
    )
    parser.add_argument(
        "--storage-options",
        metavar="JSON|@FILE",
        help="fsspec options for the store, a JSON object or @file.json (the server's store.storage_options)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s [manymodels.training] %(message)s"
    )
    try:
        settings = _settings(args)
    except (UsageError, InvalidName) as exc:
        return _fail(str(exc), 2)
    try:
        # torch and Ray Train are imported here, not at module level, so that a missing package is
        # one clear line (the CPU image has no torch) rather than a traceback.
        from manymodels.training.job import VersionTaken, run_training_job
    except ImportError as exc:
        return _fail(
            f"{exc}: the training job needs torch and ray[train] (the GPU image has both; "
            "pip install 'manymodels[torch,train]')",
            1,
        )
    try:
        summary = run_training_job(settings, ray_session=_ray)
    except (TaskError, InvalidName, VersionTaken) as exc:
        return _fail(str(exc), 2)
    except Exception as exc:  # storage, Ray Train, evaluation: one line, exit 1
        # the whole message (Ray Train's names the failing worker and its traceback), then one line
        log.error("training job failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return _fail(f"{type(exc).__name__}: {exc}", 1)
    print(json.dumps(summary.as_dict(), allow_nan=False), flush=True)
    return 0


@contextlib.contextmanager
def _ray() -> Iterator[None]:
    """The Ray cluster in RAY_ADDRESS (a RayJob's), or a local one; only a Ray started here is shut down."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # a RayJob's submitter sets RAY_ADDRESS: join that cluster
    else:
        # a new local Ray for this run alone: address="local" never joins one already running here
        # (`make demo`'s, say), whose resources and lifetime are not ours
        ray.init(address="local", include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def _settings(args: argparse.Namespace) -> JobSettings:
    if not args.store:
        raise UsageError("--store is required (or set MM_MODEL_ROOT)")
    validate_name("model", args.model)
    if args.version is not None:
        validate_name("version", args.version)
    if args.num_workers < 1:
        raise UsageError(f"--num-workers must be >= 1, got {args.num_workers}")
    if not args.cpus_per_worker > 0:
        raise UsageError(f"--cpus-per-worker must be > 0, got {args.cpus_per_worker}")
    if not args.min_improvement >= 0:
        raise UsageError(f"--min-improvement must be >= 0, got {args.min_improvement}")
    try:
        options = json.loads(args.options_json)
    except ValueError as exc:
        raise UsageError(f"--options-json: invalid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise UsageError(f"--options-json: expected a JSON object, got {type(options).__name__}")
    try:
        fs_options = storage_options(args.storage_options)
    except PublishUsageError as exc:
        raise UsageError(str(exc)) from None
    return JobSettings(
        store=args.store,
        model=args.model,
        task=args.task,
        options=options,
        scaling=Scaling(args.num_workers, args.use_gpu, args.cpus_per_worker),
        min_score=args.min_score,
        min_improvement=args.min_improvement,
        version=args.version,
        storage_options=fs_options,
    )


def _fail(message: str, status: int) -> int:
    # One line: a multi-line message (a worker's traceback) keeps its first and last lines, e.g.
    # "WorkerGroupError: Training failed due to worker errors: ... RuntimeError: <the cause>".
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["failed"]
    line = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    print(f"{PROG}: error: {line}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
