"""Protocol-agnostic model operations; the parts are described in ``manymodels.dataplane.plane``."""

from manymodels.dataplane.plane import DataPlane
from manymodels.dataplane.served import ServedModel

__all__ = ["DataPlane", "ServedModel"]
