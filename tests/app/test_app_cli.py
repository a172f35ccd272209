"""``offroadseg app`` refuses bad input with one line and exit status 2, before serving."""

from __future__ import annotations

import socket

from offroadseg.cli import main


def test_unloadable_checkpoint_exits_2_before_serving(tmp_path, capsys):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"\x00garbage")
    assert main(["app", str(bad), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.ckpt" in err[0] and "fix:" in err[0]


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["app", str(tmp_path / "nope.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_port_in_use_exits_2_naming_the_port(app_checkpoint, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", str(app_checkpoint), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"port {port} on 127.0.0.1 is already in use" in err[0] and "--port" in err[0]


def test_other_taxonomy_exits_2_with_both_class_lists(app_checkpoint, other_taxonomy_checkpoint, capsys):
    assert main(["app", str(app_checkpoint), str(other_taxonomy_checkpoint), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "600=Flowers" in err and "600=Cacti" in err


def test_scores_without_data_is_refused(app_checkpoint, tmp_path, capsys):
    assert main(["app", str(app_checkpoint), "--scores", str(tmp_path / "x.csv"), "--port", "0"]) == 2
    assert "--scores ranks the images of --data" in capsys.readouterr().err
