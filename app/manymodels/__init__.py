"""manymodels: serve many ONNX Runtime and PyTorch models from a hot, memory-budgeted cache."""

__version__ = "0.1.0"
