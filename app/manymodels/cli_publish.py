"""``python -m manymodels publish|alias``: write model versions and aliases into a store.

    python -m manymodels publish STORE MODEL VERSION ARTIFACT [--runtime onnx|torch] [--format F]
        [--input NAME:DTYPE:SHAPE ...] [--output ...] [--description TEXT] [--alias NAME ...]
        [--overwrite] [--storage-options JSON|@FILE]
    python -m manymodels alias STORE MODEL ALIAS VERSION [--force] [--storage-options JSON|@FILE]
    python -m manymodels alias STORE MODEL ALIAS --delete [--storage-options JSON|@FILE]

Thin wrappers around :func:`manymodels.store.publish_version` and
:func:`manymodels.store.set_store_aliases`: STORE is a local path or any fsspec URI (``s3://``,
``gs://``, ``az://``, ...), ``--storage-options`` the same dict as the server's
``store.storage_options``. For an ONNX artifact the inputs and outputs are read from the graph
unless given. These are short commands: no Ray, no supervisor.

Every mistake the caller can fix (bad JSON, unknown runtime or format, missing artifact, a version
that is already published, invalid names, an alias to a version that is not published) exits with
status 2 and one line on stderr; storage errors (permissions, network) exit with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

from manymodels.errors import ArtifactIntegrityError, ManyModelsError, ModelNotFound, VersionNotFound
from manymodels.store import (
    ModelStore,
    TensorSpec,
    open_store,
    publish_version,
    set_store_aliases,
    validate_name,
)
from manymodels.store.manifest import DType, ModelManifest

COMMANDS = ("publish", "alias")
DTYPES: tuple[str, ...] = get_args(DType)
FORMATS: tuple[str, ...] = get_args(ModelManifest.model_fields["format"].annotation)
# runtime -> the artifact formats it loads (manymodels.runtimes); "onnx" is ONNX Runtime's alone.
RUNTIME_FORMATS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx",),
    "torch": tuple(f for f in FORMATS if f != "onnx"),
}
# artifact suffix -> (runtime, format) when neither is given
_BY_SUFFIX = {".onnx": ("onnx", "onnx"), ".pt2": ("torch", "torch_export")}
# fsspec protocol -> the app's extra that installs its backend
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}


class UsageError(Exception):
    """Something the caller can fix: one line on stderr, exit status 2."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``publish`` and ``alias`` on the ``python -m manymodels`` parser."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--storage-options",
        metavar="JSON|@FILE",
        help="fsspec options as a JSON object, or @file.json (the server's store.storage_options)",
    )

    publish = sub.add_parser(
        "publish",
        parents=[options],
        help="publish a model version into a store",
        description="Copy ARTIFACT to STORE/MODEL/VERSION/ and write its manifest (last, so the "
        "version appears complete or not at all). Published versions are immutable unless --overwrite.",
    )
    publish.add_argument("store", metavar="STORE", help="local path or fsspec URI (s3://, gs://, az://)")
    publish.add_argument("model", metavar="MODEL")
    publish.add_argument("version", metavar="VERSION")
    publish.add_argument("artifact", metavar="ARTIFACT", help="the model file (.onnx, .pt2, .pt, ...)")
    publish.add_argument(
        "--runtime",
        help="onnx or torch (default: onnx for .onnx, torch for .pt2, else from --format)",
    )
    publish.add_argument(
        "--format",
        help=f"one of {', '.join(FORMATS)} (default: onnx for runtime onnx, torch_export for .pt2)",
    )
    for side, example in (("input", "input:float32:-1,64"), ("output", "logits:float32:-1,10")):
        publish.add_argument(
            f"--{side}",
            dest=f"{side}s",
            action="extend",
            nargs="+",
            default=[],
            metavar="NAME:DTYPE:SHAPE",
            help=f"a model {side}, e.g. {example} (-1: a dynamic dimension); repeatable; "
            "read from the graph for ONNX when omitted, required for torch",
        )
    publish.add_argument("--description", default="")
    publish.add_argument(
        "--alias",
        dest="aliases",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME",
        help="also point these aliases (e.g. stable) at the new version",
    )
    publish.add_argument(
        "--overwrite", action="store_true", help="replace a version that is already published"
    )

    alias = sub.add_parser(
        "alias",
        parents=[options],
        help="point a model's alias at a published version (or --delete it)",
        description="Set ALIAS of MODEL to VERSION in STORE/MODEL/aliases.json, keeping its other "
        "aliases. The config's models.<name>.aliases still override the store's.",
    )
    alias.add_argument("store", metavar="STORE", help="local path or fsspec URI (s3://, gs://, az://)")
    alias.add_argument("model", metavar="MODEL")
    alias.add_argument("alias", metavar="ALIAS")
    alias.add_argument("version", metavar="VERSION", nargs="?")
    alias.add_argument("--delete", action="store_true", help="remove ALIAS (no VERSION)")
    alias.add_argument("--force", action="store_true", help="do not check that VERSION is published")


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``publish`` or ``alias`` command; returns the exit status."""

    def action() -> int:
        print(publish(args) if args.command == "publish" else alias(args), flush=True)
        return 0

    return run_guarded(args.command, [args.store], action)


def run_guarded(command: str, uris: Sequence[str], action: Callable[[], int]) -> int:
    """``action()``'s exit status, or a store CLI's failure as one line on stderr: bad input and a
    missing fsspec backend exit 2 (with the extra to install for the first of ``uris`` that needs
    one), storage errors (permissions, network) 1."""
    try:
        return action()
    except (UsageError, ManyModelsError, ValueError) as exc:  # ValueError: fsspec's unknown protocol
        return _fail(command, str(exc), 2)
    except ImportError as exc:  # fsspec: "Install s3fs to access S3"
        hint = next((h for h in map(_extra_hint, uris) if h), "")
        return _fail(command, f"{exc}{hint}", 2)
    except OSError as exc:
        return _fail(command, f"{type(exc).__name__}: {exc}", 1)


def publish(args: argparse.Namespace) -> str:
    options = storage_options(args.storage_options)
    validate_name("model", args.model)
    validate_name("version", args.version)
    for name in args.aliases:
        validate_name("alias", name)
    artifact = Path(args.artifact)
    if not artifact.exists():
        raise UsageError(f"artifact {args.artifact!r} not found")
    if not artifact.is_file():
        raise UsageError(f"artifact {args.artifact!r} is not a file")
    runtime, fmt = runtime_and_format(artifact, args.runtime, args.format)
    inputs = [tensor_spec(s, "--input") for s in args.inputs]
    outputs = [tensor_spec(s, "--output") for s in args.outputs]
    if runtime == "onnx":
        inputs, outputs = onnx_signature(artifact, inputs, outputs)
    elif not inputs or not outputs:
        raise UsageError(
            f"runtime torch needs --input and --output (NAME:DTYPE:SHAPE, e.g. input:float32:-1,64): "
            f"a {fmt} artifact does not describe its tensors"
        )
    try:
        manifest = publish_version(
            args.store,
            args.model,
            args.version,
            runtime=runtime,
            format=fmt,
            artifact=artifact,
            inputs=inputs,
            outputs=outputs,
            description=args.description,
            overwrite=args.overwrite,
            storage_options=options,
        )
    except FileExistsError as exc:
        if "already published" not in str(exc):
            raise
        raise UsageError(
            f"model {args.model!r} version {args.version!r} is already published in {args.store} "
            "(published versions are immutable; pass --overwrite to replace it)"
        ) from None
    line = (
        f"published {manifest.name} version {manifest.version} (sha256 {manifest.sha256}, "
        f"{manifest.size_bytes} bytes) to {args.store}"
    )
    if args.aliases:
        try:
            with _opened(args.store, options) as store:
                aliases = _current_aliases(store, args.model)
            aliases.update(dict.fromkeys(args.aliases, args.version))
            set_store_aliases(args.store, args.model, aliases, storage_options=options)
        except (UsageError, ManyModelsError, OSError) as exc:
            raise UsageError(f"{line}, but its aliases were not set: {exc}") from None
        line += "".join(f"\nalias {name} -> {args.version}" for name in args.aliases)
    return line


def alias(args: argparse.Namespace) -> str:
    options = storage_options(args.storage_options)
    validate_name("model", args.model)
    validate_name("alias", args.alias)
    if args.delete and args.version is not None:
        raise UsageError("--delete takes no VERSION")
    if not args.delete and args.version is None:
        raise UsageError("VERSION is required (or --delete to remove the alias)")
    if args.version is not None:
        validate_name("version", args.version)
    with _opened(args.store, options) as store:
        aliases = _current_aliases(store, args.model)
        if args.delete:
            if args.alias not in aliases:
                raise UsageError(f"model {args.model!r} has no alias {args.alias!r} in {args.store}")
            del aliases[args.alias]
        else:
            if not args.force:
                _check_published(store, args.store, args.model, args.version)
            aliases[args.alias] = args.version
    set_store_aliases(args.store, args.model, aliases, storage_options=options)
    if args.delete:
        return f"deleted alias {args.alias} of {args.model} in {args.store}"
    return f"alias {args.alias} -> {args.version} ({args.model} in {args.store})"


def storage_options(value: str | None, flag: str = "--storage-options") -> dict[str, Any]:
    """``--storage-options``: a JSON object, or ``@path`` to a file holding one."""
    if value is None:
        return {}
    where = flag
    text = value
    if value.startswith("@"):
        where = value[1:]
        try:
            text = Path(where).read_text()
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {where!r}: {exc.strerror or exc}") from None
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where}: invalid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(options).__name__}")
    return options


def runtime_and_format(artifact: Path, runtime: str | None, fmt: str | None) -> tuple[str, str]:
    """Fill in whichever of runtime and format is missing; refuse pairs no runtime loads."""
    if runtime is not None and runtime not in RUNTIME_FORMATS:
        raise UsageError(f"unknown runtime {runtime!r} (use {' or '.join(RUNTIME_FORMATS)})")
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (use one of {', '.join(FORMATS)})")
    guess = _BY_SUFFIX.get(artifact.suffix.lower())
    if runtime is None:
        if fmt is not None:
            runtime = next(r for r, formats in RUNTIME_FORMATS.items() if fmt in formats)
        elif guess is not None:
            runtime = guess[0]
        else:
            raise UsageError(
                f"cannot tell the runtime from {artifact.name!r}: pass --runtime onnx, or "
                f"--runtime torch --format {'|'.join(RUNTIME_FORMATS['torch'])}"
            )
    allowed = RUNTIME_FORMATS[runtime]
    if fmt is None:
        if len(allowed) == 1:
            fmt = allowed[0]
        elif guess is not None and guess[0] == runtime:
            fmt = guess[1]
        else:
            raise UsageError(f"runtime {runtime} needs --format ({', '.join(allowed)})")
    if fmt not in allowed:
        raise UsageError(f"runtime {runtime} cannot load format {fmt!r} (use {', '.join(allowed)})")
    return runtime, fmt


def tensor_spec(value: str, flag: str = "--input") -> TensorSpec:
    """``NAME:DTYPE:SHAPE``, e.g. ``input:float32:-1,64``; the name may itself contain ':'."""
    parts = value.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise UsageError(f"{flag} {value!r}: expected NAME:DTYPE:SHAPE, e.g. input:float32:-1,64")
    name, dtype, shape_text = parts
    if dtype not in DTYPES:
        raise UsageError(f"{flag} {value!r}: unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})")
    shape = _shape(shape_text)
    if shape is None:
        raise UsageError(
            f"{flag} {value!r}: SHAPE is comma-separated sizes, -1 for a dynamic dimension "
            "(e.g. -1,64; empty for a scalar)"
        )
    return TensorSpec(name=name, dtype=dtype, shape=shape)


def _shape(text: str) -> list[int] | None:
    dims = text.strip().strip("[]").strip()
    try:
        shape = [int(d) for d in dims.split(",")] if dims else []
    except ValueError:
        return None
    return None if any(d < -1 for d in shape) else shape


def onnx_signature(
    artifact: Path, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs/outputs from the ONNX graph where not given; given ones must name graph tensors."""
    import onnx

    try:
        # the graph only: external weights (if any) are neither needed nor read
        graph = onnx.load(str(artifact), load_external_data=False).graph
    except Exception as exc:  # protobuf DecodeError, onnx's own errors
        raise UsageError(f"artifact {str(artifact)!r} is not a readable ONNX model ({exc})") from None
    weights = {t.name for t in graph.initializer}
    graph_inputs = [v for v in graph.input if v.name not in weights]
    graph_outputs = list(graph.output)
    if inputs:
        names = {s.name for s in inputs}
        want = {v.name for v in graph_inputs}
        if names != want:
            raise UsageError(f"--input names {sorted(names)} do not match the graph's inputs {sorted(want)}")
    else:
        inputs = [_spec_from_onnx(v, "input") for v in graph_inputs]
    if outputs:
        missing = sorted({s.name for s in outputs} - {v.name for v in graph_outputs})
        if missing:
            raise UsageError(
                f"--output {missing} are not graph outputs {sorted(v.name for v in graph_outputs)}"
            )
    else:
        outputs = [_spec_from_onnx(v, "output") for v in graph_outputs]
    return inputs, outputs


