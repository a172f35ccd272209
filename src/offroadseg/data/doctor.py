"""Dataset doctor: read every image and mask of a dataset once and report what would hurt training.

Unlike :func:`~offroadseg.data.stats.dataset_stats`, which stops at the first bad file, the doctor
keeps going and lists every problem, each a :class:`Finding`:

- errors (the dataset is not fit to train on): a missing train/val split, images without masks,
  masks without images, names in the split file without an image, unreadable or truncated files,
  masks the taxonomy cannot read (an 8-bit mask for 16-bit values, colour vs value), a mask whose
  size is not its image's, label values outside the taxonomy (with pixel counts), the same image
  (identical decoded pixels) in two splits;
- warnings (worth a look): near-duplicate images across splits (perceptual hash; neighbouring
  video frames, as in YCOR, inflate validation scores), a class without pixels in a split, the
  same image twice in one split, masks of mixed bit depth, images in no split, no split file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from offroadseg.config import DataConfig
from offroadseg.data.datasets import DUALITY_LABELS, Sample, list_samples, split_assignments, taxonomy_for
from offroadseg.data.io import read_image, read_label
from offroadseg.errors import DataError
from offroadseg.taxonomy import Taxonomy

__all__ = ["DEFAULT_NEAR_DISTANCE", "DoctorReport", "Finding", "NearDuplicate", "SplitSummary", "examine"]

ERROR, WARNING = "error", "warning"
# Hamming distance (of 64 bits) up to which two perceptual hashes count as the same scene: 0-4 is a
# re-encoded or slightly cropped copy, neighbouring video frames at walking speed land around 2-10.
DEFAULT_NEAR_DISTANCE = 6
# Perceptual hashes are computed on a copy shrunk to this side with area averaging: imagehash's own
# Lanczos resize of a full frame costs more than decoding it, and the hash only sees 32x32 anyway.
_PHASH_INPUT = 128
NO_SPLIT = "all"  # the one split of a generic layout without a split file


@dataclass
class Finding:
    """One problem: a short check id, one line for a person, and every file concerned."""

    level: str  # error | warning
    check: str  # e.g. missing_mask, unreadable, unknown_values, exact_duplicate, near_duplicate
    message: str
    files: list[str] = field(default_factory=list)  # paths relative to the data root


@dataclass
class SplitSummary:
    """What one split holds."""

    split: str
    images: int = 0
    masks: int = 0
    image_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> images
    image_modes: dict[str, int] = field(default_factory=dict)  # Pillow mode (RGB, L, RGBA, ...) -> images
    mask_depths: dict[str, int] = field(default_factory=dict)  # "8-bit", "16-bit", "8-bit RGB" -> masks
    class_pixels: dict[str, int] = field(default_factory=dict)  # class name -> labelled pixels
    ignored_pixels: int = 0


@dataclass(frozen=True)
class NearDuplicate:
    """Two images in different splits whose perceptual hashes differ in ``distance`` of 64 bits."""

    a: str  # "split/name"
    b: str
    distance: int


@dataclass
class DoctorReport:
    """Everything :func:`examine` found."""

    root: str
    layout: str
    taxonomy: str
    near_distance: int
    splits: list[SplitSummary]
    findings: list[Finding]
    near_duplicates: list[NearDuplicate]
    files_read: int
    seconds: float

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING]

    def exit_code(self, *, strict: bool = False) -> int:
        """1 when there are errors (or, with ``strict``, warnings), else 0."""
        return 1 if self.errors or (strict and self.warnings) else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary, every finding and every near-duplicate pair."""
        return {
            **dataclasses.asdict(self),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
        }


@dataclass
class _Entry:
    split: str
    name: str
    image: Path | None
    mask: Path | None


@dataclass
class _Read:
    """What reading one entry gave (None where the file was absent or unreadable)."""

    entry: _Entry
    problems: list[Finding]
    size: tuple[int, int] | None = None  # (H, W) of the image
    mode: str | None = None
    digest: str | None = None
    phash: int | None = None
    depth: str | None = None
    class_pixels: np.ndarray | None = None
    ignored: int = 0
    unknown: dict[str, int] = field(default_factory=dict)


