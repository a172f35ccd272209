"""The progress helper: a bar on a terminal, plain periodic lines in a log."""

from __future__ import annotations

import io

from offroadseg.progress import labelled, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_plain_lines_with_eta_and_a_final_line() -> None:
    out = io.StringIO()
    update = progress("class weights", unit="mask", stream=out, every_s=0.0)
    for done in range(1, 5):
        update(done, 4)
    update(4, 4)  # a repeated final call writes nothing more
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("class weights: 1/4 mask (25%)") and "ETA" in lines[0]
    assert len(lines) == 4 and lines[-1].startswith("class weights: 4/4 mask done in ")


def test_log_lines_are_periodic() -> None:
    out = io.StringIO()
    update = progress("predict", stream=out, every_s=3600.0)
    for done in range(1, 101):
        update(done, 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("predict: 100/100 img done in ")  # only the end line


def test_terminal_gets_a_tqdm_bar_with_eta() -> None:
    out = _Terminal()
    update = progress("doctor", unit="file", stream=out)
    for done in range(1, 11):
        update(done, 10)
    text = out.getvalue()
    assert "doctor" in text and "\r" in text and "file/s" in text and "<" in text  # tqdm's ETA field


def test_labelled_leads_every_step_with_its_label() -> None:
    made = []
    factory = labelled(lambda desc: made.append(desc) or (lambda done, total: None), "trial #3 fold 2/5")
    assert factory is not None and callable(factory("class weights"))
    assert made == ["trial #3 fold 2/5: class weights"]
    assert labelled(None, "anything") is None  # no factory: the steps stay silent
