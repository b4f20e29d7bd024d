"""manymodels.config: byte sizes, the typed user_config, and reading a Serve config file."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import manymodels.demo
from manymodels.config import (
    APP_IMPORT_PATH,
    CacheConfig,
    ExtraRoutes,
    GatewayConfig,
    ServerConfig,
    app_settings,
    load_serve_config,
    parse_bytes,
)

DEMO_CONFIG = Path(manymodels.demo.__file__).parent / "serve_config.yaml"
IMAGE_CONFIG = Path(__file__).resolve().parents[2] / "images" / "serve_config.yaml"


# ---- parse_bytes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2Gi", 2 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1.5G", 1_500_000_000),
        ("1.5Gi", 3 * 2**29),
        ("64Ki", 65536),
        ("10k", 10_000),
        ("3T", 3 * 10**12),
        ("1Ti", 2**40),
        ("2GiB", 2 * 2**30),
        ("100MB", 100_000_000),
        ("2gi", 2 * 2**30),
        ("  8 Mi ", 8 * 2**20),
        ("123", 123),
        ("0", 0),
        (0, 0),
        (1024, 1024),
        (2**40, 2**40),
        (1.9, 1),
        (1.5e9, 1_500_000_000),
    ],
)
def test_parse_bytes(value: int | float | str, expected: int) -> None:
    result = parse_bytes(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "2 gigs",
        "Gi",
        "1.5.5G",
        "-1",
        "-1Gi",
        "2Xi",
        "2 Gi Gi",
        "0x10",
        True,
        False,
        -1,
        -0.5,
        math.nan,
    ],
)
def test_parse_bytes_refuses_garbage(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_bytes(value)


@pytest.mark.parametrize("value", [None, [1], math.inf], ids=["none", "list", "inf"])
def test_parse_bytes_refuses_other_types_with_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_bytes(value)
    with pytest.raises(ValidationError):
        CacheConfig.model_validate({"capacity_bytes": value})


def test_byte_sizes_in_the_config_models() -> None:
    config = ServerConfig.model_validate(
        {
            "store": {"uri": "/models", "disk_cache_bytes": "1Gi"},
            "cache": {"capacity_bytes": "512Mi"},
            "limits": {"max_body_bytes": "1Mi"},
        }
    )
    assert config.store.disk_cache_bytes == 2**30
    assert config.cache.capacity_bytes == 512 * 2**20
    assert config.limits.max_body_bytes == 2**20
    assert GatewayConfig(max_body_bytes="2Mi").max_body_bytes == 2 * 2**20
    with pytest.raises(ValidationError, match="capacity_bytes"):
        ServerConfig.model_validate({"store": {"uri": "/m"}, "cache": {"capacity_bytes": "lots"}})


# ---- ServerConfig -------------------------------------------------------------------------------


def test_defaults() -> None:
    config = ServerConfig(store={"uri": "/models"})
    assert config.cache.capacity_bytes == 2 * 2**30
    assert config.default_model is None
    assert config.models == {}
    assert config.limits.max_body_bytes == 8 * 2**20
    assert config.store.refresh_interval_s == 10.0


@pytest.mark.parametrize(
    "raw",
    [
        {"store": {"uri": "/m"}, "bogus": 1},
        {"store": {"uri": "/m", "bucket": "x"}},
        {"store": {"uri": "/m"}, "cache": {"capacity": "1Gi"}},
        {"store": {"uri": "/m"}, "models": {"a": {"alias": {"stable": "1"}}}},
        {"store": {"uri": "/m"}, "limits": {"max_body": 10}},
        {"store": {"uri": "/m"}, "runtime": {"threads": 2}},
    ],
    ids=["top", "store", "cache", "model", "limits", "runtime"],
)
def test_unknown_keys_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ServerConfig.model_validate(raw)


def test_store_is_required() -> None:
    with pytest.raises(ValidationError, match="store"):
        ServerConfig.model_validate({})


@pytest.mark.parametrize(
    "raw",
    [
        {"default_model": "../x"},
        {"default_model": "a/b"},
        {"default_model": ".hidden"},
        {"default_model": "-dash"},
        {"default_model": "x" * 129},
        {"models": {"../etc": {}}},
        {"models": {"m": {"aliases": {"../stable": "1"}}}},
        {"models": {"m": {"aliases": {"stable": ".."}}}},
        {"models": {"m": {"aliases": {"stable": "1/2"}}}},
        {"models": {"": {}}},
    ],
)
def test_bad_names_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="invalid model, alias or version name"):
        ServerConfig.model_validate({"store": {"uri": "/m"}, **raw})


@pytest.mark.parametrize(
    "raw",
    [
        {"default_model": "text-sentiment\n"},
        {"models": {"a..b": {}}},
        {"models": {"m": {"aliases": {"stable\n": "1"}}}},
        {"models": {"m": {"aliases": {"stable": "1..2"}}}},
    ],
)
def test_names_are_validated_like_the_store_does(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServerConfig.model_validate({"store": {"uri": "/m"}, **raw})


def test_good_names_are_accepted() -> None:
    config = ServerConfig.model_validate(
        {
            "store": {"uri": "/m"},
            "default_model": "text-sentiment",
            "models": {"mlp_1.v2": {"aliases": {"stable": "1", "canary": "2.0-rc1"}}},
        }
    )
    assert config.models["mlp_1.v2"].aliases == {"stable": "1", "canary": "2.0-rc1"}


def test_unknown_cache_policy() -> None:
    with pytest.raises(ValidationError, match=r"unknown cache policy 'fifo'; choose one of"):
        ServerConfig.model_validate({"store": {"uri": "/m"}, "cache": {"policy": "fifo"}})
    for policy in ("lru", "gdsf", "tinylfu-gdsf"):
        assert CacheConfig(policy=policy).policy == policy


@pytest.mark.parametrize(
    "raw",
    [
        {"limits": {"max_batch": 0}},
        {"http": {"port": 70000}},
        {"store": {"uri": "/m", "refresh_interval_s": -1}},
        {"inline_infer_max_ms": -1},
    ],
)
def test_out_of_range_values(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServerConfig.model_validate({"store": {"uri": "/m"}, **raw})


def test_gateway_config_bounds() -> None:
    with pytest.raises(ValidationError, match="balance_factor"):
        GatewayConfig(balance_factor=100)
    with pytest.raises(ValidationError, match="port"):
        GatewayConfig(port=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        GatewayConfig.model_validate({"listen": 1})


def test_extra_routes() -> None:
    assert GatewayConfig().routes == ExtraRoutes()  # none by default: the built-in paths only
    routes = ExtraRoutes(liveness="/live", readiness="", scoring="/v1/models/m:score")
    assert (routes.liveness, routes.readiness, routes.scoring) == ("/live", None, "/v1/models/m:score")
    # The built-in paths themselves are allowed as their own targets (a no-op rewrite).
    assert ExtraRoutes(readiness="/v2/health/ready", scoring="/predict").scoring == "/predict"


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"scoring": "score"}, "must be a path starting with '/'"),
        ({"scoring": "/score me"}, "must be a path"),
        ({"liveness": '/x" if TRUE'}, "must be a path"),
        ({"readiness": "/a#b"}, "must be a path"),
        ({"scoring": 5}, "must be a path"),
        ({"liveness": "/same", "scoring": "/same"}, "must differ"),
        ({"readiness": "/predict"}, "readiness route '/predict' would shadow"),
        ({"scoring": "/v2/health/ready"}, "scoring route '/v2/health/ready' would shadow"),
        ({"liveness": "/-/healthz"}, "would shadow"),
        ({"scoring": "/metrics"}, "would shadow"),
        ({"startup": "/x"}, "Extra inputs"),
    ],
)
def test_extra_routes_are_validated(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        GatewayConfig.model_validate({"routes": raw})
    assert "routes" in str(info.value)


def test_image_config_takes_the_routes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MM_LIVENESS_ROUTE", "MM_READINESS_ROUTE", "MM_SCORING_ROUTE", "MM_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert app_settings(load_serve_config(IMAGE_CONFIG)).gateway.routes == ExtraRoutes()
    monkeypatch.setenv("MM_LIVENESS_ROUTE", "/live")
    monkeypatch.setenv("MM_READINESS_ROUTE", "/ready")
    monkeypatch.setenv("MM_SCORING_ROUTE", "/score")
    monkeypatch.setenv("MM_PORT", "5001")
    gateway = app_settings(load_serve_config(IMAGE_CONFIG)).gateway
    assert gateway.routes == ExtraRoutes(liveness="/live", readiness="/ready", scoring="/score")
    assert gateway.port == 5001
    monkeypatch.setenv("MM_SCORING_ROUTE", "score")
    with pytest.raises(ValidationError, match="routes.scoring"):
        load_serve_config(IMAGE_CONFIG)


# ---- the Serve config file ----------------------------------------------------------------------


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("MM_MODEL_ROOT", str(root))
    for var in ("MM_RAY_PROXY_PORT", "MM_HOST", "MM_PORT"):
        monkeypatch.delenv(var, raising=False)
    return root


def test_demo_serve_config(demo_env: Path) -> None:
    config = load_serve_config(DEMO_CONFIG)
    assert config["http_options"]["port"] == 8001  # ${MM_RAY_PROXY_PORT:-8001}
    settings = app_settings(config)
    server = settings.server
    assert server.store.uri == str(demo_env)
    assert server.cache.capacity_bytes == 64 * 2**20
    assert server.cache.pin == ["text-sentiment"]
    assert server.cache.prefetch == ["text-sentiment", "mlp-000"]
    assert server.default_model == "text-sentiment"
    sentiment = server.models["text-sentiment"]
    assert sentiment.aliases == {"stable": "1", "canary": "2"}
    assert sentiment.processor == "manymodels.processors.text:TextClassifierProcessor"
    assert sentiment.processor_options["labels"] == ["negative", "positive"]
    assert server.limits.max_body_bytes == 8 * 2**20
    assert settings.gateway.host == "127.0.0.1"
    assert settings.gateway.port == 8000
    assert settings.gateway.balance_factor == 200
    assert set(settings.deployments) == {"ModelServer", "Gateway"}
    assert settings.deployments["ModelServer"]["num_replicas"] == 2


def test_environment_overrides_the_defaults(
    demo_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MM_PORT", "9123")
    monkeypatch.setenv("MM_HOST", "0.0.0.0")
    settings = app_settings(load_serve_config(DEMO_CONFIG))
    assert settings.gateway.port == 9123
    assert settings.gateway.host == "0.0.0.0"


def test_default_model_root_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MM_MODEL_ROOT", raising=False)
    settings = app_settings(load_serve_config(DEMO_CONFIG))
    assert settings.server.store.uri == ".demo/models"


@pytest.fixture
def demo_dict(demo_env: Path) -> dict[str, Any]:
    return load_serve_config(DEMO_CONFIG)


def _server_deployment(config: dict[str, Any]) -> dict[str, Any]:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == "ModelServer")


@pytest.mark.parametrize(
    "config",
    [{}, {"applications": []}, {"applications": None}, {"applications": {"name": "x"}}],
    ids=["missing", "empty", "null", "mapping"],
)
def test_applications_must_be_a_non_empty_list(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="'applications' must be a non-empty list"):
        app_settings(config)


def test_missing_user_config(demo_dict: dict[str, Any]) -> None:
    del _server_deployment(demo_dict)["user_config"]
    with pytest.raises(ValueError, match="deployment ModelServer needs a user_config"):
        app_settings(demo_dict)


def test_missing_model_server_deployment(demo_dict: dict[str, Any]) -> None:
    app = demo_dict["applications"][0]
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "ModelServer"]
    with pytest.raises(ValueError, match="ModelServer needs a user_config"):
        app_settings(demo_dict)


def test_unknown_deployment(demo_dict: dict[str, Any]) -> None:
    demo_dict["applications"][0]["deployments"].append({"name": "Frontend", "num_replicas": 1})
    with pytest.raises(ValueError, match=r"unknown deployments \['Frontend'\]"):
        app_settings(demo_dict)


def test_application_is_found_by_import_path(demo_dict: dict[str, Any]) -> None:
    other = {"name": "other", "import_path": "other.app:build", "route_prefix": "/other"}
    demo_dict["applications"].insert(0, other)
    assert app_settings(demo_dict).server.default_model == "text-sentiment"
    assert app_settings(demo_dict, "manymodels").server.default_model == "text-sentiment"
    with pytest.raises(
        ValueError, match=f"expected one application with import_path {APP_IMPORT_PATH}"
    ):
        app_settings(demo_dict, "nope")
    two = copy.deepcopy(demo_dict)
    two["applications"].append(copy.deepcopy(two["applications"][1]) | {"name": "second"})
    with pytest.raises(ValueError, match="expected one application"):
        app_settings(two)
    assert app_settings(two, "second").server.store == app_settings(demo_dict).server.store


def test_invalid_user_config_names_the_field(demo_dict: dict[str, Any]) -> None:
    _server_deployment(demo_dict)["user_config"]["cache"]["policy"] = "fifo"
    with pytest.raises(ValueError, match=r"cache\.policy[\s\S]*unknown cache policy 'fifo'"):
        app_settings(demo_dict)


def test_invalid_gateway_config_names_the_field(demo_dict: dict[str, Any]) -> None:
    gateway = next(d for d in demo_dict["applications"][0]["deployments"] if d["name"] == "Gateway")
    gateway["user_config"]["balance_factor"] = 50
    with pytest.raises(ValueError, match="balance_factor"):
        app_settings(demo_dict)


def test_load_serve_config_checks_the_file(tmp_path: Path, demo_env: Path) -> None:
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="not a YAML mapping"):
        load_serve_config(not_a_mapping)

    broken = yaml.safe_load(DEMO_CONFIG.read_text())
    _server_deployment(broken)["user_config"]["surprise"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken))
    with pytest.raises(ValueError, match="surprise"):
        load_serve_config(bad)


@pytest.mark.parametrize(
    "config",
    [
        {"applications": ["manymodels"]},
        {"applications": [{"import_path": APP_IMPORT_PATH, "deployments": ["ModelServer"]}]},
        {"applications": [{"import_path": APP_IMPORT_PATH, "deployments": {"ModelServer": {}}}]},
    ],
    ids=["application", "deployment", "deployments-mapping"],
)
def test_malformed_entries_raise_value_error(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        app_settings(config)
