"""Taxonomies: raw mask value (or RGB colour) <-> train id, names, colours.

A taxonomy is data, not code: two are built in (``duality`` and ``duality10``) and
users bring their own as a YAML or TSV file. ``encode`` turns a raw mask as read
from disk into train ids (uint8, ``ignore_index`` for ignored pixels) and refuses
values it does not know; ``decode`` turns ids back into the dataset's own
encoding so predictions can be written the way the ground truth is.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from offroadseg.errors import ConfigError, DataError, close_matches

Color = tuple[int, int, int]


@dataclass(frozen=True)
class ClassInfo:
    """One class: the raw values (or RGB colours) that mean it, its name and display colour."""

    values: tuple[int, ...]
    name: str
    color: Color


@dataclass(frozen=True)
class Taxonomy:
    """A table from raw label values to train ids 0..K-1.

    Args:
        name: short name shown in messages and reports.
        classes: one entry per train id, in id order.
        ignore_index: the train id of ignored pixels (never a class id).
        ignore_values: raw values that map to ``ignore_index`` (void, unlabelled).
        encoding: ``"value"`` (masks hold raw integers) or ``"rgb"`` (masks are
            colour-coded and each class's ``color`` is its key).
    """

    name: str
    classes: tuple[ClassInfo, ...]
    ignore_index: int = 255
    ignore_values: tuple[int, ...] = ()
    encoding: str = "value"
    _lut: dict = field(default_factory=dict, compare=False, repr=False)
    _arrays: dict = field(default_factory=dict, compare=False, repr=False)  # lookup arrays by raw dtype

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError(f"taxonomy {self.name!r} has no classes; fix: list at least one class")
        if self.encoding not in ("value", "rgb"):
            raise ConfigError(
                f"taxonomy {self.name!r}: encoding {self.encoding!r} is not valid; fix: use 'value' or 'rgb'"
            )
        if not 0 <= self.ignore_index <= 255 or self.ignore_index < len(self.classes):
            raise ConfigError(
                f"taxonomy {self.name!r}: ignore_index {self.ignore_index} collides with a class id "
                f"or does not fit uint8; fix: use 255"
            )
        seen: dict[int, str] = {}
        for info in self.classes:
            for v in info.values:
                if v in seen:
                    raise ConfigError(
                        f"taxonomy {self.name!r}: raw value {v} is given to both {seen[v]!r} and "
                        f"{info.name!r}; fix: give each value one class"
                    )
                seen[v] = info.name

    # ---- properties -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def colors(self) -> np.ndarray:
        """Display colours, uint8 [K, 3]."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    @property
    def max_value(self) -> int:
        """The largest raw value a mask must be able to hold."""
        if self.encoding == "rgb":
            return 255
        return max([v for c in self.classes for v in c.values] + list(self.ignore_values))

    @property
    def raw_dtype(self) -> np.dtype:
        """The dtype that holds every raw value (uint16 for Duality's 10000)."""
        return np.dtype(np.uint8) if self.max_value <= 255 else np.dtype(np.uint16)

    def _table(self) -> dict[int, int]:
        if not self._lut:
            table = {v: i for i, c in enumerate(self.classes) for v in c.values}
            table.update({v: self.ignore_index for v in self.ignore_values})
            self._lut.update(table)
        return self._lut

    def _by_value(self, raw: np.ndarray) -> bool:
        """Whether ``raw`` is a single-channel uint8 / uint16 mask of raw values (every PNG): then its
        values index a table or a bincount directly, in O(pixels), where the general path sorts them."""
        return (
            self.encoding == "value" and raw.ndim == 2 and raw.dtype.kind == "u" and raw.dtype.itemsize <= 2
        )

    def _value_lut(self, dtype: np.dtype) -> np.ndarray:
        """int16 ``[2**bits]``: raw value -> train id (``ignore_index`` for ignored values), -1 where unknown."""
        lut = self._arrays.get(dtype.str)
        if lut is None:
            lut = np.full(1 << (8 * dtype.itemsize), -1, dtype=np.int16)
            for value, train_id in self._table().items():
                if 0 <= value < lut.size:
                    lut[value] = train_id
            self._arrays[dtype.str] = lut
        return lut

    def to_dict(self) -> dict:
        """Plain data (for checkpoints and run folders); :func:`taxonomy_from_dict` reverses it."""
        return {
            "name": self.name,
            "encoding": self.encoding,
            "ignore_index": self.ignore_index,
            "ignore_values": list(self.ignore_values),
            "classes": [
                {"values": list(c.values), "name": c.name, "color": list(c.color)} for c in self.classes
            ],
        }

    # ---- encode / decode ---------------------------------------------------------------------
    def encode(self, raw: np.ndarray, *, unknown: str = "error", source: str | None = None) -> np.ndarray:
        """Raw mask -> train ids.

        Args:
            raw: [H, W] integer values (``encoding="value"``) or [H, W, 3] uint8 colours
                (``encoding="rgb"``).
            unknown: ``"error"`` raises on values not in the table; ``"ignore"`` maps
                them to ``ignore_index``.
            source: the file the mask came from, named in errors.

        Returns:
            uint8 [H, W] ids in 0..K-1 or ``ignore_index``.
        """
        if self._by_value(raw):
            # one table lookup per pixel: ~2 ms for a 1024x544 mask, where np.unique below sorts the
            # pixels (~60 ms). Unknown values fall through to the general path, which names them.
            ids = self._value_lut(raw.dtype)[raw]
            if ids.size == 0 or ids.min() >= 0:
                return ids.astype(np.uint8)
            if unknown == "ignore":
                ids[ids < 0] = self.ignore_index
                return ids.astype(np.uint8)
        keys, table = self._keys(raw, source)
        uniq, inverse = np.unique(keys, return_inverse=True)
        mapped = np.array([table.get(int(u), -1) for u in uniq], dtype=np.int64)
        missing = mapped < 0
        if missing.any():
            if unknown != "ignore":
                counts = np.bincount(inverse.ravel(), minlength=len(uniq))
                listed = ", ".join(
                    f"{_show_key(int(u), self.encoding)} ({int(counts[i])} px)"
                    for i, u in enumerate(uniq)
                    if missing[i]
                )
                raise DataError(
                    f"{source or 'mask'}: label values not in taxonomy {self.name!r}: {listed}; "
                    f"known: {_known(self)}; fix: use the right taxonomy, add these values to a taxonomy "
                    f"file, or set data.unknown_values=ignore"
                )
            mapped[missing] = self.ignore_index
        return mapped.astype(np.uint8)[inverse].reshape(keys.shape)

    def _keys(self, raw: np.ndarray, source: str | None) -> tuple[np.ndarray, dict[int, int]]:
        """(int64 [H, W] lookup keys of the mask's pixels, key -> train id table)."""
        if self.encoding == "rgb":
            if raw.ndim != 3 or raw.shape[2] < 3:
                raise DataError(
                    f"{source or 'mask'}: taxonomy {self.name!r} is colour-coded but the mask has shape "
                    f"{raw.shape}; fix: use a value-encoded taxonomy or RGB masks"
                )
            rgb = raw[..., :3].astype(np.int64)
            keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            table = {
                (c.color[0] << 16) | (c.color[1] << 8) | c.color[2]: i for i, c in enumerate(self.classes)
            }
            table.update({v: self.ignore_index for v in self.ignore_values})
        else:
            if raw.ndim != 2:
                raise DataError(
                    f"{source or 'mask'}: expected a single-channel mask, got shape {raw.shape}; "
                    f"fix: save masks as one channel or set the taxonomy encoding to 'rgb'"
                )
            keys = raw.astype(np.int64, copy=False)
            table = self._table()
        return keys, table

    def pixel_counts(
        self, raw: np.ndarray, *, source: str | None = None
    ) -> tuple[np.ndarray, int, dict[str, int]]:
        """What a raw mask holds, without building its id mask.

        Returns:
            (int64 ``[K]`` pixels per class, ignored pixels, ``{value: pixels}`` for the values (or
            colours) the taxonomy does not know, shown as in :meth:`encode`'s error).
        """
        if self._by_value(raw):
            table = self._table()
            per_value = np.bincount(raw.ravel())  # no int64 copy of the mask, no sort
            uniq = np.flatnonzero(per_value)
            counts = per_value[uniq]
        else:
            keys, table = self._keys(raw, source)  # checks the shape; the general path
            uniq, counts = np.unique(keys, return_counts=True)
        per_class = np.zeros(self.num_classes, dtype=np.int64)
        ignored, unknown = 0, {}
        for u, n in zip(uniq.tolist(), counts.tolist(), strict=True):
            i = table.get(u)
            if i is None:
                unknown[_show_key(u, self.encoding)] = n
            elif i == self.ignore_index:
                ignored += n
            else:
                per_class[i] += n
        return per_class, ignored, unknown

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Train ids -> the dataset's own encoding (first raw value of each class).

        Returns uint16/uint8 [H, W] raw values, or uint8 [H, W, 3] for a colour-coded
        taxonomy. Ignored pixels become the first ignore value (0 when there is none).
        """
        if self.encoding == "rgb":
            return self.colorize(ids)
        fill = self.ignore_values[0] if self.ignore_values else 0
        lut = np.full(256, fill, dtype=self.raw_dtype)
        for i, c in enumerate(self.classes):
            lut[i] = c.values[0]
        return lut[np.asarray(ids, dtype=np.uint8)]

    def colorize(self, ids: np.ndarray) -> np.ndarray:
        """Train ids -> display colours, uint8 [H, W, 3]; ignored pixels are black."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.colors
        return lut[np.asarray(ids, dtype=np.uint8)]


def taxonomy_from_dict(data: dict) -> Taxonomy:
    """The inverse of :meth:`Taxonomy.to_dict`."""
    return Taxonomy(
        data["name"],
        tuple(ClassInfo(tuple(c["values"]), c["name"], tuple(c["color"])) for c in data["classes"]),
        ignore_index=int(data.get("ignore_index", 255)),
        ignore_values=tuple(data.get("ignore_values", ())),
        encoding=data.get("encoding", "value"),
    )


def _show_key(key: int, encoding: str) -> str:
    if encoding == "rgb":
        return f"rgb({key >> 16},{(key >> 8) & 255},{key & 255})"
    return str(key)


def _known(tax: Taxonomy) -> str:
    if tax.encoding == "rgb":
        return ", ".join(f"rgb{c.color}" for c in tax.classes)
    return ", ".join(str(v) for c in tax.classes for v in c.values)


_DUALITY = [
    (0, "Background", (0, 0, 0)),
    (100, "Trees", (34, 139, 34)),
    (200, "Lush Bushes", (0, 255, 0)),
    (300, "Dry Grass", (210, 180, 140)),
    (500, "Dry Bushes", (139, 90, 43)),
    (550, "Ground Clutter", (128, 128, 0)),
    (600, "Flowers", (255, 105, 180)),
    (700, "Logs", (139, 69, 19)),
    (800, "Rocks", (128, 128, 128)),
    (7100, "Landscape", (160, 82, 45)),
    (10000, "Sky", (135, 206, 235)),
]


def _builtin(name: str) -> Taxonomy:
    if name == "duality":
        return Taxonomy("duality", tuple(ClassInfo((v,), n, c) for v, n, c in _DUALITY))
    # The reference pipeline's exact map: 600 (Flowers) silently became Background.
    classes = [ClassInfo((0, 600), "Background", (0, 0, 0))]
    classes += [ClassInfo((v,), n, c) for v, n, c in _DUALITY[1:] if v != 600]
    return Taxonomy("duality10", tuple(classes))


BUILTIN_TAXONOMIES = ("duality", "duality10")


def load_taxonomy(
    spec: str | Path,
    *,
    encoding: str | None = None,
    ignore_values: list[int] | tuple[int, ...] | None = None,
) -> Taxonomy:
    """A built-in taxonomy by name, or one read from a YAML or TSV file.

    YAML: ``name``, optional ``encoding`` (value|rgb), ``ignore_index``, ``ignore``
    (raw values to ignore) and ``classes``: a list of ``{value: 7100 | values: [0, 600]
    | rgb: [r, g, b], name: ..., color: [r, g, b]}``.
    TSV (as the datasets ship ``classes.tsv``): a header row with ``id`` or ``value``,
    ``name`` and optionally ``R G B``; one class per row in id order.

    Args:
        spec: a built-in name or a file path.
        encoding: override the file's encoding (the same table serves value- and
            colour-coded masks).
        ignore_values: raw values that map to ignore_index (void), added to the file's.
    """
    spec_str = str(spec)
    path = Path(spec_str)
    if spec_str in BUILTIN_TAXONOMIES:
        tax = _builtin(spec_str)
    elif path.suffix.lower() in (".yaml", ".yml", ".tsv", ".txt") or path.exists():
        if not path.is_file():
            raise ConfigError(
                f"taxonomy file {path} does not exist; fix: give a path to a .yaml/.tsv file "
                f"or a built-in name ({', '.join(BUILTIN_TAXONOMIES)})"
            )
        tax = _read_yaml(path) if path.suffix.lower() in (".yaml", ".yml") else _read_tsv(path)
    else:
        raise ConfigError(
            f"unknown taxonomy {spec_str!r}{close_matches(spec_str, BUILTIN_TAXONOMIES)}; valid built-in "
            f"names: {', '.join(BUILTIN_TAXONOMIES)}, or a path to a .yaml/.tsv file"
        )
    extra = tuple(int(v) for v in (ignore_values or ()))
    if encoding in (None, "auto") and not extra:
        return tax
    return _rebuild(tax, encoding=encoding, ignore_values=extra)


def _rebuild(tax: Taxonomy, *, encoding: str | None, ignore_values: tuple[int, ...]) -> Taxonomy:
    enc = tax.encoding if encoding in (None, "auto") else encoding
    drop = set(ignore_values) if enc == "value" else set()
    classes = []
    for c in tax.classes:
        kept = tuple(v for v in c.values if v not in drop)
        if kept:
            classes.append(ClassInfo(kept, c.name, c.color))
    return Taxonomy(
        tax.name,
        tuple(classes),
        ignore_index=tax.ignore_index,
        ignore_values=tuple(dict.fromkeys(tax.ignore_values + ignore_values)),
        encoding=enc,
    )


def _color(value, where: str) -> Color:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(0 <= int(x) <= 255 for x in value)):
        raise ConfigError(f"{where}: colour {value!r} is not [r, g, b] in 0..255; fix: give three integers")
    return (int(value[0]), int(value[1]), int(value[2]))


