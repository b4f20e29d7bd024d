"""Per-model business logic around the tensors; the how-to is in manymodels.processors.base."""

from manymodels.processors.base import Processor, load_processor_class

__all__ = ["Processor", "load_processor_class"]
