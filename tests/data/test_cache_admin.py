"""``offroadseg cache list | prune``: sizes, last use, least-recently-used pruning, dry runs, bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from offroadseg.cli import main
from offroadseg.data.cache import MANIFEST, build_store, open_store
from offroadseg.data.cache_admin import list_stores, prune_stores

DAY = 86400.0
NOW = 1_700_000_000.0  # 2023: before any real "now"


def _store(root: Path, kind: str, name: str, nbytes: int, *, used_days_ago: float, meta=None) -> Path:
    """A whole store of ``nbytes`` of array data, last used ``used_days_ago`` days before NOW."""
    path = root / kind / name
    build_store(path, name, {"a": ((nbytes,), np.uint8)}, lambda arr: meta)
    stamp = NOW - used_days_ago * DAY
    os.utime(path / MANIFEST, (stamp, stamp))
    return path


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    _store(
        root,
        "features",
        "old",
        3000,
        used_days_ago=30,
        meta={"samples": 7, "grid": [24, 46], "blocks": [3, 12]},
    )
    _store(root, "decoded", "mid", 2000, used_days_ago=10)
    _store(root, "features", "new", 1000, used_days_ago=1)
    (root / "weights").mkdir()
    (root / "weights" / "dinov2.safetensors").write_bytes(b"w" * 500)
    return root


def test_list_gives_each_store_its_bytes_on_disk_least_recently_used_first(cache: Path) -> None:
    stores = list_stores(cache)
    assert [s.path.name for s in stores] == ["old", "mid", "new"]
    assert [s.kind for s in stores] == ["features", "decoded", "features"]
    for s in stores:
        assert (
            s.bytes == _disk_bytes(s.path) and s.bytes > {"old": 3000, "mid": 2000, "new": 1000}[s.path.name]
        )
        assert not s.problem
    assert stores[0].samples == 7 and stores[0].detail == "grid 24x46, blocks 3-12"
    assert stores[0].last_used == pytest.approx(NOW - 30 * DAY)


def test_opening_a_store_marks_it_used_now(cache: Path) -> None:
    path = cache / "features" / "old"
    before = time.time()
    assert open_store(path, "old") is not None
    assert (path / MANIFEST).stat().st_mtime >= before - 1
    assert [s.path.name for s in list_stores(cache)][-1] == "old"


def test_prune_older_than_removes_only_stores_unused_that_long(cache: Path) -> None:
    result = prune_stores(cache, older_than_days=7, now=NOW)
    assert sorted(s.path.name for s in result.removed) == ["mid", "old"]
    assert [s.path.name for s in list_stores(cache)] == ["new"]
    assert result.freed_bytes == sum(s.bytes for s in result.removed)
    assert (cache / "weights" / "dinov2.safetensors").exists()  # converted weights are never touched


def test_prune_max_bytes_drops_the_least_recently_used_until_the_rest_fit(cache: Path) -> None:
    sizes = {s.path.name: s.bytes for s in list_stores(cache)}
    budget = sizes["new"] + sizes["mid"]  # exactly fits the two most recent
    result = prune_stores(cache, max_bytes=budget, now=NOW)
    assert [s.path.name for s in result.removed] == ["old"]
    assert sum(s.bytes for s in list_stores(cache)) == budget
    result = prune_stores(cache, max_bytes=budget - 1, now=NOW)
    assert [s.path.name for s in result.removed] == ["mid"]


def test_dry_run_removes_nothing(cache: Path) -> None:
    result = prune_stores(cache, remove_all=True, dry_run=True, now=NOW)
    assert len(result.removed) == 3 and not result.kept
    assert len(list_stores(cache)) == 3


def test_unusable_stores_and_leftovers_always_go(cache: Path) -> None:
    broken = cache / "features" / "broken"
    broken.mkdir()
    (broken / "hidden3.npy").write_bytes(b"x" * 100)  # a folder with no manifest
    trash = cache / "decoded" / ".trash-x-1a2b3c4d"
    trash.mkdir()
    (trash / "a.npy").write_bytes(b"y" * 50)
    assert [s.path.name for s in list_stores(cache) if s.problem] == ["broken"]
    result = prune_stores(cache, older_than_days=365, now=NOW)
    assert [s.path.name for s in result.removed] == ["broken"]
    assert result.leftover_bytes == 50 and not trash.exists()
    assert sorted(s.path.name for s in list_stores(cache)) == ["mid", "new", "old"]


def test_cli_list_and_prune(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "list.json"
    assert main(["cache", "list", "--dir", str(cache), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 store(s)" in text and "grid 24x46" in text
    listed = json.loads(out.read_text())
    assert [s["path"].rsplit("/", 1)[-1] for s in listed["stores"]] == ["old", "mid", "new"]
    assert main(["cache", "prune", "--dir", str(cache), "--all", "--dry-run"]) == 0
    assert "would remove 3 store(s)" in capsys.readouterr().out
    assert len(list_stores(cache)) == 3
    assert main(["cache", "prune", "--dir", str(cache), "--older-than", "0"]) == 0
    assert "removed 3 store(s)" in capsys.readouterr().out
    assert list_stores(cache) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cache", "prune"], "say what to remove"),
        (["cache", "prune", "--max-gb", "-1"], "--max-gb -1.0 is negative"),
    ],
)
def test_cli_prune_refuses_without_a_rule(cache: Path, argv, message, capsys) -> None:
    assert main([*argv, "--dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err and len(err.strip().splitlines()) == 1
    assert len(list_stores(cache)) == 3
