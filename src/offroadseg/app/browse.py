"""Browsing one split of a dataset: samples per class, seeded random picks, rank in the split.

The browser only ever opens files it listed itself from ``--data``: the page sends a
sample *name*, which is looked up in that list, so no path from a browser reaches the
filesystem. The per-class index and the ranking are computed on first use (both read the
whole split) and kept.
"""

from __future__ import annotations

import csv
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from offroadseg.data.datasets import Sample, list_samples, load_pair
from offroadseg.errors import DataError
from offroadseg.inference.outputs import OutputWriter, predict_files
from offroadseg.inference.predictor import Predictor
from offroadseg.taxonomy import Taxonomy

Progress = Callable[[int, int], None]


def read_per_image_csv(path: str | Path) -> list[dict]:
    """Rows of a ``per_image.csv`` written by ``predict --gt``, worst mIoU first.

    Returns:
        ``{"name", "miou" (float or None)}`` per image; unscored images last.

    Raises:
        DataError: the file is missing or has no ``name``/``miou`` columns.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"scores file {path} does not exist; fix: give the per_image.csv that 'offroadseg predict --gt' wrote"
        )
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"name", "miou"} <= set(reader.fieldnames):
            raise DataError(
                f"scores file {path} has columns {reader.fieldnames}, not name and miou; fix: give the "
                f"per_image.csv that 'offroadseg predict --gt' wrote"
            )
        rows = []
        for n, r in enumerate(reader, start=2):
            try:
                miou = float(r["miou"]) if r["miou"] not in (None, "") else None
            except ValueError:
                raise DataError(f"{path}:{n}: miou {r['miou']!r} is not a number; fix that row") from None
            rows.append({"name": r["name"], "miou": miou})
    return sorted(rows, key=lambda r: (r["miou"] is None, r["miou"] or 0.0, r["name"]))


class SplitBrowser:
    """The samples of one split of ``--data``, in the model's taxonomy.

    Args:
        data_config: the checkpoint's data config; ``root`` is replaced by ``root``.
        root: the dataset folder given with ``--data``.
        split: the split to browse.
        taxonomy: the model's taxonomy (encodes the ground truth).
        unknown: ``error`` | ``ignore`` for label values outside the taxonomy.
        seed: seeds the random picks, so a session's sequence of picks is reproducible.
        scores_csv: a ``per_image.csv`` to read the ranking from instead of computing it.

    Raises:
        DataError: the split is missing or empty, or the scores file is bad.
    """

    def __init__(
        self,
        data_config,
        root: str | Path,
        split: str,
        taxonomy: Taxonomy,
        *,
        unknown: str = "error",
        seed: int = 0,
        scores_csv: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.taxonomy = taxonomy
        self.unknown = unknown
        self.seed = seed
        cfg = replace(data_config, root=str(self.root))
        self.samples: dict[str, Sample] = {s.name: s for s in list_samples(cfg, split)}
        self._classes: dict[str, list[str]] | None = None
        self._ranking: list[dict] | None = None
        self._lock = threading.Lock()  # the split is indexed / ranked once, whoever asks first
        self.scores_source = None
        if scores_csv is not None:
            self._ranking = read_per_image_csv(scores_csv)
            self.scores_source = str(scores_csv)
            unknown_names = [r["name"] for r in self._ranking if r["name"] not in self.samples]
            if len(unknown_names) == len(self._ranking):
                raise DataError(
                    f"scores file {scores_csv} names none of the {len(self.samples)} images of split "
                    f"{split!r} in {self.root} (e.g. {unknown_names[:2]}); fix: give the per_image.csv of "
                    f"this split"
                )

    @property
    def names(self) -> list[str]:
        return list(self.samples)

    def sample(self, name: str) -> Sample:
        """The sample called ``name``; any other string (a path, say) is refused."""
        if name not in self.samples:
            raise DataError(
                f"{name!r} is not an image of split {self.split!r} in {self.root}; fix: pick one from the list"
            )
        return self.samples[name]

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(uint8 RGB ``[H, W, 3]``, uint8 ground-truth ids ``[H, W]``) of a sample."""
        return load_pair(self.sample(name), self.taxonomy, unknown=self.unknown)

    # ---- per class -------------------------------------------------------------------------------
    @property
    def class_index_ready(self) -> bool:
        return self._classes is not None

    def with_class(self, class_name: str | None, progress: Progress | None = None) -> list[str]:
        """Names of the samples whose ground truth holds ``class_name`` (all samples for None)."""
        if not class_name:
            return self.names
        if class_name not in self.taxonomy.names:
            raise DataError(
                f"class {class_name!r} is not in taxonomy {self.taxonomy.name!r}; fix: pick one of "
                f"{', '.join(self.taxonomy.names)}"
            )
        with self._lock:
            if self._classes is None:
                self._classes = self._index_classes(progress)
        return self._classes[class_name]

    def _index_classes(self, progress: Progress | None) -> dict[str, list[str]]:
        from offroadseg.data.datasets import load_ids

        k = self.taxonomy.num_classes
        index: dict[str, list[str]] = {n: [] for n in self.taxonomy.names}
        for i, (name, sample) in enumerate(self.samples.items()):
            present = np.bincount(
                load_ids(sample, self.taxonomy, unknown=self.unknown).ravel(), minlength=256
            )
            for c in np.flatnonzero(present[:k]):
                index[self.taxonomy.names[c]].append(name)
            if progress:
                progress(i + 1, len(self.samples))
        return index

    def random_pick(self, choices: list[str], step: int) -> str:
        """The ``step``-th pick of this session among ``choices`` (same seed, same sequence)."""
        if not choices:
            raise DataError("no image to pick from; fix: choose another class")
        rng = np.random.default_rng([self.seed, step])
        return choices[int(rng.integers(len(choices)))]

    # ---- rank in the split -----------------------------------------------------------------------
    @property
    def ranking_ready(self) -> bool:
        return self._ranking is not None

    def ranking(self, predictor: Predictor, progress: Progress | None = None) -> list[dict]:
        """Every sample's mIoU, worst first, computed once by ``predict --gt``'s own code.

        The split is predicted with :func:`~offroadseg.inference.outputs.predict_files` into a
        temporary folder and its ``per_image.csv`` read back, so the figures are the ones
        ``offroadseg predict --gt`` writes.
        """
        with self._lock:
            if self._ranking is None:
                self._ranking = self._rank(predictor, progress)
        return self._ranking

    def _rank(self, predictor: Predictor, progress: Progress | None) -> list[dict]:
        samples = list(self.samples.values())
        gt_dirs = {s.label.parent for s in samples if s.label is not None}
        named_alike = all(s.label is not None and s.label.stem == s.name for s in samples)
        if len(gt_dirs) != 1 or not named_alike:
            raise DataError(
                f"split {self.split!r} in {self.root} keeps its masks in several folders or under other "
                f"names, which 'predict --gt' cannot pair; fix: rank it with 'offroadseg predict --gt' and "
                f"start the app with --scores <out>/per_image.csv"
            )
        with tempfile.TemporaryDirectory(prefix="offroadseg-rank-") as tmp:
            writer = OutputWriter(tmp, self.taxonomy, overwrite=True)
            summary = predict_files(
                predictor,
                [s.image for s in samples],
                writer,
                gt_dir=gt_dirs.pop(),
                unknown=self.unknown,
                progress=progress,
            )
            if summary.failed:
                path, reason = summary.failed[0]
                raise DataError(f"ranking split {self.split!r}: {path}: {reason}")
            return read_per_image_csv(Path(tmp) / "per_image.csv")

    def rank_of(self, name: str) -> tuple[int, int, float | None] | None:
        """(rank, images ranked, mIoU) of ``name``, worst = 1; None before the ranking exists."""
        if self._ranking is None:
            return None
        for i, row in enumerate(self._ranking, start=1):
            if row["name"] == name:
                return i, len(self._ranking), row["miou"]
        return None
