"""The demo's instruments on cases with known answers: the paired bootstrap and the linear probe."""
import numpy as np

from victor.demo.probe import probe, region_labels
from victor.demo.stats import compare_outcomes, paired_bootstrap, verdict


def test_identical_arms_are_not_resolved():
    rng = np.random.default_rng(1)
    a = rng.random((3, 500)) < 0.6
    same = paired_bootstrap(a, a.copy())
    assert same.diff == 0 and same.low <= 0 <= same.high and same.verdict == "no difference resolved"
    # two arms drawn from the same distribution: the interval covers 0
    b = rng.random((3, 500)) < 0.6
    null = paired_bootstrap(a, b)
    assert null.low <= 0 <= null.high and null.verdict == "no difference resolved"


def test_a_ten_point_shift_on_500_questions_is_resolved():
    rng = np.random.default_rng(2)
    a = rng.random((3, 500)) < 0.5
    b = rng.random((3, 500)) < 0.6
    up = paired_bootstrap(a, b)
    assert up.verdict == "better" and up.low > 0 and 0.05 < up.diff < 0.15
    assert paired_bootstrap(b, a).verdict == "worse"
    assert paired_bootstrap(b, a, higher_is_better=False).verdict == "better"  # e.g. an error
    assert 0.01 < up.half_width < 0.05


def test_compare_outcomes_pairs_by_unit_and_seed():
    a = [{"q1": 0.0, "q2": 1.0, "extra": 1.0}, {"q1": 0.0, "q2": 0.0}]
    b = [{"q2": 1.0, "q1": 1.0}, {"q1": 1.0, "q2": 0.0}]
    c = compare_outcomes(a, b)
    assert c.n_seeds == 2 and c.n_units == 2 and c.diff == 0.5
    assert verdict(-0.1, 0.2) == "no difference resolved" and verdict(0.01, 0.2) == "better"


def test_probe_reads_a_linear_code_and_not_shuffled_labels():
    rng = np.random.default_rng(3)
    n, classes, dim = 600, 6, 32
    y = rng.integers(0, classes, n)
    codes = rng.normal(size=(classes, dim))
    x = codes[y] + 0.5 * rng.normal(size=(n, dim))
    good = probe(x[:300], y[:300], x[300:], y[300:], classes)
    assert good["accuracy"] > 0.95 and len(good["correct"]) == 300
    shuffled = probe(x[:300], rng.permutation(y[:300]), x[300:], y[300:], classes)
    assert shuffled["accuracy"] < 1 / classes + 0.1  # chance
    assert abs(good["majority"] - np.mean(y[300:] == np.bincount(y[:300]).argmax())) < 1e-9


def test_region_labels_follow_the_grid():
    scene = {"objects": [{"colour": "blue", "shape": "star", "size": "large", "region": 4},
                         {"colour": "red", "shape": "circle", "size": "small", "region": 0}]}
    labels = region_labels(scene)
    assert labels["occupancy"] == [1, 0, 0, 0, 1, 0, 0, 0, 0]
    assert labels["colour"][0] == 0 and labels["shape"][4] == 5 and labels["colour"][1] == -1
    assert labels["size"][:5] == [0, -1, -1, -1, 1] and labels["size"][8] == -1


def test_reconstruction_head_recovers_a_linear_map():
    import torch

    from victor.demo.recon import fit_head

    torch.manual_seed(0)
    hidden = torch.randn(200, 9, 16)
    true = torch.randn(16, 8)
    target = hidden @ true + 0.5
    head = fit_head(hidden, target)
    assert torch.allclose(head(hidden[:3]), target[:3], rtol=1e-2, atol=1e-2)  # a small ridge shrinks a little
