import numpy as np
from PIL import Image

from offroadseg.cli import main


def test_synth_cli_writes_duality_layout_and_refuses_non_empty(tmp_path, capsys):
    out = tmp_path / "s"
    assert (
        main(["synth", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "90x160"]) == 0
    )
    masks = sorted((out / "train" / "Segmentation").iterdir())
    assert len(masks) == 2 and np.asarray(Image.open(masks[0])).dtype == np.uint16
    assert main(["synth", str(out), "--n-train", "1", "--n-val", "0", "--n-test", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["synth", str(out), "--n-train", "1", "--n-val", "1", "--n-test", "0", "--overwrite"]) == 0
    assert main(["synth", str(tmp_path / "b"), "--biome", "moon"]) == 2
    assert "desert" in capsys.readouterr().err
