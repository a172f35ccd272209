"""``bench adapt``: does adaptation to unlabeled images of an unseen biome pay, on synthetic scenes?

For each (train biome, test biome) pair: ``offroadseg synth`` writes train/val in the train biome
and test in the unseen one; the demo recipe (``configs/demo.yaml``) trains on train/val; ``adapt``
runs on the test **images** (labels withheld); both models are scored on the test labels through
the ``predict --gt`` path (one confusion matrix at the label's resolution). The gain is the
adapted model's test mIoU minus the unadapted one's, in points.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["DEFAULT_PAIRS", "bench_adapt", "parse_pair"]

DEFAULT_PAIRS = (("desert", "canyon"), ("desert", "scrubland"))


def parse_pair(text: str) -> tuple[str, str]:
    """``"desert:canyon"`` -> ``("desert", "canyon")``."""
    from offroadseg.errors import ConfigError

    parts = text.split(":")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--pair {text!r} is not TRAIN:TEST; fix: e.g. --pair desert:canyon")
    return parts[0], parts[1]


def bench_adapt(
    work_dir: str | Path,
    *,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    n_train: int = 64,
    n_val: int = 20,
    n_test: int = 20,
    seed: int = 0,
    overrides: Sequence[str] = (),
    settings: Sequence[str] = (),
    on_row: Callable[[dict], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Run the benchmark; returns ``{"rows": [...]}`` with one row per pair.

    Args:
        work_dir: data, runs and adaptation runs go to ``<work_dir>/<train>-<test>/``.
        overrides: ``key=value`` changes to the demo recipe (e.g. ``train.epochs=4``).
        settings: ``key=value`` adaptation settings (see :class:`~offroadseg.experiments.adapt.AdaptSettings`).
    """
    from offroadseg.data.synth import write_synthetic_dataset
    from offroadseg.experiments.adapt import adapt, parse_settings
    from offroadseg.experiments.demo import demo_config
    from offroadseg.training.run import train

    say = say or (lambda _m: None)
    adapt_settings = parse_settings(list(settings))
    rows = []
    for biome, test_biome in pairs:
        out = Path(work_dir) / f"{biome}-{test_biome}"
        row: dict = {"train_biome": biome, "test_biome": test_biome, "seconds": {}}
        t = time.perf_counter()
        say(f"{biome} -> {test_biome}: synth {n_train}/{n_val}/{n_test}")
        write_synthetic_dataset(
            out / "data", n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, biome=biome,
            test_biome=test_biome, overwrite=True,
        )  # fmt: skip
        row["seconds"]["synth"] = time.perf_counter() - t
        cfg = demo_config(out, list(overrides))
        cfg.run.progress = False
        t = time.perf_counter()
        say(f"{biome} -> {test_biome}: training the demo recipe")
        result = train(cfg)
        row["seconds"]["train"] = time.perf_counter() - t
        row["val_miou"] = result.best_val_miou
        t = time.perf_counter()
        say(f"{biome} -> {test_biome}: adapting on the {n_test} test images (labels withheld)")
        res = adapt(
            result.model_checkpoint or result.best_checkpoint,
            [str(out / "data" / "test" / "Color_Images")],
            out / "adapted",
            settings=adapt_settings,
            gt_dir=out / "data" / "test" / "Segmentation",
            overwrite=True,
            say=lambda m, p=f"{biome} -> {test_biome}: ": say(p + m),
        )
        row["seconds"]["adapt"] = time.perf_counter() - t
        gt = res.summary["gt"]
        row["test_miou_before"] = gt["before"]["miou"]
        row["test_miou_after"] = gt["after"]["miou"]
        row["gain_points"] = 100 * (gt["after"]["miou"] - gt["before"]["miou"])
        row["collapsed"] = res.collapsed
        row["shipped_round"] = res.shipped_round
        row["report"] = str(res.report)
        rows.append(row)
        if on_row:
            on_row(row)
    return {"rows": rows, "settings": dict(vars(adapt_settings)), "overrides": list(overrides)}
