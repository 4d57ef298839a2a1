"""The training objective does not depend on how the global batch is split.

Stage 1.5's loss is LM cross-entropy + weight x reconstruction error. With
`loss_normalization: batch` (the default) each term is a mean over the whole global batch
(answer tokens for the LM term, reconstructed visual positions for the reconstruction term),
so 8 samples as (batch 8, accumulation 1), (4, 2) or (2, 4) give the same weights. With
`micro-batch` (the authors' code: each micro-batch's own mean, divided by the accumulation
steps) the splits differ exactly where micro-batches have unequal answer lengths.
"""
import json

import pytest
from helpers import train_stage1
import torch
from PIL import Image
from safetensors.torch import load_file

from victor.train.run import train_from_recipe

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230), "yellow": (230, 230, 20)}
SPLITS = [(8, 1), (4, 2), (2, 4)]
# fp32, one process: the splits differ only in summation order (~1e-8 in the weights under SGD).
# SGD, because its update is linear in the gradient: Adam divides by the root of the second
# moment, which turns that summation noise in near-zero gradient elements into ~1e-6 (measured:
# 1.2e-6 at eps 1e-6, 4.9e-6 at 1e-8), so the Adam case below has its own, looser bound.
# Before the fix (reconstruction x accumulation) these splits differed by 4.6e-4 / 6.9e-4 under
# this SGD and 3.9e-3 under Adam.
TOLERANCE = 1e-6
SGD = ["--optim", "sgd", "--learning_rate", "0.05"]
ADAM_TOLERANCE = 2e-5


def caption(i: int, colour: str) -> str:
    extra = " there are no objects ." * (1 + i % 3)  # unequal answer lengths across micro-batches
    return f"the background is {colour} .{extra}"


def write_corpus(root, n=16, equal_lengths=False):
    (root / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        colour = list(COLOURS)[i % 4]
        Image.new("RGB", (32, 32), COLOURS[colour]).save(root / "img" / f"{i}.png")
        text = f"the background is {colour} ." if equal_lengths else caption(i, colour)
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\ndescribe the image in detail ."},
            {"from": "gpt", "value": text}]})
    path = root / ("equal.json" if equal_lengths else "chat.json")
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def corpus(backbones, tmp_path_factory):
    root = tmp_path_factory.mktemp("objective")
    data = write_corpus(root)
    write_corpus(root, equal_lengths=True)
    train_stage1(backbones, data, root / "img", root / "s1")
    return root


def stage15_args(root, out, batch, accumulation, steps=3, extra=(), data="chat.json"):
    return ["--stage", "1.5", "--init_from", str(root / "s1"), "--pool_size", "32", "--data_path", str(root / data),
            "--image_root", str(root / "img"), "--output_dir", str(out), "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accumulation), "--max_steps", str(steps), "--learning_rate", "1e-3",
            "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True",
            "--seed", "0", "--data_seed", "0", "--warmup_steps", "0", "--disable_tqdm", "True",
            "--train_sampling_strategy", "sequential", "--recon_head_dropout", "0", *extra]


def weights(out):
    return {**load_file(str(out / "model.safetensors")),
            **{f"extra.{k}": v for k, v in load_file(str(out / "comprehension.safetensors")).items()}}


def logged(out, key):
    history = json.loads((out / "victor_stage.json").read_text())["log_history"]
    return [h[key] for h in history if key in h and "train_runtime" not in h]


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def run_splits(corpus, tmp_path, extra=(), splits=SPLITS, data="chat.json"):
    outs = {}
    for batch, accumulation in splits:
        out = tmp_path / f"b{batch}x{accumulation}"
        train_from_recipe(None, stage15_args(corpus, out, batch, accumulation, extra=extra, data=data))
        outs[(batch, accumulation)] = out
    return outs


@pytest.mark.parametrize("recon_weight", ["0", "10"])
def test_every_split_of_the_global_batch_trains_the_same_weights(corpus, tmp_path, recon_weight):
    outs = run_splits(corpus, tmp_path, extra=["--recon_weight", recon_weight, *SGD])
    ref = weights(outs[(8, 1)])
    for split in SPLITS[1:]:
        assert max_difference(weights(outs[split]), ref) <= TOLERANCE, split
        # the logged terms are what one big batch reports, not a micro-batch's share of it
        for key in ("lm_loss", "recon_loss", "loss"):
            assert logged(outs[split], key) == pytest.approx(logged(outs[(8, 1)], key), rel=1e-5), (split, key)


@pytest.mark.parametrize("head,positions", [("transformer", "masked"), ("linear", "masked"), ("transformer", "all")])
def test_split_invariance_holds_for_both_heads_and_target_positions(corpus, tmp_path, head, positions):
    extra = ["--recon_weight", "10", "--recon_head", head, "--recon_positions", positions, *SGD]
    outs = run_splits(corpus, tmp_path, extra=extra, splits=[(8, 1), (2, 4)])
    assert max_difference(weights(outs[(2, 4)]), weights(outs[(8, 1)])) <= TOLERANCE


def test_split_invariance_under_adam(corpus, tmp_path):
    outs = run_splits(corpus, tmp_path, extra=["--recon_weight", "10"], splits=[(8, 1), (2, 4)])
    assert max_difference(weights(outs[(2, 4)]), weights(outs[(8, 1)])) <= ADAM_TOLERANCE


