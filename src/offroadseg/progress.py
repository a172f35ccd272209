"""Progress of a long step: a bar with ETA on a terminal, a periodic one-line update in a log.

Library functions take a ``(done, total)`` callback (:data:`ProgressFn`) and never print; the
caller decides how progress is shown. :func:`progress` makes that callback: on a terminal a
tqdm bar (rate, elapsed time, ETA); when the stream is a file or a pipe (CI, ``nohup``, a log)
one plain line every ``every_s`` seconds and one when the step ends, because a bar redrawn
with carriage returns turns a log into one unreadable line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

__all__ = ["ProgressFn", "StepProgress", "labelled", "progress"]

ProgressFn = Callable[[int, int], None]
StepProgress = Callable[[str], ProgressFn | None]  # ``factory(description)``: a step's callback, or None


class _Lines:
    """Plain lines: ``desc: done/total unit (pct), elapsed, ETA`` every ``every_s`` seconds."""

    def __init__(self, desc: str, unit: str, stream: TextIO, every_s: float) -> None:
        self.desc, self.unit, self.stream, self.every_s = desc, unit, stream, every_s
        self.start = time.perf_counter()
        self.last_line = self.start
        self.finished = False

    def __call__(self, done: int, total: int) -> None:
        if self.finished:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        if done >= total:
            self.finished = True
            self._write(f"{self.desc}: {done}/{total} {self.unit} done in {tqdm.format_interval(elapsed)}")
        elif now - self.last_line >= self.every_s:
            self.last_line = now
            pct = 100.0 * done / total if total else 0.0
            eta = elapsed / done * (total - done) if done else None
            eta_text = tqdm.format_interval(eta) if eta is not None else "?"
            self._write(
                f"{self.desc}: {done}/{total} {self.unit} ({pct:.0f}%), "
                f"{tqdm.format_interval(elapsed)} elapsed, ETA {eta_text}"
            )

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class _Bar:
    """A tqdm bar, opened on the first update (when the total is known) and closed at the end."""

    def __init__(self, desc: str, unit: str, stream: TextIO) -> None:
        self.desc, self.unit, self.stream = desc, unit, stream
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=total, desc=self.desc, unit=self.unit, leave=False, dynamic_ncols=True, file=self.stream
            )
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


def progress(
    desc: str, *, unit: str = "img", stream: TextIO | None = None, every_s: float = 10.0
) -> ProgressFn:
    """A ``(done, total)`` callback that reports one step's progress on ``stream`` (default stderr).

    Args:
        desc: what the step is, e.g. ``"class weights"``; it leads every line.
        unit: what is counted (``img``, ``batch``, ``file``).
        stream: where to write; a terminal gets a tqdm bar, anything else plain lines.
        every_s: seconds between two plain lines (a terminal's bar redraws itself).
    """
    out = stream if stream is not None else sys.stderr
    if _is_terminal(out):
        return _Bar(desc, unit, out)
    return _Lines(desc, unit, out, every_s)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like object without a descriptor
        return False


def labelled(factory: StepProgress | None, label: str) -> StepProgress | None:
    """``factory`` with ``label`` leading every step's description (e.g. ``"trial #3 fold 2/5"``), so that
    the lines of a step run inside a fold say which fold they belong to; None stays None."""
    if factory is None:
        return None
    return lambda desc: factory(f"{label}: {desc}")
