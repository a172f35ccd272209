"""Checkpoint ensembles: several models of one taxonomy, their softmax probabilities averaged.

Each member runs as it would alone (its own training size, patch size and sliding windows, the
shared TTA views), its class scores are brought to each image's own size, turned into
probabilities (softmax of the upsampled logits, or the mean TTA probabilities), and the members'
probabilities are averaged; the class is the argmax of that mean. Excluded classes are masked in
every member's logits before its softmax (as for one model), so their mean probability is 0.

An ensemble of one member is that member: its scores are returned untouched, so its predictions
equal the checkpoint's own bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from offroadseg.errors import ConfigError
from offroadseg.inference.predictor import Predictor, TTAConfig
from offroadseg.taxonomy import Taxonomy

__all__ = ["EnsemblePredictor", "check_same_taxonomy", "mean_probabilities"]


def mean_probabilities(scores: Sequence[Tensor], *, probabilities: bool = False) -> Tensor:
    """The mean over members of their class probabilities.

    Args:
        scores: one ``[K, H, W]`` (or ``[B, K, H, W]``: classes on ``dim=-3``) tensor per member,
            all of one shape.
        probabilities: the scores already are probabilities (TTA means); otherwise they are
            logits and get a softmax over the classes first.

    Returns:
        ``[K, H, W]`` mean probabilities (float32 when the scores are).
    """
    if not scores:
        raise ValueError("mean_probabilities needs at least one member's scores")
    total: Tensor | None = None
    for s in scores:
        p = s if probabilities else s.softmax(dim=-3)
        total = p if total is None else total + p
    return total / len(scores)  # type: ignore[operator]


def _taxonomy_key(taxonomy: Taxonomy) -> tuple:
    """What must match for two models' class ids to mean the same (colours may differ)."""
    return (
        taxonomy.encoding,
        taxonomy.ignore_index,
        tuple(taxonomy.ignore_values),
        tuple((c.name, tuple(c.values)) for c in taxonomy.classes),
    )


def check_same_taxonomy(taxonomies: Sequence[Taxonomy], sources: Sequence[str | Path]) -> None:
    """Refuse members whose class names, raw label values or encodings differ.

    Raises:
        ConfigError: one line naming both files, the first difference and the fix.
    """
    first = _taxonomy_key(taxonomies[0])
    for tax, source in zip(taxonomies[1:], sources[1:], strict=True):
        key = _taxonomy_key(tax)
        if key == first:
            continue
        a, b = taxonomies[0], tax
        if a.names != b.names:
            what = f"classes {list(a.names)} vs {list(b.names)}"
        elif key[3] != first[3]:
            diff = next(
                (ca.name, list(ca.values), list(cb.values))
                for ca, cb in zip(a.classes, b.classes, strict=True)
                if ca.values != cb.values
            )
            what = f"class {diff[0]!r} has label values {diff[1]} vs {diff[2]}"
        else:
            what = (
                f"label encoding {a.encoding}/ignore {list(a.ignore_values)} vs "
                f"{b.encoding}/ignore {list(b.ignore_values)}"
            )
        raise ConfigError(
            f"ensemble members {sources[0]} and {source} have different taxonomies ({what}); "
            f"fix: ensemble only checkpoints trained on one taxonomy"
        )


class EnsemblePredictor(Predictor):
    """A :class:`Predictor` whose scores are the mean probabilities of several member predictors.

    It serves wherever a predictor does (``predict_files``, videos, evaluation). Its own settings
    (taxonomy, TTA, device, input size shown in reports) are the first member's; every member
    keeps its own input and patch size.

    Args:
        members: predictors of one taxonomy, with one TTA mode and one set of excluded classes.
        sources: the members' files, for reports and messages.

    Raises:
        ConfigError: no member, or members of different taxonomies, TTA modes or exclusions.
    """

    def __init__(self, members: Sequence[Predictor], *, sources: Sequence[str | Path] = ()) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one checkpoint; fix: pass one")
        sources = [str(s) for s in sources] or [f"member {i + 1}" for i in range(len(members))]
        check_same_taxonomy([m.taxonomy for m in members], sources)
        first = members[0]
        if any(m.tta != first.tta or m.exclude != first.exclude for m in members):
            raise ConfigError(
                "ensemble members must share one TTA mode and one set of excluded classes; "
                "fix: build them with the same settings"
            )
        super().__init__(
            first.forward,
            taxonomy=first.taxonomy,
            image_size=first.image_size,
            patch_size=first.patch_size,
            tta=first.tta,
            device=first.device,
            batch_size=first.batch_size,
            mean=tuple(first.mean),
            std=tuple(first.std),
            fixed_size=first.fixed_size,
            runtime=first.runtime,
            exclude=first.exclude,
        )
        self.members = list(members)
        self.sources = sources

    @classmethod
    def from_checkpoints(
        cls,
        loaded: Sequence,
        *,
        tta: TTAConfig | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        exclude: Sequence[int] = (),
    ) -> EnsemblePredictor:
        """An ensemble of :class:`~offroadseg.inference.checkpoint.LoadedModel` s.

        ``tta`` defaults to the first member's ``eval`` section; the rest as in
        :meth:`Predictor.from_loaded`.
        """
        if not loaded:
            raise ConfigError("an ensemble needs at least one checkpoint; fix: pass one")
        check_same_taxonomy([m.taxonomy for m in loaded], [m.path for m in loaded])
        if tta is None:
            tta = TTAConfig.from_eval(loaded[0].config.eval)
        members = [
            Predictor.from_loaded(m, tta=tta, device=device, batch_size=batch_size, exclude=exclude)
            for m in loaded
        ]
        return cls(members, sources=[m.path for m in loaded])

    def scores(self, images: Sequence[np.ndarray], *, exclude: Sequence[int] | None = None) -> list[Tensor]:
        """Per-image mean class probabilities ``[K, H, W]`` at each image's own size.

        One member: that member's scores unchanged (logits without TTA).
        """
        if len(self.members) == 1:
            return self.members[0].scores(images, exclude=exclude)
        probabilities = len(self.tta.views) > 1  # a member's TTA scores are already probabilities
        per_member = [m.scores(images, exclude=exclude) for m in self.members]
        return [
            mean_probabilities([member[i] for member in per_member], probabilities=probabilities)
            for i in range(len(images))
        ]
