import pytest

from manymodels.errors import InvalidName, InvalidRequest
from manymodels.store import sort_versions, validate_name
from manymodels.store.names import is_plain_filename


@pytest.mark.parametrize("value", ["m", "resnet-50", "v1.2.3", "A_b.c-9", "1", "x" * 128])
def test_valid_names_pass_unchanged(value: str) -> None:
    assert validate_name("model", value) == value


@pytest.mark.parametrize(
    "value",
    [
        "../x",
        "a/b",
        "",
        "..",
        ".",
        "a..b",
        ".hidden",
        "-x",
        "a\\b",
        "a b",
        "a\n",
        "x" * 129,
        "caf\u00e9",
        None,
        3,
    ],
)
def test_invalid_names_raise_invalid_name(value: object) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name("alias", value)  # type: ignore[arg-type]
    assert "alias" in str(info.value)
    assert repr(value)[:20] in str(info.value)
    assert isinstance(info.value, InvalidRequest)  # maps to HTTP 400


def test_long_bad_values_are_truncated_in_the_message() -> None:
    with pytest.raises(InvalidName) as info:
        validate_name("model", "/" * 10_000)
    assert len(str(info.value)) < 300


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="kind"):
        validate_name("file", "x")


def test_numeric_versions_sort_numerically() -> None:
    assert sort_versions(["10", "2", "1", "33", "3"]) == ["1", "2", "3", "10", "33"]


def test_mixed_versions_sort_naturally_and_deterministically() -> None:
    assert sort_versions(["1.10", "1.9", "1.9b", "v2", "v10", "1"]) == [
        "1",
        "1.9",
        "1.9b",
        "1.10",
        "v2",
        "v10",
    ]
    assert sort_versions(["01", "1"]) == sort_versions(["1", "01"]) == ["01", "1"]
    assert sort_versions(["b", "a", "2024-01-02", "2024-01-10"]) == [
        "2024-01-02",
        "2024-01-10",
        "a",
        "b",
    ]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("model.onnx", True),
        ("a/b", False),
        ("..\\x", False),
        ("", False),
        (".x", False),
        ("..", False),
        ("x\0", False),
        ("m" * 256, False),
    ],
)
def test_plain_filename(name: str, ok: bool) -> None:
    assert is_plain_filename(name) is ok
