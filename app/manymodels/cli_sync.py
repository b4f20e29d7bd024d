"""``python -m manymodels sync SOURCE DEST``: copy a catalog, version by version, into another store.

    python -m manymodels sync SOURCE DEST [--model NAME ...] [--overwrite]
        [--storage-options JSON|@FILE] [--dest-storage-options JSON|@FILE]

The chart's catalog loader (templates/catalog-loader.yaml) runs it to fill a PVC from a bucket.
Every version of SOURCE that DEST lacks is fetched through the store API (sha256-checked against its
manifest; from object storage into a throwaway disk tier, one artifact at a time) and written with
``publish_version``: DEST gets exactly the layout the server reads, artifact first and manifest last,
and nothing of a version whose source is corrupt. A version DEST already holds with the same manifest
is left alone, so a second run copies nothing; one whose manifest differs is a failure unless
``--overwrite`` (published versions are immutable). Then each model's ``aliases.json`` in DEST is
made equal to SOURCE's, once every version it names is in DEST. Nothing in DEST is ever deleted.

One line per copied version, alias change and failure (on stderr), then a summary. Exit status: 0,
1 if any model or version failed (or a storage error stopped the run), 2 for a mistake the caller
can fix (bad JSON, an invalid --model name, a SOURCE with no models), as with publish and alias.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manymodels.cli_publish import UsageError, _opened, run_guarded, storage_options
from manymodels.errors import ArtifactIntegrityError, ManyModelsError, ModelNotFound
from manymodels.store import (
    ModelManifest,
    ModelStore,
    RemoteStore,
    publish_version,
    set_store_aliases,
    validate_name,
)
from manymodels.store.base import label

COMMANDS = ("sync",)
# what publish_version takes from the source manifest; the rest it computes (artifact, sha256, size)
COPIED_FIELDS = ("runtime", "format", "inputs", "outputs", "description")


@dataclass
class Summary:
    copied: int = 0
    present: int = 0
    failed: int = 0
    aliases: int = 0

    def line(self, source: str, dest: str) -> str:
        return (
            f"sync {source} -> {dest}: {self.copied} copied, {self.present} already present, "
            f"{self.failed} failed; aliases of {self.aliases} model(s) updated"
        )


class Conflict(Exception):
    """DEST holds a version that differs from SOURCE's, and --overwrite was not given."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``sync`` on the ``python -m manymodels`` parser."""
    sync = sub.add_parser(
        "sync",
        help="copy every model version and alias of one store into another",
        description="Copy each version of SOURCE that DEST lacks (sha256-checked, manifest last), then "
        "make DEST's aliases equal to SOURCE's. Idempotent: a second run copies nothing.",
    )
    sync.add_argument("source", metavar="SOURCE", help="local path or fsspec URI (s3://, gs://, az://)")
    sync.add_argument("dest", metavar="DEST", help="local path (e.g. a PVC's mount) or fsspec URI")
    sync.add_argument(
        "--model",
        dest="models",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME",
        help="copy only these models (repeatable; default: every model in SOURCE)",
    )
    sync.add_argument(
        "--overwrite",
        action="store_true",
        help="replace versions whose copy in DEST differs from SOURCE (default: report them as failed)",
    )
    sync.add_argument(
        "--storage-options", metavar="JSON|@FILE", help="fsspec options for SOURCE, as JSON or @file.json"
    )
    sync.add_argument(
        "--dest-storage-options", metavar="JSON|@FILE", help="fsspec options for DEST, as JSON or @file.json"
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``sync`` command; returns the exit status."""

    def action() -> int:
        summary = sync(
            args.source,
            args.dest,
            models=args.models,
            overwrite=args.overwrite,
            source_options=storage_options(args.storage_options),
            dest_options=storage_options(args.dest_storage_options, "--dest-storage-options"),
        )
        print(summary.line(args.source, args.dest), flush=True)
        return 1 if summary.failed else 0

    return run_guarded("sync", [args.source, args.dest], action)


def sync(
    source: str,
    dest: str,
    *,
    models: Sequence[str] = (),
    overwrite: bool = False,
    source_options: dict[str, Any] | None = None,
    dest_options: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Summary:
    """Copy ``models`` (default: all) of ``source`` into ``dest``; per-version failures are reported
    through ``warn`` and counted, not raised."""
    for name in models:
        validate_name("model", name)
    if "://" not in dest:
        Path(dest).mkdir(parents=True, exist_ok=True)  # a fresh local catalog; a PVC mount exists
    summary = Summary()
    with _opened(source, source_options or {}) as src, _opened(dest, dest_options or {}) as dst:
        names = list(models) or src.list_models()
        if not names:
            raise UsageError(f"{source} holds no models (check the URI and that this identity may list it)")
        for model in names:
            _sync_model(src, dst, dest, model, overwrite, dest_options, summary, say, warn)
    return summary


def _sync_model(
    src: ModelStore,
    dst: ModelStore,
    dest: str,
    model: str,
    overwrite: bool,
    options: dict[str, Any] | None,
    summary: Summary,
    say: Callable[[str], None],
    warn: Callable[[str], None],
) -> None:
    def failed(what: str, exc: BaseException) -> None:
        summary.failed += 1
        message = str(exc) if isinstance(exc, ManyModelsError | Conflict) else f"{type(exc).__name__}: {exc}"
        # store errors already start with "model 'm' version 'v'"
        warn(f"failed: {message if message.startswith(what) else f'{what}: {message}'}")

    try:
        versions = src.list_versions(model)
    except (ManyModelsError, OSError) as exc:
        return failed(f"model {model!r}", exc)
    in_dest: set[str] = set()
    for version in versions:
        try:
            manifest = _copy_version(src, dst, dest, model, version, overwrite, options)
        except (Conflict, ManyModelsError, OSError, ValueError) as exc:
            failed(label(model, version), exc)
            continue
        in_dest.add(version)
        if manifest is None:
            summary.present += 1
        else:
            summary.copied += 1
            say(f"copied {model} version {version} (sha256 {manifest.sha256}, {manifest.size_bytes} bytes)")
    try:
        wanted = src.store_aliases(model)
        try:
            current: dict[str, str] | None = dst.store_aliases(model)
        except ArtifactIntegrityError:
            current = None  # broken in DEST: SOURCE's replaces it
        if wanted == current:
            return None
        missing = {a: v for a, v in wanted.items() if v not in in_dest}
        if missing:
            shown = ", ".join(f"{a} -> {v}" for a, v in sorted(missing.items()))
            raise Conflict(f"not updated: {shown} not in {dest}")
        set_store_aliases(dest, model, wanted, storage_options=options)
    except (Conflict, ManyModelsError, OSError) as exc:
        return failed(f"aliases of model {model!r}", exc)
    summary.aliases += 1
    shown = ", ".join(f"{a} -> {v}" for a, v in sorted(wanted.items())) or "none"
    say(f"aliases {model}: {shown}")
    return None


def _copy_version(
    src: ModelStore,
    dst: ModelStore,
    dest: str,
    model: str,
    version: str,
    overwrite: bool,
    options: dict[str, Any] | None,
) -> ModelManifest | None:
    """The manifest written to ``dest``, or None when it already held this exact version."""
    manifest = src.manifest(model, version)
    replace = False
    try:
        existing = dst.manifest(model, version)
    except ModelNotFound:  # VersionNotFound too
        pass
    except ArtifactIntegrityError as exc:  # an unreadable manifest in DEST
        if not overwrite:
            raise Conflict(f"{exc} in {dest}; pass --overwrite to replace it") from None
        replace = True
    else:
        if existing == manifest:
            return None
        if not overwrite:
            raise Conflict(
                f"differs from its copy in {dest} (sha256 {manifest.sha256[:12]}... here, "
                f"{existing.sha256[:12]}... there): published versions are immutable; "
                "pass --overwrite to replace it"
            )
        replace = True
    artifact = src.fetch(model, version)  # verified before anything is written to dest
    try:
        written = publish_version(
            dest,
            model,
            version,
            artifact=artifact,
            overwrite=replace,
            storage_options=options,
            **{field: getattr(manifest, field) for field in COPIED_FIELDS},
        )
    finally:
        if isinstance(src, RemoteStore):  # the throwaway tier holds one artifact at a time
            artifact.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                artifact.parent.rmdir()
    if written != manifest:  # only if SOURCE changed under us
        raise ArtifactIntegrityError(
            f"the copy in {dest} has sha256 {written.sha256[:12]}..., the source's manifest "
            f"{manifest.sha256[:12]}...: SOURCE changed during the copy; run sync again"
        )
    return written
