from offroadseg.experiments.demo import learning_verdict


def test_learning_verdict_comes_from_the_comparison():
    assert learning_verdict(0.6, 0.2) == "real: val mIoU is 3.0x the majority-class baseline"
    assert learning_verdict(0.1, 0.2).startswith("NOT shown: val mIoU")
    assert learning_verdict(0.2, 0.2).startswith("NOT shown")
    assert learning_verdict(None, 0.2).startswith("not measured")