def test_the_reconstruction_gradient_does_not_grow_with_accumulation(corpus, tmp_path):
    """The head's first update: with SGD (no moment normalisation) the update is the gradient
    times the learning rate, so a reconstruction term weighed by the accumulation steps shows
    up as an update that many times larger."""
    extra = ["--recon_weight", "10", "--optim", "sgd", "--max_grad_norm", "0", "--learning_rate", "0.1"]
    updates = {}
    for batch, accumulation in [(8, 1), (2, 4)]:
        out = tmp_path / f"sgd{batch}x{accumulation}"
        train_from_recipe(None, stage15_args(corpus, out, batch, accumulation, steps=1, extra=extra))
        updates[accumulation] = weights(out)["extra.head.proj.weight"]
    fresh = tmp_path / "fresh"
    train_from_recipe(None, stage15_args(corpus, fresh, 8, 1, steps=1, extra=[*extra, "--learning_rate", "0"]))
    start = weights(fresh)["extra.head.proj.weight"]
    step_one, step_four = updates[1] - start, updates[4] - start
    assert step_one.abs().max() > 0
    assert torch.allclose(step_four, step_one, rtol=1e-4, atol=1e-8), float((step_four / step_one).nanmean())


def test_micro_batch_normalisation_is_the_declared_exception(corpus, tmp_path):
    """The authors' per-micro-batch mean: with unequal answer lengths the splits train different
    weights; with equal lengths (every micro-batch has the same token count) they agree."""
    micro = ["--loss_normalization", "micro-batch", "--recon_weight", "10", *SGD]
    unequal = run_splits(corpus, tmp_path / "unequal", extra=micro, splits=[(8, 1), (2, 4)])
    assert max_difference(weights(unequal[(2, 4)]), weights(unequal[(8, 1)])) > 10 * TOLERANCE  # measured 1.1e-5
    assert logged(unequal[(2, 4)], "lm_loss")[0] != pytest.approx(logged(unequal[(8, 1)], "lm_loss")[0], rel=1e-4)
    equal = run_splits(corpus, tmp_path / "equal", extra=micro, splits=[(8, 1), (2, 4)], data="equal.json")
    assert max_difference(weights(equal[(2, 4)]), weights(equal[(8, 1)])) <= TOLERANCE
    # on one micro-batch per step the two normalisations are the same objective
    batch = run_splits(corpus, tmp_path / "batch", extra=["--recon_weight", "10", *SGD], splits=[(8, 1)])
    assert max_difference(weights(batch[(8, 1)]), weights(unequal[(8, 1)])) <= TOLERANCE


ENGINES = {"ddp": [], "zero2": ["zero2.json"], "zero3": ["zero3.json"]}


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_two_processes_with_accumulation_train_what_one_big_batch_does(corpus, tmp_path, engine):
    """2 processes x (batch 2, accumulation 2) against 1 process x (8, 1), reconstruction weight 10."""
    from test_engines import DEEPSPEED, launch

    extra = ["--recon_weight", "10", *SGD] + [a for f in ENGINES[engine] for a in ("--deepspeed", str(DEEPSPEED / f))]
    one = run_splits(corpus, tmp_path, extra=["--recon_weight", "10", *SGD], splits=[(8, 1)])[(8, 1)]
    two = tmp_path / engine
    launch(stage15_args(corpus, two, 2, 2, extra=extra))
    assert max_difference(weights(two), weights(one)) <= TOLERANCE
    for key in ("lm_loss", "recon_loss", "loss"):
        assert logged(two, key) == pytest.approx(logged(one, key), rel=1e-5), key


def test_a_max_length_that_fits_no_sample_fails_before_training_naming_the_shortest(corpus, tmp_path):
    import re

    from victor.config import ConfigError

    with pytest.raises(ConfigError, match="leaves nothing to train on") as err:
        train_from_recipe(None, stage15_args(corpus, tmp_path / "short", 8, 1, extra=["--max_length", "24"]))
    shortest = int(re.search(r"at least (\d+)", str(err.value)).group(1))
    assert not (tmp_path / "short").exists() or not any((tmp_path / "short").iterdir())
    # the number is right: one token less still fails, that many trains
    with pytest.raises(ConfigError, match=f"at least {shortest}"):
        train_from_recipe(None, stage15_args(corpus, tmp_path / "minus", 8, 1, extra=["--max_length", str(shortest - 1)]))
    out = train_from_recipe(None, stage15_args(corpus, tmp_path / "exact", 8, 1, steps=1,
                                               extra=["--max_length", str(shortest)]))
    assert (tmp_path / "exact" / "model.safetensors").is_file() and out == str(tmp_path / "exact")


def test_a_run_that_skipped_everything_fails_at_its_end_naming_the_reason_and_setting(corpus, tmp_path):
    from victor.config import ConfigError

    empty = tmp_path / "no-images"
    empty.mkdir()
    args = ["--stage", "2", "--init_from", str(corpus / "s1"), "--data_path", str(corpus / "chat.json"),
            "--image_root", str(empty), "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "4",
            "--max_steps", "2", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "True",
            "--train_sampling_strategy", "sequential"]
    with pytest.raises(ConfigError, match=r"every sample was skipped; the main reason is 'missing_image' \(8 samples\)"
                                          r": check image_root"):
        train_from_recipe(None, args)
    assert not (tmp_path / "out" / "model.safetensors").exists()
    # above max_skip_fraction by the end, though the in-run window never filled
    half = json.loads((corpus / "chat.json").read_text())
    for record in half[::2]:
        record["image"] = "missing.png"
    (tmp_path / "half.json").write_text(json.dumps(half))
    args[args.index("--image_root") + 1] = str(corpus / "img")
    args[args.index("--data_path") + 1] = str(tmp_path / "half.json")
    with pytest.raises(ConfigError, match=r"4 of 8 samples \(50.0%\) were skipped, above max_skip_fraction=0.1"):
        train_from_recipe(None, args)
    train_from_recipe(None, [*args, "--max_skip_fraction", "0.5"])
    assert (tmp_path / "out" / "model.safetensors").is_file()
