from __future__ import annotations

import pytest

from manymodels.errors import ConfigurationError
from manymodels.runtimes import RuntimeSettings, base, require_device


@pytest.mark.parametrize("found", [("cpu",), ("cpu", "cuda")])
def test_require_device_refuses_only_an_explicit_cuda_without_a_gpu(monkeypatch, found: tuple) -> None:
    monkeypatch.setattr(base, "_devices", lambda: found)
    require_device(RuntimeSettings(device="auto"))
    require_device(RuntimeSettings(device="cpu"))
    if "cuda" in found:
        require_device(RuntimeSettings(device="cuda"))
    else:
        with pytest.raises(ConfigurationError, match="runtime.device is cuda but .* GPU"):
            require_device(RuntimeSettings(device="cuda"))
