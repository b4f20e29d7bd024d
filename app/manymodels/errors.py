"""Errors shared by every layer; the HTTP layer maps each to one status code."""


class ManyModelsError(Exception):
    """Base class; ``status`` is the HTTP status the ingress answers with, ``retry_after`` (seconds)
    its ``Retry-After`` header when the failure is temporary."""

    status = 500
    retry_after: int | None = None


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


class InferenceError(ManyModelsError):
    """A loaded model failed while running on inputs that passed every check: a server-side fault
    (a broken graph, a wrong output count), named with the model and version."""

    status = 500


class OutOfMemory(ManyModelsError):
    """The model ran out of (GPU or host) memory on this request; retrying shortly may succeed."""

    status = 503
    retry_after = 1


class Overloaded(ManyModelsError):
    """Every request slot of the replica is taken and its waiting line is full; another replica, or
    this one a moment later, can take the request."""

    status = 503
    retry_after = 1


class ConfigurationError(ManyModelsError, ValueError):
    """The serve config names something that cannot work (e.g. a processor that does not import).

    Raised when the config is applied, so the mistake is reported at deploy time and the old config
    keeps serving; a ValueError too, so config loaders report it like any other invalid value."""

    status = 500


class CacheFull(ManyModelsError):
    """A model cannot be made resident: larger than the cache or everything else is pinned."""

    status = 507
