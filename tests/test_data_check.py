"""`victor data check`: the broken corpus counted exactly, in one process and in several, from
the command line with its report and exit codes."""
import json

import pytest
from broken_corpus import MAX_LENGTH, write_corpus

from victor.cli import main
from victor.data.check import CheckOptions, check_dataset

COLLATOR_REASONS = {"image_beyond_max_length", "answer_beyond_max_length", "truncated_text"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def processor_dir(tiny_llava, tmp_path_factory):
    """What a previous stage leaves: a saved processor and the model's config."""
    llava, processor = tiny_llava
    out = tmp_path_factory.mktemp("stage")
    processor.save_pretrained(out)
    llava.config.save_pretrained(out)
    return out


def test_check_without_processor_counts_the_datasets_skips(corpus):
    report = check_dataset(CheckOptions(corpus.data.split(","), str(corpus.images)), progress=False,
                           max_skip_fraction=0.5)
    expected = {r: n for r, n in corpus.expected.items() if r not in COLLATOR_REASONS}
    assert report["counts"] == expected and not report["encoded"]
    assert (report["records"], report["skipped"]) == (corpus.records, sum(expected.values()))
    assert report["passed"] and report["skip_fraction"] == pytest.approx(sum(expected.values()) / corpus.records)
    first = report["examples"]["bad_record"][0]
    assert first == {"where": f"{corpus.data.split(',')[0]}[0]", "id": None, "field": "record",
                     "detail": "expected a JSON object, got str 'just a string'"}
    assert [e["id"] for e in report["examples"]["turn_order"]] == [
        "gpt_only_with_image", "starts_with_gpt", "unanswered_last_turn"]
    assert len(report["examples"]["bad_record"]) == 5  # the first five of ten


@pytest.mark.parametrize("workers", [1, 2])
def test_check_with_processor_counts_what_training_counts(corpus, processor_dir, workers):
    """The same numbers as the corpus trained through stage 2 (test_data_corpus.py)."""
    options = CheckOptions(corpus.data.split(","), str(corpus.images), str(processor_dir), "chat", MAX_LENGTH)
    report = check_dataset(options, workers=workers, progress=False, max_skip_fraction=0.5)
    assert report["counts"] == dict(corpus.expected) and report["encoded"]
    assert report["usable"] == corpus.records - corpus.skipped
    assert report["examples"]["truncated_text"][0]["id"] == "answer_too_long"


def test_cli_prints_writes_the_report_and_exits_by_the_threshold(corpus, processor_dir, tmp_path, capsys):
    args = ["data", "check", *corpus.data.split(","), "--image-root", str(corpus.images), "--workers", "1",
            "--processor", str(processor_dir), "--max-length", str(MAX_LENGTH), "--report", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit) as info:
        main(args + ["--max-skip-fraction", "0.1"])
    assert info.value.code == 1
    out = capsys.readouterr().out
    fraction = corpus.skipped / corpus.records
    assert f"usable {corpus.records - corpus.skipped}, skipped {corpus.skipped} ({fraction:.2%})" in out
    assert "gpt_only_with_image" in out and "truncated_text" in out and "(kept)" in out
    assert f"FAILED: {fraction:.2%} skipped, max_skip_fraction 10.00%" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["counts"] == dict(corpus.expected) and report["passed"] is False
    main(args + ["--max-skip-fraction", "0.5"])  # passes: returns normally
    assert "passed:" in capsys.readouterr().out


def test_cli_unusable_inputs_exit_2_with_a_message(corpus, tmp_path, capsys):
    (tmp_path / "pope.jsonl").write_text('{"question_id": 1, "text": "is there a cat?"}\n')
    for argv, words in [
        ([str(tmp_path / "pope.jsonl")], "no record has a 'conversations' field"),
        ([str(tmp_path / "none.json")], "no such data file"),
        ([corpus.data, "--image-root", str(tmp_path / "nope")], f"image-root {tmp_path / 'nope'}: no such directory"),
        ([corpus.data, "--max-skip-fraction", "2"], "max_skip_fraction=2.0 must be in [0, 1]"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["data", "check", *argv, "--workers", "1"])
        assert info.value.code == 2 and words in capsys.readouterr().err
