import threading
from pathlib import Path

import pytest

from manymodels.errors import InvalidName, ModelNotFound, VersionNotFound
from manymodels.store import Catalog, LocalStore, set_store_aliases


@pytest.fixture
def catalog(store_root: Path, publish) -> Catalog:
    for v in ["1", "2", "10"]:
        publish(store_root, "m", v)
    publish(store_root, "solo", "a")
    return Catalog(LocalStore(store_root))


def test_latest_explicit_and_listing(catalog: Catalog) -> None:
    assert catalog.models() == ["m", "solo"]
    assert catalog.versions("m") == ["1", "2", "10"]
    assert catalog.resolve("m") == "10"  # numeric, not lexicographic ("2" > "10")
    assert catalog.resolve("m", "2") == "2"
    assert catalog.resolve("solo") == "a"


def test_store_stable_alias_and_config_override(store_root: Path, catalog: Catalog) -> None:
    set_store_aliases(store_root, "m", {"stable": "2", "canary": "10"})
    catalog.store.refresh()
    assert catalog.resolve("m") == "2"
    assert catalog.resolve("m", "canary") == "10"
    catalog = Catalog(catalog.store, aliases={"m": {"stable": "1", "beta": "2"}})
    assert catalog.aliases("m") == {"stable": "1", "canary": "10", "beta": "2"}
    assert catalog.resolve("m") == "1"
    assert catalog.resolve("m", "beta") == "2"
    assert catalog.resolve("m", "canary") == "10"


def test_live_set_aliases(catalog: Catalog) -> None:
    catalog.set_aliases({"m": {"stable": "1"}})
    assert catalog.resolve("m") == "1"
    catalog.set_aliases({"m": {"stable": "2"}})
    assert catalog.resolve("m") == "2"
    catalog.set_aliases({})
    assert catalog.resolve("m") == "10"


def test_invalid_config_aliases_leave_the_old_table(catalog: Catalog) -> None:
    catalog.set_aliases({"m": {"stable": "1"}})
    for bad in ({"m": {"stable": "../2"}}, {"../m": {"s": "1"}}, {"m": {"a/b": "1"}}):
        with pytest.raises(InvalidName):
            catalog.set_aliases(bad)
    assert catalog.resolve("m") == "1"


def test_explicit_version_wins_over_same_named_alias(catalog: Catalog) -> None:
    catalog.set_aliases({"m": {"2": "10"}})
    assert catalog.resolve("m", "2") == "2"


def test_not_found_messages(catalog: Catalog, store_root: Path) -> None:
    with pytest.raises(ModelNotFound, match="model 'ghost' not found"):
        catalog.resolve("ghost")
    with pytest.raises(VersionNotFound, match=r"no version or alias '7'.*versions: 1, 2, 10"):
        catalog.resolve("m", "7")
    catalog.set_aliases({"m": {"stable": "99", "canary": "98"}})
    with pytest.raises(VersionNotFound, match="alias 'stable' of model 'm' points at version '99'"):
        catalog.resolve("m")
    with pytest.raises(VersionNotFound, match="alias 'canary'"):
        catalog.resolve("m", "canary")
    (store_root / "empty").mkdir()
    catalog.store.refresh()
    with pytest.raises(VersionNotFound, match="model 'empty' has no published versions"):
        catalog.resolve("empty")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".."])
def test_resolve_validates_names(catalog: Catalog, bad: str) -> None:
    with pytest.raises(InvalidName):
        catalog.resolve(bad)
    with pytest.raises(InvalidName):
        catalog.resolve("m", bad)


def test_resolve_during_alias_moves_sees_whole_tables(catalog: Catalog) -> None:
    # each table moves stable and canary together; a reader must never see a mix of two tables
    tables = [{"m": {"stable": v, "canary": v}} for v in ("1", "2", "10")]
    stop = threading.Event()
    mixed: list[dict[str, str]] = []

    def mover() -> None:
        i = 0
        while not stop.is_set():
            catalog.set_aliases(tables[i % 3])
            i += 1

    thread = threading.Thread(target=mover)
    thread.start()
    try:
        for _ in range(3000):
            aliases = catalog.aliases("m")
            if aliases["stable"] != aliases["canary"]:
                mixed.append(aliases)
    finally:
        stop.set()
        thread.join()
    assert mixed == []
