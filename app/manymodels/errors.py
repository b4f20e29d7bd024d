"""Errors shared by every layer; the HTTP layer maps each to one status code."""


class ManyModelsError(Exception):
    """Base class; ``status`` is the HTTP status the ingress answers with."""

    status = 500


class InvalidRequest(ManyModelsError):
    """Malformed input: bad JSON, wrong shape or dtype, NaN where not allowed."""

    status = 400


class InvalidName(InvalidRequest):
    """A model name, version or alias that fails validation (e.g. path traversal)."""


class ModelNotFound(ManyModelsError):
    status = 404


class VersionNotFound(ModelNotFound):
    pass


class PayloadTooLarge(ManyModelsError):
    status = 413


class ArtifactIntegrityError(ManyModelsError):
    """An artifact whose sha256 does not match its manifest, or that cannot be parsed."""

    status = 422


class ModelLoadError(ManyModelsError):
    """A runtime failed to load an artifact that passed verification."""

    status = 500


class CacheFull(ManyModelsError):
    """A model cannot be made resident: larger than the cache or everything else is pinned."""

    status = 507