def _default_color(i: int) -> Color:
    rng = np.random.default_rng(i + 7)
    return tuple(int(x) for x in rng.integers(40, 255, size=3))  # type: ignore[return-value]


def _read_yaml(path: Path) -> Taxonomy:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"taxonomy file {path} is not valid YAML: {exc}; fix: correct the syntax") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise ConfigError(f"taxonomy file {path} needs a 'classes' list; fix: see the docs' taxonomy example")
    encoding = data.get("encoding", "value")
    classes = []
    for i, entry in enumerate(data["classes"]):
        where = f"{path} class #{i}"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: each class needs at least 'name' and 'value'; got {entry!r}")
        color = _color(entry["color"], where) if "color" in entry else None
        if "rgb" in entry:
            # A colour-coded class is keyed by its colour: the display colour is the key.
            color = key = _color(entry["rgb"], where)
            encoding = "rgb"
            values = ((key[0] << 16) | (key[1] << 8) | key[2],)
        elif "values" in entry:
            values = tuple(int(v) for v in entry["values"])
        elif "value" in entry:
            values = (int(entry["value"]),)
        else:
            values = (i,)
        classes.append(ClassInfo(values, str(entry["name"]), color or _default_color(i)))
    return Taxonomy(
        str(data.get("name", path.stem)),
        tuple(classes),
        ignore_index=int(data.get("ignore_index", 255)),
        ignore_values=tuple(int(v) for v in data.get("ignore", []) or []),
        encoding=encoding,
    )


def _read_tsv(path: Path) -> Taxonomy:
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t") if r and not r[0].startswith("#")]
    if not rows:
        raise ConfigError(f"taxonomy file {path} is empty; fix: add a header row and one row per class")
    header = [h.strip().lower() for h in rows[0]]
    key = "id" if "id" in header else "value" if "value" in header else None
    if key is None or "name" not in header:
        raise ConfigError(
            f"taxonomy file {path}: header {rows[0]} needs an 'id' or 'value' column and a 'name' column"
        )
    has_rgb = all(c in header for c in ("r", "g", "b"))
    classes = []
    for n, row in enumerate(rows[1:], start=2):
        cells = dict(zip(header, (c.strip() for c in row), strict=False))
        try:
            value = int(cells[key])
            color = (
                _color([int(cells["r"]), int(cells["g"]), int(cells["b"])], f"{path}:{n}")
                if has_rgb
                else _default_color(len(classes))
            )
        except (KeyError, ValueError):
            raise ConfigError(f"{path}:{n}: row {row} is not '<int> <name> [R G B]'; fix that row") from None
        classes.append(ClassInfo((value,), cells["name"], color))
    return Taxonomy(path.parent.name or path.stem, tuple(classes))
