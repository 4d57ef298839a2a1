"""Likelihood scoring: the Scorer against log-probabilities computed by hand with the model's
forward, and the resumable likelihood runner on the world's benchmark files."""
import json

import pytest
import torch
from PIL import Image

from victor.eval.likelihood import candidates, run_likelihood
from victor.eval.registry import get_benchmark
from victor.infer import Scorer, user_message


def by_hand(model, processor, image, prompt, answer):
    """Sum of log p(answer tokens | chat prompt), from one plain forward of the stock model."""
    text = processor.apply_chat_template(user_message(prompt, image is not None), add_generation_prompt=True)
    inputs = processor(text=text + " " + answer, images=image, return_tensors="pt")
    answer_ids = processor.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    ids = inputs["input_ids"][0]
    assert ids[-len(answer_ids):].tolist() == answer_ids
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    logp = torch.log_softmax(logits[-len(answer_ids) - 1:-1], dim=-1)
    return float(logp[torch.arange(len(answer_ids)), torch.tensor(answer_ids)].sum()), len(answer_ids)


def test_scorer_matches_log_probs_by_hand(tiny_llava):
    model, processor = tiny_llava
    model.eval()
    red, blue = Image.new("RGB", (32, 32), (250, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 250))
    prompt = "what colour is the circle ?\nA. red\nB. top left\nAnswer with the option's letter from the given choices directly."
    requests = [(red, prompt, "A"), (red, prompt, "B"), (red, prompt, "red"), (red, prompt, "top left"),
                (blue, "is there a red circle ?", "yes"), (blue, "is there a red circle ?", "no"),
                (None, "how many objects ?", "two"), (None, "how many objects ?", "one red circle")]
    scorer = Scorer(model, processor, batch_size=3)
    got = scorer(*map(list, zip(*requests)))
    for (image, prompt_, answer), (total, n, greedy) in zip(requests, got):
        expected, n_expected = by_hand(model, processor, image, prompt_, answer)
        assert n == n_expected
        assert total == pytest.approx(expected, abs=1e-4)
        assert isinstance(greedy, bool)
    # one request at a time (no shared forward passes, no batching) gives the same numbers
    alone = [scorer([i], [p], [a])[0] for i, p, a in requests]
    assert [round(t, 4) for t, _, _ in alone] == [round(t, 4) for t, _, _ in got]


def test_candidates_per_kind():
    mmb = get_benchmark("mmbench")
    from victor.eval.spec import EvalItem

    item = EvalItem("1", "q", None, "B", {"options": {"A": "red", "B": "blue"}})
    assert candidates(mmb, item) == {"letter:A": "A", "letter:B": "B", "text:A": "red", "text:B": "blue"}
    assert candidates(get_benchmark("pope"), EvalItem("2", "q", None, "no", {})) == {"yes": "yes", "no": "no"}
    assert candidates(get_benchmark("vqav2"), EvalItem("3", "q", None, ["two", "2", "two"], {})) == {"gold": "two"}
    open_rwqa = EvalItem("4", "q", None, "3", {"options": {}, "question_format": "open"})
    assert candidates(get_benchmark("realworldqa"), open_rwqa) == {"gold": "3"}
    with pytest.raises(ValueError, match="judged"):
        candidates(get_benchmark("mmvet"), EvalItem("5", "q", None, "x", {}))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from victor.tiny.scenes import WorldConfig
    from victor.tiny.world import generate_world

    return generate_world(tmp_path_factory.mktemp("w"), WorldConfig(n_train=4, n_val=8, image_size=32))


def oracle(golds, wrong_at=None):
    """A fake loglikelihood that prefers the gold letter / label / option text; counts its calls."""
    calls = []

    def fn(images, prompts, continuations):
        calls.append(len(prompts))
        if wrong_at is not None and len(calls) == wrong_at:
            raise KeyboardInterrupt("simulated kill")
        return [(-0.5 * len(c.split()) if c in golds.get(p, ()) else -3.0 * len(c.split()), len(c.split()), False)
                for p, c in zip(prompts, continuations)]

    fn.calls = calls
    return fn


