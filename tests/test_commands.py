"""`victor synth`, `victor eval` and `victor bench step` as a user runs them: subprocesses, tiny sizes."""
import json
import os
import re
import subprocess
import sys

import pytest

from victor.eval import BENCHMARKS
from victor.model.assemble import build_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def victor(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "victor.cli", *args], capture_output=True, text=True, timeout=900,
                          env=ENV, cwd=cwd, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmd") / "world"
    out = victor("synth", "--output", str(root), "--n-train", "12", "--n-val", "4", "--seed", "1",
                 "--llm-pretrain-steps", "3", "--vision-pretrain-steps", "2")
    listed = dict(re.findall(r"^  (\w+) +(.+)$", out, re.MULTILINE))
    return root, listed


@pytest.mark.slow
def test_synth_writes_the_world_it_lists(world):
    root, listed = world
    assert {"stage1", "stage15", "stage2", "val_qa", "mmbench", "pope", "vision", "llm"} <= set(listed)
    for name in ("stage1", "stage15", "stage2", "val_qa", "mmbench", "vision", "llm"):
        assert os.path.exists(listed[name]) and listed[name].startswith(str(root)), name
    assert len(json.loads(open(listed["stage1"]).read())) == 12
    built = json.loads((root / "backbones" / "victor_backbones.json").read_text())
    assert (built["llm_pretrain_steps"], built["vision_pretrain_steps"]) == (3, 2)
    assert len(list((root / "images").glob("val_*.png"))) == 4
    rows = open(listed["mmbench"], encoding="utf-8").read().splitlines()
    assert rows[0].startswith("index\t") and len(rows) > 4


@pytest.mark.slow
def test_eval_command_scores_a_saved_checkpoint_with_a_limit(world, tmp_path):
    root, listed = world
    model, processor = build_model(listed["vision"], listed["llm"], vision_feature_layer=-1)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval"
    printed = victor("eval", "--model", str(tmp_path / "model"), "--benchmark", "mmbench", "--data",
                     listed["mmbench"], "--limit", "6", "--batch-size", "4", "--max-new-tokens", "2",
                     "--output", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "mmbench" and summary["n"] == 6 and summary["limit"] == 6
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and all(isinstance(p["prediction"], str) for p in predictions)
    # the summary scores exactly the first 6 items of the file with the predictions written
    spec = BENCHMARKS["mmbench"]
    items = spec.load(listed["mmbench"], None)[:6]
    assert [p["id"] for p in predictions] == [it.id for it in items]
    assert summary["metrics"] == spec.score(items, {p["id"]: p["prediction"] for p in predictions})["metrics"]
    assert summary["metrics"]["n_scored"] == 6
    assert "mmbench  n=6" in printed and "circular_accuracy" in printed and (out / "submission.tsv").is_file()


def test_bench_step_prints_one_row_per_variant():
    printed = victor("bench", "step", "--batch", "2", "--image-size", "32", "--patch", "8", "--vision-hidden", "16",
                     "--hidden", "32", "--layers", "1", "--pool-size", "32", "--repeats", "1", "--threads", "1")
    lines = printed.strip().splitlines()  # (DeepSpeed, when installed, may print a line first)
    start = next(i for i, line in enumerate(lines) if line.startswith("batch "))
    assert lines[start].startswith("batch 2 x 16 visual tokens, LLM hidden 32 x 1 layers, pool 32, 1 threads")
    assert lines[start + 1].split() == ["variant", "ms/step", "x", "plain"]
    rows = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
            for m in (re.match(r"(.+?)\s+([\d.]+)\s+([\d.]+)$", line) for line in lines[start + 2:]) if m}
    assert list(rows) == ["plain LLaVA step"] + [f"stage 1.5 ({m}, {a})" for m in ("hungarian", "nearest")
                                                 for a in ("causal", "bidirectional-visual")]
    assert rows["plain LLaVA step"][1] == 1.0 and all(ms > 0 for ms, _ in rows.values())


def _end_group_worker(rank, init_file, out_dir):
    import json
    import time

    import torch.distributed as dist

    from victor.cli import _end_process_group

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if rank == 0:
        time.sleep(1.5)  # rank 0 still writes the stage record while rank 1 is done
    arrived = time.time()
    _end_process_group(wait_for_peers=True)
    with open(f"{out_dir}/{rank}.json", "w") as f:
        json.dump({"arrived": arrived, "left": time.time(), "still_initialized": dist.is_initialized()}, f)


@pytest.mark.slow
def test_a_finished_rank_waits_for_the_others_before_tearing_down_the_group(tmp_path):
    """The CI abort ("terminate called without an active exception" on rank 0 after a 2-process
    run): a rank that finished early left while rank 0 still wrote. Now every rank meets first."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_end_group_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert not r0["still_initialized"] and not r1["still_initialized"]
    assert r1["left"] >= r0["arrived"]  # rank 1 left only once rank 0 had arrived