def _spec_from_onnx(value: Any, side: str) -> TensorSpec:
    from onnx import helper

    what = f"ONNX {side} {value.name!r}"
    if value.type.WhichOneof("value") != "tensor_type":
        raise UsageError(f"{what} is not a tensor; pass --{side} NAME:DTYPE:SHAPE")
    tensor = value.type.tensor_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except Exception:  # UNDEFINED or a type numpy has no name for
        dtype = f"elem_type {tensor.elem_type}"
    dtype = "bytes" if dtype == "object" else dtype  # ONNX STRING
    if dtype not in DTYPES:
        raise UsageError(f"{what} has dtype {dtype}, which manymodels does not serve")
    if not tensor.HasField("shape"):
        raise UsageError(f"{what} has no shape in the graph; pass --{side} NAME:DTYPE:SHAPE")
    # symbolic ("batch") and unknown dimensions are dynamic
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)


@contextlib.contextmanager
def _opened(uri: str, options: dict[str, Any]) -> Iterator[ModelStore]:
    """The store as the server reads it; a remote store's disk tier is a throwaway folder."""
    with tempfile.TemporaryDirectory(prefix="manymodels-cli-") as tmp:
        try:
            store = open_store(
                uri, cache_dir=None if uri.startswith("file://") else tmp, storage_options=options
            )
        except FileNotFoundError as exc:  # a local root that is not a directory
            raise UsageError(str(exc)) from None
        yield store


def _current_aliases(store: ModelStore, model: str) -> dict[str, str]:
    try:
        return store.store_aliases(model)
    except ArtifactIntegrityError as exc:
        raise UsageError(f"{exc}: fix or remove it first") from None


def _check_published(store: ModelStore, uri: str, model: str, version: str) -> None:
    hint = "publish it first, or pass --force"
    try:
        store.manifest(model, version)
    except VersionNotFound:
        versions = store.list_versions(model)
        shown = ", ".join(versions[-10:]) or "none"
        raise UsageError(
            f"model {model!r} has no published version {version!r} in {uri} (latest versions: "
            f"{shown}); {hint}"
        ) from None
    except ModelNotFound:
        raise UsageError(f"model {model!r} is not in {uri}; {hint}") from None
    except ArtifactIntegrityError as exc:
        raise UsageError(f"{exc}; pass --force to point the alias at it anyway") from None


def _extra_hint(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    extra = _EXTRAS.get(scheme)
    return f" (install manymodels with its [{extra}] extra)" if extra else ""


def _fail(command: str, message: str, status: int) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"python -m manymodels {command}: error: {first}", file=sys.stderr, flush=True)
    return status