def test_runner_multiple_choice_resumes_and_scores(world, tmp_path):
    spec = get_benchmark("mmbench")
    items = spec.load(world.mmbench)
    golds = {it.prompt: {it.answer, it.meta["options"][it.answer]} for it in items}
    out = tmp_path / "mmb"
    with pytest.raises(KeyboardInterrupt):
        run_likelihood("mmbench", world.mmbench, None, oracle(golds, wrong_at=2), out, batch_size=5, progress=False)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 5
    fn = oracle(golds)
    summary = run_likelihood("mmbench", world.mmbench, None, fn, out, batch_size=5, progress=False)
    assert sum(fn.calls) == sum(2 * len(it.meta["options"]) for it in items[5:])  # resumed: first batch skipped
    assert summary["scoring"] == "likelihood" and summary["n"] == len(items)
    assert summary["metrics"]["accuracy"] == 1.0 and summary["metrics"]["circular_accuracy"] == 1.0
    assert summary["metrics_option_text"]["accuracy"] == 1.0
    fresh = run_likelihood("mmbench", world.mmbench, None, oracle(golds), tmp_path / "again", batch_size=64,
                           progress=False)
    assert fresh["metrics"] == summary["metrics"]
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert set(record["loglik"]) >= {"letter:A", "text:A"} and record["prediction"] == record["answer"]


def test_runner_yes_no_and_open(world, tmp_path):
    always_yes = lambda images, prompts, conts: [(-1.0 if c == "yes" else -2.0, 1) for c in conts]  # noqa: E731
    pope = run_likelihood("pope", world.pope["random"].parent, world.images, always_yes, tmp_path / "pope",
                          progress=False)
    assert pope["metrics"]["yes_ratio"] == 1.0 and pope["metrics"]["accuracy"] == pytest.approx(0.5)
    flat = lambda images, prompts, conts: [(-2.0 * len(c.split()), len(c.split())) for c in conts]  # noqa: E731
    gqa = run_likelihood("gqa", world.gqa, world.images, flat, tmp_path / "gqa", progress=False)
    assert gqa["metrics"]["gold_mean_loglik"] == pytest.approx(-2.0)
    assert gqa["metrics"]["n_gold_scored"] == gqa["n"] and "category (gold log-lik)" in gqa["tables"]
    with pytest.raises(ValueError, match="generate-scored"):
        from victor.eval.run import run_benchmark

        run_benchmark("gqa", world.gqa, world.images, lambda i, p: ["x"] * len(p), tmp_path / "g2", progress=False)
        run_likelihood("gqa", world.gqa, world.images, flat, tmp_path / "g2", progress=False)


def test_cli_eval_likelihood_with_a_real_checkpoint(tiny_llava, world, tmp_path, capsys):
    from victor.cli import main

    model, processor = tiny_llava
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    main(["eval", "--model", str(tmp_path / "ckpt"), "--benchmark", "pope", "--data",
          str(world.pope["random"].parent), "--image-root", str(world.images), "--scoring", "likelihood",
          "--batch-size", "16"])
    summary = json.loads((tmp_path / "ckpt" / "eval" / "pope-likelihood" / "summary.json").read_text())
    assert summary["scoring"] == "likelihood" and 0.0 <= summary["metrics"]["accuracy"] <= 1.0
    assert "f1_category_mean" in capsys.readouterr().out


def test_compare_prints_log_likelihood_in_nats(tmp_path):
    from victor.eval.run import compare_runs

    for name, value in (("a", -1.5), ("b", -1.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({
            "benchmark": "gqa", "n": 3, "metrics": {"gold_mean_loglik": value}, "report_metrics": ["gold_mean_loglik"]}))
    table = compare_runs([tmp_path / "a", tmp_path / "b"])
    assert "-1.500" in table and "+0.250" in table


def test_a_request_already_scored_is_not_sent_again(world, tmp_path):
    """POPE's three splits share their positive questions: each distinct (image, prompt, answer) goes to
    the model once per run, and every item's record still holds the score of its own request."""
    import hashlib

    spec = get_benchmark("pope")
    items = spec.load(world.pope["random"].parent, world.images)
    sent = []

    def fn(images, prompts, conts):  # a score that depends on the pixels, the prompt and the continuation
        sent.extend((i.tobytes(), p, c) for i, p, c in zip(images, prompts, conts))
        return [(-(hashlib.sha1(i.tobytes() + p.encode() + c.encode()).digest()[0] + 1) / 64, 1)
                for i, p, c in zip(images, prompts, conts)]

    summary = run_likelihood("pope", world.pope["random"].parent, world.images, fn, tmp_path / "pope", batch_size=7,
                             progress=False)
    distinct = {(str(it.image), it.prompt, c) for it in items for c in ("yes", "no")}
    assert len(sent) == len(set(sent)) == len(distinct) < 2 * len(items) == 2 * summary["n"]
    records = [json.loads(line) for line in (tmp_path / "pope" / "predictions.jsonl").read_text().splitlines()]
    by_id = {it.id: it for it in items}
    for r in records:
        with Image.open(by_id[r["id"]].image) as im:
            pixels = im.convert("RGB").tobytes()
        for c in ("yes", "no"):
            expected = -(hashlib.sha1(pixels + r["prompt"].encode() + c.encode()).digest()[0] + 1) / 64
            assert r["loglik"][c] == [expected, 1]
