"""On-disk array stores and the decoded-data cache.

Caching in offroadseg has three parts, one home each: this module owns the store mechanics
(atomic build, manifest, checks, memory maps), cache keys, the folder (:func:`cache_root`, from
:mod:`offroadseg.paths`), label-resolution ids (:class:`FullLabels`) and the decoded-data cache;
:mod:`offroadseg.training.features` owns the frame stores of backbone tokens (they need the
model); :mod:`offroadseg.training.caches` decides from a config which caches a run uses.

A *store* is a folder of ``.npy`` arrays plus ``manifest.json`` (format, key, shapes,
dtypes), memory-mapped on open. It is built in a unique temporary folder beside its final
place and moved there with one ``os.replace``, so a reader (or a second process building
the same store) sees either no store or a whole one. A store whose manifest is missing,
unreadable, from another format or for another key, or whose arrays are truncated or of
the wrong shape, is refused with a :class:`CacheWarning` and rebuilt, never used.

The decoded-data cache stores what :meth:`SegmentationDataset._load` returns, decoded and
resized once: uint8 RGB images and uint8 train ids at the training size, plus the label's
full-resolution ids when validation scores at full resolution. Its key covers the file
list (paths, sizes, mtimes), the training size, the taxonomy and the unknown-value policy.

Every store's manifest also records a *content key*: the same inputs with the files by name, size and
sha256 instead of path and mtime. When the cheap key misses, the content key is computed (one read of
every file) and a store with the same one is re-keyed and moved (:func:`adopt_store`): a dataset copied
again, moved or re-provisioned keeps its stores. ``offroadseg cache`` lists and prunes what is left
(:mod:`offroadseg.data.cache_admin`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offroadseg.atomic import atomic_write_text
from offroadseg.data.datasets import Sample, load_pair, resize_image, resize_mask
from offroadseg.data.io import image_size as read_image_size
from offroadseg.errors import DataError
from offroadseg.paths import cache_dir
from offroadseg.processes import pid_alive
from offroadseg.taxonomy import Taxonomy

__all__ = [
    "CACHE_FORMAT",
    "MANIFEST",
    "CacheWarning",
    "DecodedCache",
    "Family",
    "FullLabels",
    "read_full_labels",
    "Store",
    "adopt_store",
    "build_store",
    "cache_root",
    "decoded_key",
    "file_fingerprints",
    "find_in_family",
    "folder_bytes",
    "read_manifest",
    "taxonomy_payload",
    "open_decoded_cache",
    "open_or_build_store",
    "open_store",
    "check_store",
    "remove_tree",
    "sweep_leftovers",
]

# Bump when the layout or the meaning of a stored array changes: older stores are rebuilt.
CACHE_FORMAT = 1
MANIFEST = "manifest.json"

Fill = Callable[[dict[str, np.ndarray]], dict[str, Any] | None]


class CacheWarning(UserWarning):
    """A cache was refused (corrupt, stale, other settings) or turned off; says why."""


@dataclass
class Store:
    """An opened store: memory-mapped read-only arrays and what its manifest says."""

    path: Path
    key: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    built: bool = False  # built by this call (False: reused)
    build_s: float = 0.0  # seconds this call spent building it

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())


@dataclass(frozen=True)
class Family:
    """Stores that differ only in which parts they hold (a frame store's hidden states): ``key`` is their
    common key without the parts; ``parts`` what this caller needs. A store of the family that holds a
    superset of ``parts`` serves it (a study's shared store serves ``train``, ``cv`` and ``bench`` runs of
    the configs it covers)."""

    key: str
    parts: tuple[int, ...]

    def manifest_entry(self) -> dict:
        return {"key": self.key, "parts": sorted(int(p) for p in self.parts)}


def cache_root(directory: str | None) -> Path:
    """``data.cache.dir`` when set, else ``<offroadseg cache dir>`` (``$OFFROADSEG_CACHE_DIR`` wins)."""
    if directory:
        return Path(directory).expanduser()
    return cache_dir()


def hash_key(payload: Any) -> str:
    """sha256 of a JSON-serialisable payload (the cache format is always part of it)."""
    text = json.dumps({"format": CACHE_FORMAT, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def taxonomy_payload(taxonomy: dict, *, content: bool = False) -> dict:
    """A taxonomy as a key holds it; a content key leaves out its name (by default the data folder's name,
    which a copy may change; the stored ids do not depend on it)."""
    return {k: v for k, v in taxonomy.items() if not (content and k == "name")}


def file_fingerprints(samples: Iterable[Sample], *, content: bool = False) -> list[list]:
    """``[path, size, mtime_ns]`` of every image and label file, sorted by path: cheap, the key a store
    is found by. With ``content``: ``[name, size, sha256]`` in the samples' order, without paths or
    mtimes, the key a store is recognised by after its dataset was copied, moved or touched."""
    rows = []
    for s in samples:
        for role, p in (("image", s.image), ("label", s.label)):
            if p is None:
                continue
            if content:
                data = Path(p).read_bytes()
                rows.append([f"{s.name}:{role}", len(data), hashlib.sha256(data).hexdigest()])
            else:
                st = Path(p).stat()
                rows.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return rows if content else sorted(rows)


# ---- stores ------------------------------------------------------------------------------------
def read_manifest(path: Path) -> dict | str:
    """A store folder's manifest, or why it has no usable one (missing, unreadable, another format)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest: an interrupted or foreign folder"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        return f"cache format {manifest.get('format') if isinstance(manifest, dict) else '?'}, expected {CACHE_FORMAT}"
    return manifest


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (a store or a leftover of one)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def open_store(path: str | Path, key: str) -> Store | None:
    """Open the store at ``path`` if it is whole and was built for ``key``.

    Returns:
        The store, or None when there is none. A store that exists but is unusable
        (corrupt, other format, other key, truncated array) also gives None, with a
        :class:`CacheWarning` that says why.
    """
    path = Path(path)
    if not path.exists():
        return None
    reason = check_store(path, key)
    if isinstance(reason, Store):
        _touch(path / MANIFEST)
        return reason
    warnings.warn(f"cache {path} is not usable ({reason}); rebuilding it", CacheWarning, stacklevel=2)
    return None


def _touch(file: Path) -> None:
    """Mark a store as used now (its manifest's mtime), for ``offroadseg cache``'s least-recently-used
    order; a read-only shared cache is used as it is."""
    with contextlib.suppress(OSError):
        os.utime(file)


def check_store(path: Path, key: str) -> Store | str:
    manifest = read_manifest(path)
    if isinstance(manifest, str):
        return manifest
    if manifest.get("key") != key:
        return "built for other files or settings (key mismatch)"
    arrays = {}
    for name, spec in (manifest.get("arrays") or {}).items():
        file = path / f"{name}.npy"
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # missing, truncated (mmap length) or bad header
            return f"array {file.name} unreadable: {exc}"
        if list(arr.shape) != list(spec["shape"]) or arr.dtype.str != spec["dtype"]:
            return (
                f"array {file.name} is {arr.dtype.str}{list(arr.shape)}, manifest says "
                f"{spec['dtype']}{spec['shape']}"
            )
        expected = arr.offset + arr.nbytes
        if file.stat().st_size != expected:
            return f"array {file.name} has {file.stat().st_size} bytes, expected {expected}"
        arrays[name] = arr
    return Store(path=path, key=key, arrays=arrays, meta=manifest.get("meta") or {})


def remove_tree(path: Path) -> None:
    """Move a folder out of the way atomically, then delete it (a reader never sees half of it)."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def sweep_leftovers(folder: Path) -> int:
    """Delete what stopped builds left in the cache ``folder``: a ``.tmp-`` store whose builder, a process
    of this machine (its name holds the host and the pid), is gone, and ``.trash-`` folders a removal did
    not finish. A kill -9 mid-build otherwise leaves gigabytes behind for good. Returns the bytes freed
    (a :class:`CacheWarning` says how many)."""
    host, me = socket.gethostname(), os.getpid()
    leftovers = []
    for entry in folder.glob(".tmp-*"):
        head, _, _suffix = entry.name.rpartition("-")  # .tmp-{name}-{host}-{pid}-{mkdtemp suffix}
        head, _, pid = head.rpartition("-")
        if pid.isdigit() and head.endswith(f"-{host}") and int(pid) != me and not pid_alive(int(pid)):
            leftovers.append(entry)
    leftovers += list(folder.glob(".trash-*"))
    freed = 0
    for entry in leftovers:
        freed += folder_bytes(entry)
        shutil.rmtree(entry, ignore_errors=True)
    if leftovers:
        warnings.warn(
            f"removed {len(leftovers)} partial cache folder(s) that stopped runs left in {folder} "
            f"({freed / 2**30:.2f} GiB)",
            CacheWarning,
            stacklevel=2,
        )
    return freed


def _preallocate(file: Path) -> None:
    """Reserve the blocks of a memory-mapped file now, so a full disk raises ENOSPC here
    instead of killing the process with SIGBUS when a page is written later."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(file, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystem cannot: writes decide
                    return
                raise
    finally:
        os.close(fd)


def build_store(
    path: str | Path,
    key: str,
    specs: dict[str, tuple[tuple[int, ...], Any]],
    fill: Fill,
    *,
    content_key: str | None = None,
    family: dict | None = None,
) -> Store:
    """Build a store atomically and return it opened.

    Args:
        path: the store's final folder.
        key: what the store was built for (checked on every open).
        specs: ``name -> (shape, dtype)`` of each array.
        fill: writes the arrays (given as writable memory maps); returns extra manifest metadata.
        content_key: the same inputs keyed by the files' content (recorded: see :func:`adopt_store`).
        family: the store's :class:`Family` entry (recorded: see :func:`find_in_family`).

    Raises:
        DataError: the disk is full or not writable (nothing is left behind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(path.parent)  # before the space check: what they held counts as free
    need = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in specs.values())
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise DataError(
            f"not enough disk space for the cache {path}: needs {need / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free; fix: remove stores you no longer use (`offroadseg cache list`, "
            f"`offroadseg cache prune --max-gb N`), set data.cache.dir=<a folder on a larger disk> "
            f"or turn the cache off (data.cache.decoded=false data.cache.features=false)"
        )
    tmp = Path(
        tempfile.mkdtemp(prefix=f".tmp-{path.name}-{socket.gethostname()}-{os.getpid()}-", dir=path.parent)
    )
    start = time.perf_counter()
    try:
        arrays = {}
        for name, (shape, dtype) in specs.items():
            file = tmp / f"{name}.npy"
            arrays[name] = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=tuple(shape))
            _preallocate(file)
        meta = fill(arrays) or {}
        for arr in arrays.values():
            arr.flush()
        manifest = {
            "format": CACHE_FORMAT,
            "key": key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "arrays": {n: {"shape": list(a.shape), "dtype": a.dtype.str} for n, a in arrays.items()},
            "meta": meta,
            **({"content_key": content_key} if content_key else {}),
            **({"family": family} if family else {}),
        }
        del arrays
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))  # written last: marks a whole store
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the cache may be shared
        _install(tmp, path, key)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise DataError(
                f"could not write the cache {path} ({exc}); nothing was left behind; fix: free space, "
                f"set data.cache.dir=<another folder> or turn the cache off"
            ) from exc
        raise
    store = check_store(path, key)
    if not isinstance(store, Store):  # replaced meanwhile by something unusable: a bug or a foreign writer
        raise DataError(f"cache {path} was changed while it was being opened ({store}); run again")
    store.built = True
    store.build_s = time.perf_counter() - start
    return store


def _install(tmp: Path, path: Path, key: str) -> None:
    if path.exists() and not isinstance(check_store(path, key), Store):
        remove_tree(path)  # stale or corrupt: out of the way (already warned about by open_store)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        # Another process installed the same store first (a directory is not replaced when not empty).
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not isinstance(check_store(path, key), Store):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def adopt_store(path: Path, key: str, content_key: str) -> Store | None:
    """A whole store beside ``path`` built from files of the same content (``content_key``), re-keyed to
    ``key`` and moved to ``path``; None when there is none.

    Keys hold the files' paths and mtimes (cheap to check on every run), so a dataset copied again (a
    container, ``cp`` without ``-p``, a re-provisioned disk) or moved would otherwise rebuild every store
    (minutes to an hour on a CPU, gigabytes each) and leave the old one behind. Only a store whose
    manifest recorded the same content key is taken: same bytes in every image and label, same settings.
    """
    folder = path.parent
    if not folder.is_dir():
        return None
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry == path or not entry.is_dir():
            continue
        manifest = read_manifest(entry)
        if isinstance(manifest, str) or manifest.get("content_key") != content_key:
            continue
        if not isinstance(check_store(entry, manifest.get("key")), Store):
            continue
        try:
            manifest["key"] = key
            atomic_write_text(entry / MANIFEST, json.dumps(manifest, indent=1))
            if path.exists():
                remove_tree(path)  # stale or corrupt (open_store refused it)
            os.replace(entry, path)
        except OSError:  # another process adopted it first, or the cache is read-only
            return open_store(path, key)
        store = check_store(path, key)
        return store if isinstance(store, Store) else None
    return None


def find_in_family(folder: Path, family: Family) -> Store | None:
    """A whole store in ``folder`` of ``family`` that holds every part it needs (the one with the fewest
    parts when several do), opened under its own key and path; None when there is none."""
    if not folder.is_dir():
        return None
    found: list[tuple[int, str, Store]] = []
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        manifest = read_manifest(entry)
        entry_family = manifest.get("family") if isinstance(manifest, dict) else None
        if not isinstance(entry_family, dict) or entry_family.get("key") != family.key:
            continue
        held = {int(p) for p in entry_family.get("parts") or []}
        if not set(family.parts) <= held:
            continue
        store = check_store(entry, manifest.get("key"))
        if isinstance(store, Store):
            found.append((len(held), entry.name, store))
    if not found:
        return None
    store = min(found, key=lambda f: f[:2])[2]
    _touch(store.path / MANIFEST)
    return store


def _record_family(store: Store, entry: Callable[[], dict], *, replace: bool) -> None:
    """Write the family ``entry()`` into the manifest of a store opened by its key, so that its family
    finds it next time: one built before families (``entry`` is computed only then), or every time with
    ``replace`` (a store re-keyed by :func:`adopt_store` carries its old paths' family). A read-only cache
    is used as it is."""
    manifest = read_manifest(store.path)
    if isinstance(manifest, str) or ("family" in manifest and not replace):
        return
    manifest["family"] = entry()
    with contextlib.suppress(OSError):
        atomic_write_text(store.path / MANIFEST, json.dumps(manifest, indent=1))


def open_or_build_store(
    path: str | Path,
    key: str,
    specs: Callable[[], dict[str, tuple[tuple[int, ...], Any]]],
    fill: Fill,
    content_key: Callable[[], str] | None = None,
    family: Callable[[], Family] | None = None,
) -> Store:
    """The store at ``path`` for ``key``: reused when whole and matching; else a store of the same
    ``family`` holding a superset of its parts; else one built from files of the same content, re-keyed
    (``content_key``, computed only then: it reads every file); else built (its family recorded).
    ``family`` is computed only on a miss, or once for a store that has no family recorded."""
    path = Path(path)
    store = open_store(path, key)
    if store is not None:
        if family is not None:
            _record_family(store, lambda: family().manifest_entry(), replace=False)
        return store
    fam = family() if family is not None else None
    if fam is not None:
        served = find_in_family(path.parent, fam)
        if served is not None:
            return served
    ckey = content_key() if content_key is not None else None
    if ckey is not None:
        adopted = adopt_store(path, key, ckey)
        if adopted is not None:
            if fam is not None:
                _record_family(adopted, fam.manifest_entry, replace=True)
            return adopted
    return build_store(
        path, key, specs(), fill, content_key=ckey, family=fam.manifest_entry() if fam else None
    )


# ---- label-resolution ids ---------------------------------------------------------------------
class FullLabels:
    """The label-resolution ids of ``n`` frames of different sizes, in one flat uint8 array.

    Arrays: ``full_flat [sum of H*W]``, ``full_offsets [n + 1]`` and ``full_shapes [n, 2]``. Used
    by every store that keeps full-resolution labels (decoded data, feature frames).
    """

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self.shapes = [read_image_size(s.label) for s in samples]
        self.offsets = np.zeros(len(samples) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([h * w for h, w in self.shapes])

    def specs(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        n = len(self.samples)
        return {
            "full_flat": ((int(self.offsets[-1]),), np.uint8),
            "full_offsets": ((n + 1,), np.int64),
            "full_shapes": ((n, 2), np.int32),
        }

    def write_index(self, arrays: dict[str, np.ndarray]) -> None:
        arrays["full_offsets"][:] = self.offsets
        arrays["full_shapes"][:] = np.array(self.shapes, dtype=np.int32).reshape(len(self.samples), 2)

    def put(self, arrays: dict[str, np.ndarray], index: int, full: np.ndarray | None) -> None:
        """Write frame ``index``'s ids; refuses a mask that changed size since the specs were made."""
        if full is None or tuple(full.shape) != self.shapes[index]:
            raise DataError(
                f"mask {self.samples[index].label} has no full-resolution ids or changed size while the "
                f"cache was built; run again"
            )
        arrays["full_flat"][self.offsets[index] : self.offsets[index + 1]] = full.reshape(-1)


def read_full_labels(arrays: dict[str, np.ndarray], index: int) -> np.ndarray | None:
    """Frame ``index``'s label-resolution ids ``[H0, W0]`` from a store's arrays (None: not stored)."""
    if "full_flat" not in arrays:
        return None
    start, stop = (int(v) for v in arrays["full_offsets"][index : index + 2])
    h, w = (int(v) for v in arrays["full_shapes"][index])
    return np.array(arrays["full_flat"][start:stop]).reshape(h, w)


# ---- decoded-data cache ------------------------------------------------------------------------
def decoded_key(
    samples: list[Sample],
    taxonomy: Taxonomy,
    *,
    image_size: tuple[int, int],
    unknown: str,
    full_res: bool,
    content: bool = False,
) -> str:
    """What a decoded store depends on: files, training size, taxonomy, unknown policy, full-res masks
    (``content``: the files by content, see :func:`file_fingerprints`)."""
    return hash_key(
        {
            "kind": "decoded",
            "files": file_fingerprints(samples, content=content),
            "order": [s.name for s in samples],
            "image_size": [int(image_size[0]), int(image_size[1])],
            "taxonomy": taxonomy_payload(taxonomy.to_dict(), content=content),
            "unknown": unknown,
            "full_res": bool(full_res),
        }
    )


class MappedStore:
    """Lazy access to a store's memory maps, reopened (and re-checked) in each worker process.

    Subclasses set ``path``, ``key``, ``_arrays`` and ``kind`` (named in errors).
    """

    kind = "cache"
    path: Path
    key: str
    _arrays: dict[str, np.ndarray] | None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None  # memory maps do not travel to worker processes
        return state

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            store = check_store(self.path, self.key)
            if not isinstance(store, Store):
                raise DataError(f"{self.kind} {self.path} changed during the run ({store}); run again")
            self._arrays = store.arrays
        return self._arrays


class DecodedCache(MappedStore):
    """A :data:`~offroadseg.data.datasets.PairLoader` backed by a memory-mapped store.

    ``cache(i)`` returns ``(image uint8 [H, W, 3], ids uint8 [H, W], full ids or None)``,
    exactly what the dataset's own loader returns. Picklable for DataLoader workers: the
    memory maps are reopened in each process.
    """

    kind = "decoded cache"

    def __init__(self, store: Store) -> None:
        self.path = store.path
        self.key = store.key
        self.build_s = store.build_s
        self.built = store.built
        self.nbytes = store.nbytes
        self._arrays: dict[str, np.ndarray] | None = store.arrays

    def __len__(self) -> int:
        return int(self.arrays["images"].shape[0])

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        a = self.arrays
        image = np.array(a["images"][index])
        ids = np.array(a["masks"][index])
        return image, ids, read_full_labels(a, index)


def _decode_one(sample: Sample, taxonomy: Taxonomy, size: tuple[int, int], unknown: str):
    image, ids = load_pair(sample, taxonomy, unknown=unknown)
    if ids is None:
        raise DataError(f"image {sample.image} has no mask; fix: add it or remove the image")
    return resize_image(image, size), resize_mask(ids, size), ids


class _DecodeJobs:
    """Decode samples in DataLoader workers (picklable)."""

    def __init__(self, samples, taxonomy, size, unknown):
        self.samples, self.taxonomy, self.size, self.unknown = samples, taxonomy, size, unknown

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return i, *_decode_one(self.samples[i], self.taxonomy, self.size, self.unknown)


def open_decoded_cache(
    samples: list[Sample],
    taxonomy: Taxonomy,
    *,
    image_size: tuple[int, int],
    unknown: str = "error",
    full_res: bool = False,
    root: str | Path | None = None,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> DecodedCache:
    """The decoded store of ``samples``: reused when it matches, else built (decoded once).

    Args:
        root: cache root folder (default: :func:`cache_root`); the store lives in ``<root>/decoded/``.
        workers: processes that decode while the main process writes.
        progress: called with ``(done, total)`` while building.
    """
    size = (int(image_size[0]), int(image_size[1]))
    keyed = functools.partial(
        decoded_key, samples, taxonomy, image_size=size, unknown=unknown, full_res=full_res
    )
    key = keyed()
    path = Path(root) if root is not None else cache_root(None)
    path = path / "decoded" / key[:32]
    n = len(samples)
    full: list[FullLabels] = []  # made when building: reading every label's size costs a pass

    def specs():
        out = {"images": ((n, *size, 3), np.uint8), "masks": ((n, *size), np.uint8)}
        if full_res:
            full[:] = [FullLabels(samples)]
            out.update(full[0].specs())
        return out

    def fill(arrays: dict[str, np.ndarray]) -> dict:
        from torch.utils.data import DataLoader  # noqa: PLC0415

        if full_res:
            full[0].write_index(arrays)
        loader = DataLoader(
            _DecodeJobs(samples, taxonomy, size, unknown),
            batch_size=None,
            num_workers=workers,
            collate_fn=lambda x: x,
        )
        for done, (i, image, ids, full_ids) in enumerate(loader, start=1):
            arrays["images"][i] = image
            arrays["masks"][i] = ids
            if full_res:
                full[0].put(arrays, i, full_ids)
            if progress is not None:
                progress(done, n)
        return {"samples": n, "image_size": list(size)}

    return DecodedCache(open_or_build_store(path, key, specs, fill, lambda: keyed(content=True)))