def examine(
    cfg: DataConfig,
    *,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> DoctorReport:
    """Read every image and mask of the dataset ``cfg`` describes and check them.

    Args:
        cfg: the data section (root, layout, taxonomy, split file, ignore values).
        near_distance: the largest perceptual-hash distance (of 64 bits) that counts as a
            near-duplicate; negative turns the near-duplicate check off.
        workers: threads reading files (decoding releases the GIL).
        progress: ``(done, total)`` callback over the files read.

    Raises:
        DataError: ``cfg.root`` is not a dataset in ``cfg.layout`` (no split found at all), or the
            split file cannot be read.
        ConfigError: the taxonomy cannot be loaded.
    """
    start = time.perf_counter()
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; fix: give the dataset's root folder")
    taxonomy = taxonomy_for(cfg)
    entries, findings, split_names = _plan(cfg)
    total = sum((e.image is not None) + (e.mask is not None) for e in entries)
    done = 0
    reads: list[_Read] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for read in pool.map(lambda e: _read_entry(e, taxonomy, root), entries):
            reads.append(read)
            done += (read.entry.image is not None) + (read.entry.mask is not None)
            if progress is not None:
                progress(done, total)
    splits = [_summarise(name, [r for r in reads if r.entry.split == name], taxonomy) for name in split_names]
    for read in reads:
        findings += read.problems
    findings += _label_findings(reads, splits, taxonomy, root, ignore_unknown=cfg.unknown_values == "ignore")
    findings += _duplicate_findings(reads, root)
    near: list[NearDuplicate] = []
    if near_distance >= 0 and len(split_names) > 1:
        near = _near_duplicates(reads, split_names, near_distance)
        findings += _near_findings(near, split_names, near_distance)
    findings.sort(key=lambda f: f.level != ERROR)  # errors first, each group in discovery order
    return DoctorReport(
        root=str(root),
        layout=cfg.layout,
        taxonomy=taxonomy.name,
        near_distance=near_distance,
        splits=splits,
        findings=findings,
        near_duplicates=near,
        files_read=total,
        seconds=time.perf_counter() - start,
    )


# ---- what the dataset holds ----------------------------------------------------------------------
def _plan(cfg: DataConfig) -> tuple[list[_Entry], list[Finding], list[str]]:
    """Every (split, image, mask) the layout describes, the layout's own problems, the split names."""
    if cfg.layout == "generic":
        return _plan_generic(cfg)
    return _plan_duality(cfg)


def _plan_duality(cfg: DataConfig) -> tuple[list[_Entry], list[Finding], list[str]]:
    root = Path(cfg.root)
    entries: list[_Entry] = []
    findings: list[Finding] = []
    names: list[str] = []
    missing: dict[str, str] = {}
    for split in _unique([cfg.train_split, cfg.val_split, cfg.test_split]):
        try:
            samples = list_samples(cfg, split, require_labels=False)
        except DataError as exc:
            missing[split] = str(exc)
            continue
        names.append(split)
        label_dir = samples[0].image.parent.parent / DUALITY_LABELS
        entries += [_Entry(split, s.name, s.image, s.label) for s in samples]
        if not label_dir.is_dir():
            level = WARNING if split == cfg.test_split else ERROR
            findings.append(
                Finding(level, "no_masks", f"split {split!r} has no mask folder {_rel(label_dir, root)}")
            )
            continue  # one finding, not one per image
        findings += _missing_masks(split, samples, root)
        stems = {s.name for s in samples}
        findings += _orphan_masks(label_dir, ".png", stems, root, where=f"split {split!r}")
    if not names:
        first = _without_fix(next(iter(missing.values())))
        raise DataError(
            f"{root} is not a dataset in the duality layout ({first}); fix: point at the folder that "
            f"holds train/ and val/, or give --config (e.g. configs/ycor.yaml) or --layout generic"
        )
    findings += _missing_splits(cfg, missing)
    return entries, findings, names


def _plan_generic(cfg: DataConfig) -> tuple[list[_Entry], list[Finding], list[str]]:
    root = Path(cfg.root)
    try:  # without the split file: every image in the image folder
        every = list_samples(dataclasses.replace(cfg, split_file=None), cfg.train_split, require_labels=False)
    except DataError as exc:
        raise DataError(
            f"{root} is not a dataset in the generic layout ({_without_fix(str(exc))}); fix: set the image and label "
            f"folders (--image-dir/--label-dir or data.image_dir/label_dir) or use --layout duality"
        ) from None
    findings: list[Finding] = []
    assigned = split_assignments(cfg)
    stems = {s.name for s in every}
    if assigned is None:
        findings.append(
            Finding(
                WARNING,
                "no_split_file",
                "no split file: every image is in every split, so validation scores training images; "
                "fix: set data.split_file (lines '<name><tab><split>')",
            )
        )
        by_split = {NO_SPLIT: every}
    else:
        by_split = {}
        for s in every:
            by_split.setdefault(assigned.get(s.name, ""), []).append(s)
        loose = by_split.pop("", [])
        if loose:
            findings.append(
                Finding(
                    WARNING,
                    "no_split",
                    f"{len(loose)} image(s) are in no split (not in {cfg.split_file}), e.g. "
                    f"{_rel(loose[0].image, root)}; they are never used",
                    [_rel(s.image, root) for s in loose],
                )
            )
        listed = sorted(n for n in assigned if n not in stems)
        if listed:
            findings.append(
                Finding(
                    ERROR,
                    "missing_image",
                    f"{cfg.split_file} lists {len(listed)} name(s) without an image in {cfg.image_dir}, "
                    f"e.g. {listed[0]!r}; fix: add the images or remove those lines",
                    listed,
                )
            )
        missing = {
            s: f"split {s!r} has no images in {cfg.split_file}" for s in _required(cfg) if s not in by_split
        }
        findings += _missing_splits(cfg, missing)
    order = _unique([cfg.train_split, cfg.val_split, cfg.test_split, *sorted(by_split)])
    names = [s for s in order if s in by_split]
    entries = [_Entry(split, s.name, s.image, s.label) for split in names for s in by_split[split]]
    for split in names:
        findings += _missing_masks(split, by_split[split], root)
    findings += _orphan_masks(root / cfg.label_dir, cfg.label_suffix, stems, root, where=cfg.label_dir)
    return entries, findings, names


def _missing_masks(split: str, samples: list[Sample], root: Path) -> list[Finding]:
    lost = [s for s in samples if s.label is None]
    if not lost:
        return []
    return [
        Finding(
            ERROR,
            "missing_mask",
            f"{len(lost)} image(s) in {split!r} have no mask, e.g. {_rel(lost[0].image, root)}; "
            f"fix: add the masks or remove those images",
            [_rel(s.image, root) for s in lost],
        )
    ]


def _orphan_masks(label_dir: Path, suffix: str, stems: set[str], root: Path, *, where: str) -> list[Finding]:
    if not label_dir.is_dir():
        return []
    orphans = sorted(
        p
        for p in label_dir.iterdir()
        if p.is_file() and p.name.endswith(suffix) and p.name[: -len(suffix)] not in stems
    )
    if not orphans:
        return []
    return [
        Finding(
            ERROR,
            "missing_image",
            f"{len(orphans)} mask(s) in {where} have no image, e.g. {_rel(orphans[0], root)}; "
            f"fix: add the images or remove those masks",
            [_rel(p, root) for p in orphans],
        )
    ]


def _required(cfg: DataConfig) -> list[str]:
    return _unique([cfg.train_split, cfg.val_split])


def _missing_splits(cfg: DataConfig, missing: dict[str, str]) -> list[Finding]:
    """Train and val must exist; the test split is optional."""
    return [Finding(ERROR, "missing_split", f"{missing[s]}") for s in _required(cfg) if s in missing]


# ---- reading -------------------------------------------------------------------------------------
def _read_entry(entry: _Entry, taxonomy: Taxonomy, root: Path) -> _Read:
    out = _Read(entry, [])
    if entry.image is not None:
        try:
            rgb = read_image(entry.image)
            with Image.open(entry.image) as img:
                out.mode = img.mode  # from the header: read_image converts to RGB
        except DataError as exc:
            out.problems.append(Finding(ERROR, "unreadable", str(exc), [_rel(entry.image, root)]))
        else:
            out.size = rgb.shape[:2]
            out.digest = hashlib.sha1(f"{rgb.shape}".encode() + rgb.tobytes()).hexdigest()
            out.phash = _phash(rgb)
    if entry.mask is not None:
        try:
            raw = read_label(entry.mask, taxonomy)
            out.class_pixels, out.ignored, out.unknown = taxonomy.pixel_counts(raw, source=str(entry.mask))
        except DataError as exc:
            out.problems.append(Finding(ERROR, "unreadable", str(exc), [_rel(entry.mask, root)]))
        else:
            out.depth = f"{raw.dtype.itemsize * 8}-bit" + (" RGB" if raw.ndim == 3 else "")
            if out.size is not None and raw.shape[:2] != out.size:
                out.problems.append(
                    Finding(
                        ERROR,
                        "size_mismatch",
                        f"mask {_rel(entry.mask, root)} is {raw.shape[1]}x{raw.shape[0]} but its image is "
                        f"{out.size[1]}x{out.size[0]}; fix: re-export the mask at the image's size",
                        [_rel(entry.mask, root), _rel(entry.image, root)],
                    )
                )
    return out


def _phash(rgb: np.ndarray) -> int:
    """64-bit perceptual hash (imagehash's DCT pHash) as an int."""
    import imagehash  # noqa: PLC0415 (scipy behind it loads only for the doctor)

    small = cv2.resize(rgb, (_PHASH_INPUT, _PHASH_INPUT), interpolation=cv2.INTER_AREA)
    bits = imagehash.phash(Image.fromarray(small)).hash.ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


# ---- summaries and findings ----------------------------------------------------------------------
def _summarise(split: str, reads: list[_Read], taxonomy: Taxonomy) -> SplitSummary:
    pixels = np.zeros(taxonomy.num_classes, dtype=np.int64)
    ignored = 0
    for r in reads:
        if r.class_pixels is not None:
            pixels += r.class_pixels
            ignored += r.ignored
    return SplitSummary(
        split=split,
        images=sum(r.entry.image is not None for r in reads),
        masks=sum(r.entry.mask is not None for r in reads),
        image_sizes=_tally(f"{r.size[1]}x{r.size[0]}" for r in reads if r.size is not None),
        image_modes=_tally(r.mode for r in reads if r.mode is not None),
        mask_depths=_tally(r.depth for r in reads if r.depth is not None),
        class_pixels=dict(zip(taxonomy.names, pixels.tolist(), strict=True)),
        ignored_pixels=ignored,
    )


def _label_findings(
    reads: list[_Read], splits: list[SplitSummary], taxonomy: Taxonomy, root: Path, *, ignore_unknown: bool
) -> list[Finding]:
    out: list[Finding] = []
    unknown: dict[str, list[int]] = {}  # value -> [pixels, masks]
    files = []
    for r in reads:
        if r.unknown:
            files.append(_rel(r.entry.mask, root))
            for value, n in r.unknown.items():
                unknown.setdefault(value, [0, 0])
                unknown[value][0] += n
                unknown[value][1] += 1
    if unknown:
        listed = ", ".join(
            f"{v} ({px} px in {m} mask(s))"
            for v, (px, m) in sorted(unknown.items(), key=lambda kv: -kv[1][0])
        )
        if ignore_unknown:  # the user chose to train with them ignored: worth knowing, not fatal
            level, fix = WARNING, "they are ignored (data.unknown_values=ignore)"
        else:
            level = ERROR
            fix = (
                "fix: use the right taxonomy, add these values to a taxonomy file, or set "
                "data.unknown_values=ignore"
            )
        out.append(
            Finding(
                level,
                "unknown_values",
                f"label values not in taxonomy {taxonomy.name!r}: {listed}, e.g. in {files[0]}; {fix}",
                files,
            )
        )
    for s in splits:
        if not s.masks:
            continue
        absent = [name for name, px in s.class_pixels.items() if px == 0]
        if absent:
            out.append(
                Finding(
                    WARNING,
                    "missing_class",
                    f"split {s.split!r}: {len(absent)} class(es) without a single pixel: {', '.join(absent)}",
                )
            )
    depths = {d for s in splits for d in s.mask_depths}
    if len(depths) > 1:
        out.append(
            Finding(
                WARNING,
                "mixed_depth",
                f"masks of mixed bit depth ({', '.join(sorted(depths))}): usually two exports mixed; check "
                f"that each holds the values the taxonomy expects",
            )
        )
    return out


def _duplicate_findings(reads: list[_Read], root: Path) -> list[Finding]:
    groups: dict[str, list[_Read]] = {}
    for r in reads:
        if r.digest is not None:
            groups.setdefault(r.digest, []).append(r)
    across, within = [], []
    for group in groups.values():
        if len(group) < 2:
            continue
        (across if len({r.entry.split for r in group}) > 1 else within).append(group)
    out = []
    for level, check, kind, found in (
        (ERROR, "exact_duplicate", "across splits (leakage: validation scores training images)", across),
        (WARNING, "duplicate_in_split", "within a split (counted twice)", within),
    ):
        if found:
            example = " = ".join(f"{r.entry.split}/{r.entry.name}" for r in found[0])
            out.append(
                Finding(
                    level,
                    check,
                    f"{len(found)} image(s) appear more than once {kind}, identical pixels, e.g. {example}; "
                    f"fix: keep one copy",
                    [_rel(r.entry.image, root) for g in found for r in g],
                )
            )
    return out


def _near_duplicates(reads: list[_Read], split_names: list[str], max_distance: int) -> list[NearDuplicate]:
    """For every image of a later split, its nearest image in each earlier split, when within
    ``max_distance`` bits and not an exact copy (those are already errors)."""
    by_split = {s: [r for r in reads if r.entry.split == s and r.phash is not None] for s in split_names}
    out: list[NearDuplicate] = []
    for j, later in enumerate(split_names):
        for earlier in split_names[:j]:
            a, b = by_split[earlier], by_split[later]
            if not a or not b:
                continue
            dist = _hamming(
                np.array([r.phash for r in b], dtype=np.uint64),
                np.array([r.phash for r in a], dtype=np.uint64),
            )
            nearest = dist.argmin(axis=1)
            for bi, ai in enumerate(nearest.tolist()):
                d = int(dist[bi, ai])
                if d <= max_distance and a[ai].digest != b[bi].digest:
                    out.append(
                        NearDuplicate(f"{later}/{b[bi].entry.name}", f"{earlier}/{a[ai].entry.name}", d)
                    )
    return sorted(out, key=lambda n: (n.distance, n.a))


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _hamming(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """uint64 ``[N]`` x ``[M]`` -> uint8 ``[N, M]`` differing bits, in row chunks of ~4 M pairs."""
    out = np.empty((len(x), len(y)), dtype=np.uint8)
    rows = max(1, (1 << 22) // max(1, len(y)))
    for i in range(0, len(x), rows):
        xor = np.ascontiguousarray(x[i : i + rows, None] ^ y[None, :])
        out[i : i + rows] = _POPCOUNT[xor.view(np.uint8)].reshape(*xor.shape, 8).sum(-1, dtype=np.uint8)
    return out


def _near_findings(near: list[NearDuplicate], split_names: list[str], max_distance: int) -> list[Finding]:
    out = []
    for later in split_names[1:]:
        pairs = [n for n in near if n.a.split("/", 1)[0] == later]
        if not pairs:
            continue
        others = sorted({n.b.split("/", 1)[0] for n in pairs}, key=split_names.index)
        out.append(
            Finding(
                WARNING,
                "near_duplicate",
                f"{len(pairs)} image(s) in {later!r} look like one in {' or '.join(map(repr, others))} "
                f"(perceptual hash within {max_distance}/64 bits; e.g. {pairs[0].a} ~ {pairs[0].b}, "
                f"distance {pairs[0].distance}): neighbouring frames across splits inflate validation "
                f"scores; fix: split by sequence, not by frame",
                [n.a for n in pairs],
            )
        )
    return out


# ---- small helpers -------------------------------------------------------------------------------
def _rel(path: Path | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _without_fix(message: str) -> str:
    """An inner error's what-and-where, for a message that gives its own fix."""
    return message.split("; fix:")[0]


def _tally(items: Iterable[str]) -> dict[str, int]:
    return dict(Counter(items).most_common())


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
