"""Decoded-data cache and atomic array stores: reuse, invalidation, corruption, failed writes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from toydata import make_toy_dataset

from offroadseg.config import DataConfig
from offroadseg.data import cache as cache_mod
from offroadseg.data.cache import CacheWarning, build_store, open_decoded_cache, open_store
from offroadseg.data.datasets import SegmentationDataset, list_samples, taxonomy_for
from offroadseg.errors import DataError

SIZE = (28, 42)


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return make_toy_dataset(tmp_path / "toy", n_train=4, n_val=2, size=(40, 60))


def _setup(root: Path, split: str = "train"):
    cfg = DataConfig(root=str(root))
    return list_samples(cfg, split), taxonomy_for(cfg)


def _open(root: Path, cache: Path, *, size=SIZE, full_res=False, **kw):
    samples, tax = _setup(root, "val" if full_res else "train")
    return open_decoded_cache(samples, tax, image_size=size, full_res=full_res, root=cache, **kw)


def _count_decodes(monkeypatch) -> list[int]:
    calls = [0]
    real = cache_mod.load_pair

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_pair", counting)
    return calls


def test_items_equal_uncached_dataset(toy: Path, tmp_path: Path) -> None:
    samples, tax = _setup(toy, "val")
    plain = SegmentationDataset(samples, tax, image_size=SIZE, full_res=True)
    cache = open_decoded_cache(samples, tax, image_size=SIZE, full_res=True, root=tmp_path / "c")
    cached = SegmentationDataset(samples, tax, image_size=SIZE, full_res=True, loader=cache)
    assert cache.built and cache.nbytes > 0
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        for k in ("image", "mask", "full_mask"):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            assert (a[k] == b[k]).all(), k
        assert b["full_mask"].shape == (40, 60)


def test_reused_without_decoding(toy: Path, tmp_path: Path, monkeypatch) -> None:
    calls = _count_decodes(monkeypatch)
    first = _open(toy, tmp_path / "c")
    assert first.built and calls[0] == 4
    second = _open(toy, tmp_path / "c")
    assert not second.built and calls[0] == 4  # nothing decoded again
    assert second.path == first.path
    assert (second(1)[0] == first(1)[0]).all()


def test_changed_file_invalidates(toy: Path, tmp_path: Path, monkeypatch) -> None:
    first = _open(toy, tmp_path / "c")
    image = sorted((toy / "train" / "Color_Images").iterdir())[0]
    from PIL import Image

    pixels = np.array(Image.open(image))
    pixels[0, 0] = 255 - pixels[0, 0]  # one pixel changed
    Image.fromarray(pixels).save(image)
    calls = _count_decodes(monkeypatch)
    second = _open(toy, tmp_path / "c")
    assert second.built and second.path != first.path and calls[0] == 4
    assert first.path.exists()  # another store: the old one stays until pruned


def test_a_touched_or_copied_dataset_reuses_its_store_without_decoding(
    toy: Path, tmp_path: Path, monkeypatch
) -> None:
    """The key holds paths and mtimes (cheap); a miss then looks for a store of the same content and
    re-keys it: a dataset copied again (new mtimes) or moved does not rebuild gigabytes."""
    first = _open(toy, tmp_path / "c")
    first_path, sample = first.path, first(1)[0].copy()
    for f in (toy / "train").rglob("*.png"):
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    moved = tmp_path / "moved"
    shutil.copytree(toy, moved)  # new paths, new mtimes, same bytes
    calls = _count_decodes(monkeypatch)
    second = _open(moved, tmp_path / "c")
    assert not second.built and calls[0] == 0
    assert second.path != first_path and not first_path.exists()  # moved to the new key, not copied
    assert (second(1)[0] == sample).all()
    assert [p.name for p in (tmp_path / "c" / "decoded").iterdir()] == [second.path.name]
    third = _open(moved, tmp_path / "c")  # found by the cheap key now
    assert not third.built and third.path == second.path and calls[0] == 0


def test_changed_image_size_invalidates(toy: Path, tmp_path: Path) -> None:
    first = _open(toy, tmp_path / "c")
    second = _open(toy, tmp_path / "c", size=(14, 28))
    assert second.built and second.path != first.path
    assert second(0)[0].shape == (14, 28, 3)


def _first_store(cache: Path) -> Path:
    (path,) = (cache / "decoded").iterdir()
    return path


@pytest.mark.parametrize("damage", ["manifest", "truncate", "other_key", "other_format", "no_manifest"])
def test_corrupt_store_is_rebuilt(toy: Path, tmp_path: Path, damage: str) -> None:
    good = _open(toy, tmp_path / "c")
    reference = good(2)[0].copy()
    path = _first_store(tmp_path / "c")
    del good
    manifest = path / "manifest.json"
    if damage == "manifest":
        manifest.write_text("{not json")
    elif damage == "truncate":
        images = path / "images.npy"
        with images.open("r+b") as f:
            f.truncate(images.stat().st_size - 100)
    elif damage in ("other_key", "other_format"):
        m = json.loads(manifest.read_text())
        m["key" if damage == "other_key" else "format"] = "x" if damage == "other_key" else 999
        manifest.write_text(json.dumps(m))
    else:
        manifest.unlink()
    with pytest.warns(CacheWarning, match="not usable"):
        again = _open(toy, tmp_path / "c")
    assert again.built and again.path == path
    assert (again(2)[0] == reference).all()
    assert sorted(p.name for p in (tmp_path / "c" / "decoded").iterdir()) == [path.name]  # no leftovers


def test_failure_mid_write_leaves_nothing(toy: Path, tmp_path: Path, monkeypatch) -> None:
    calls = [0]
    real = cache_mod.load_pair

    def disk_full(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_pair", disk_full)
    with pytest.raises(DataError, match="nothing was left behind"):
        _open(toy, tmp_path / "c")
    assert list((tmp_path / "c" / "decoded").iterdir()) == []
    monkeypatch.setattr(cache_mod, "load_pair", real)
    assert _open(toy, tmp_path / "c").built


def test_not_enough_space_refused_before_writing(toy: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(DataError, match="not enough disk space"):
        _open(toy, tmp_path / "c")
    assert list((tmp_path / "c" / "decoded").iterdir()) == []


def test_concurrent_builder_keeps_the_first_store(tmp_path: Path) -> None:
    """Two processes building one store: the second install finds a whole store and uses it."""
    specs = {"a": ((3,), np.uint8)}
    first = build_store(tmp_path / "s", "k", specs, lambda arr: arr["a"].__setitem__(slice(None), 1))

    def fill(arr):
        arr["a"][:] = 2

    second = build_store(tmp_path / "s", "k", specs, fill)  # os.replace onto a non-empty folder fails
    assert list(second.arrays["a"]) == [1, 1, 1] == list(first.arrays["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_a_build_removes_what_killed_builds_of_this_machine_left(tmp_path: Path) -> None:
    """A kill -9 mid-build leaves a .tmp- store (gigabytes for a feature store): the next build deletes it
    when its process is gone, and keeps those of a live process or another machine."""
    import socket
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    host = socket.gethostname()

    def leftover(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "hidden9.npy").write_bytes(b"x" * 1000)
        return folder

    dead = leftover(f".tmp-feat-{host}-{gone.pid}-ab12cd_3")
    trash = leftover(".trash-feat-1a2b3c4d")
    alive = leftover(f".tmp-feat-{host}-{os.getpid()}-zz99yy00")
    elsewhere = leftover(f".tmp-feat-{host}x-{gone.pid}-ab12cd_3")
    specs = {"a": ((3,), np.uint8)}
    with pytest.warns(CacheWarning, match=r"removed 2 partial cache folder\(s\)"):
        build_store(tmp_path / "s", "k", specs, lambda arr: arr["a"].__setitem__(slice(None), 1))
    assert not dead.exists() and not trash.exists()
    assert alive.exists() and elsewhere.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s", alive.name, elsewhere.name])


def test_open_store_missing_is_none_without_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_store(tmp_path / "nothing", "k") is None


def test_decoded_cache_pickles_without_arrays(toy: Path, tmp_path: Path) -> None:
    import pickle

    cache = _open(toy, tmp_path / "c")
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._arrays is None
    assert (clone(0)[1] == cache(0)[1]).all()


def test_the_content_key_ignores_the_taxonomy_name_and_nothing_else(toy: Path) -> None:
    """A YCOR-style taxonomy is named after its data folder, which a copy may rename: the content key
    (the one a copied dataset is recognised by) leaves the name out; the class table still counts."""
    import dataclasses

    from offroadseg.data.cache import decoded_key

    samples, tax = _setup(toy)
    renamed = dataclasses.replace(tax, name="copied_folder")
    fewer = dataclasses.replace(tax, ignore_values=(*tax.ignore_values, 99))

    def key(t, content: bool) -> str:
        return decoded_key(samples, t, image_size=SIZE, unknown="error", full_res=False, content=content)

    assert key(renamed, True) == key(tax, True) and key(renamed, False) != key(tax, False)
    assert key(fewer, True) != key(tax, True)


def test_a_store_of_the_family_holding_more_parts_serves_and_old_stores_learn_their_family(
    tmp_path: Path,
) -> None:
    """On a key miss, a whole store of the same family that holds a superset of the parts is opened (the
    one with the fewest parts); a store opened by its key records its family (stores built before
    families existed); another family, or a part no store holds, builds."""
    from offroadseg.data.cache import Family, open_or_build_store

    specs = {"a": ((2,), np.uint8)}
    built: list[str] = []

    def filler(name: str):
        def fill(arr):
            built.append(name)
            arr["a"][:] = len(built)

        return fill

    def get(name: str, family: Family | None):
        return open_or_build_store(
            tmp_path / name, f"key-{name}", lambda: specs, filler(name), family=family and (lambda: family)
        )

    wide = get("wide", Family("f", (1, 2, 3, 4)))
    narrow = get("narrow", Family("f", (2, 3)))
    assert built == ["wide"] and narrow.path == wide.path  # served: nothing built
    assert json.loads((wide.path / "manifest.json").read_text())["family"] == {
        "key": "f",
        "parts": [1, 2, 3, 4],
    }
    mid = get("mid", Family("f", (2, 3, 5)))  # part 5: no store holds it
    assert built == ["wide", "mid"] and mid.path.name == "mid"
    assert get("x", Family("f", (3,))).path.name == "mid"  # two hold part 3: the one with fewer parts
    assert get("other", Family("g", (1,))).path.name == "other" and built[-1] == "other"
    old = get("old", None)  # no family recorded
    assert "family" not in json.loads((old.path / "manifest.json").read_text())
    assert get("y", Family("h", (7,))).path.name == "y"  # not found: "old" has no family yet
    assert get("old", Family("h", (7, 8))).path == old.path  # opened by its key: records its family
    assert get("z", Family("h", (8,))).path == old.path
    assert built == ["wide", "mid", "other", "old", "y"]

    def unused() -> Family:
        raise AssertionError("a hit on a store with its family recorded computes no family key")

    again = open_or_build_store(tmp_path / "wide", "key-wide", lambda: specs, filler("no"), family=unused)
    assert again.path == wide.path
