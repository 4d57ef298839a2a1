"""`victor eval --suite llava-1.5`: nine benchmarks from a folder laid out as LLaVA's playground/data/eval.

The layout is written here with a few questions per benchmark, in each file's released format.
An oracle `generate` (the gold answer, found by the question's unique word) must score 100 on
every scored column; the tiny checkpoint runs the whole suite through the command line.
"""
import base64
import csv
import io
import json

import pytest
from PIL import Image

from victor.cli import main
from victor.eval.prompts import MC_SUFFIX_CN
from victor.eval.suite import SUITES, format_suite, published, run_suite

ORACLE = {}  # unique word in a question -> the answer that is right


def image(path, color=(200, 30, 30), size=(40, 28)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def b64_png(color):
    buf = io.BytesIO()
    Image.new("RGB", (30, 20), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def ask(word, answer):
    ORACLE[word] = answer
    return word


def mmbench(path, lang):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
              "l2-category", "comment", "split"]
    rows = []
    for i, answer in enumerate("ABC"):
        question = f"{ask(f'{lang}mmb{i}', answer)} what colour ?" if lang == "en" else f"{ask(f'{lang}mmb{i}', answer)} 什么颜色？"
        rows.append([i, question, "nan", "red", "blue", "green", "", answer, "color", b64_png((i * 80, 0, 0)),
                     "src", "perception", "", "dev"])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)


def write_layout(root):
    """LLaVA's playground/data/eval with 2-3 questions per benchmark."""
    mmbench(root / "mmbench" / "mmbench_dev_20230712.tsv", "en")
    mmbench(root / "mmbench_cn" / "mmbench_dev_cn_20231003.tsv", "cn")
    seed = root / "seed_bench"
    image(seed / "SEED-Bench-image" / "1454426_2591111986.jpg")
    image(seed / "SEED-Bench-video-image" / "v1229_middle.png")
    jsonl(seed / "llava-seed-bench.jsonl", [
        {"image": "SEED-Bench-image/1454426_2591111986.jpg", "question_id": 101669, "category": "Scene Understanding",
         "text": f"{ask('seedimg', 'B')} where ?\nA. beach\nB. city\nC. farm\nD. desert\n"
                 "Answer with the option's letter from the given choices directly."},
        {"image": "SEED-Bench-video-image/v1229_middle.png", "question_id": 200001, "category": "Action Recognition",
         "text": f"{ask('seedvid', 'D')} action ?\nA. run\nB. jump\nC. sit\nD. fly\n"
                 "Answer with the option's letter from the given choices directly."}])
    (seed / "SEED-Bench.json").write_text(json.dumps({
        "question_type": {"Scene Understanding": 1, "Action Recognition": 10},
        "questions": [{"question_id": "101669", "answer": "B", "data_type": "image", "question_type_id": 1},
                      {"question_id": "200001", "answer": "D", "data_type": "video", "question_type_id": 10}]}))
    image(root / "mm-vet" / "images" / "v1_0.png")
    jsonl(root / "mm-vet" / "llava-mm-vet.jsonl", [{"question_id": 0, "image": "v1_0.png", "text": "what is it ?"}])
    sqa = root / "scienceqa"
    image(sqa / "images" / "test" / "4" / "image.png")
    (sqa / "problems.json").write_text(json.dumps({"4": {"question": "q", "choices": ["shiny", "soft"], "answer": 1,
                                                         "hint": "", "image": "image.png", "subject": "natural science",
                                                         "split": "test"}}))
    (sqa / "pid_splits.json").write_text(json.dumps({"test": ["4"]}))
    (sqa / "llava_test_CQM-A.json").write_text(json.dumps([{"id": "4", "image": "4/image.png", "conversations": [
        {"from": "human", "value": f"<image>\n{ask('sqaq', 'B')} which ?\nA. shiny\nB. soft"},
        {"from": "gpt", "value": "B"}]}]))
    image(root / "vqav2" / "test2015" / "COCO_test2015_000000000001.jpg")
    jsonl(root / "vqav2" / "llava_vqav2_mscoco_test-dev2015.jsonl", [
        {"question_id": 1000, "image": "COCO_test2015_000000000001.jpg",
         "text": "how many ?\nAnswer the question using a single word or phrase.", "category": "default"}])
    for n, split in enumerate(("random", "popular", "adversarial")):
        rows = []
        for k, label in enumerate(("yes", "no")):
            name = f"COCO_val2014_{n * 10 + k:012d}.jpg"
            image(root / "pope" / "val2014" / name)
            rows.append({"question_id": k + 1, "image": name, "label": label,
                         "text": f"is there a {ask(f'pope{split}{k}', label)} in the image ?"})
        jsonl(root / "pope" / "coco" / f"coco_pope_{split}.json", rows)
    gqa = root / "gqa"
    image(gqa / "data" / "images" / "n161313.jpg")
    (gqa / "data" / "testdev_balanced_questions.json").write_text(json.dumps({
        "201307251": {"imageId": "n161313", "question": f"{ask('gqaq', 'left')} where is the cup ?", "answer": "left",
                      "types": {"structural": "query", "semantic": "rel"}}}))
    jsonl(gqa / "llava_gqa_testdev_balanced.jsonl", [{"question_id": "201307251", "image": "n161313.jpg",
                                                     "text": "where is the cup ?"}])
    wild = root / "llava-bench-in-the-wild"
    image(wild / "images" / "001.jpg")
    jsonl(wild / "questions.jsonl", [{"question_id": 0, "image": "001.jpg", "text": "describe it .",
                                      "category": "detail"}])
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return write_layout(tmp_path_factory.mktemp("eval"))


def oracle(images, prompts, max_new_tokens):
    return [next((a for w, a in ORACLE.items() if w in p.split()), "i do not know") for p in prompts]


def test_oracle_scores_every_scored_column_100(layout, tmp_path):
    result = run_suite("llava-1.5", layout, oracle, tmp_path / "out", progress=False)
    status = {c: r["status"] for c, r in result["columns"].items()}
    assert status == {"MMBench": "scored", "MMBench-CN": "scored", "SEED": "scored", "MM-Vet": "judge",
                      "SQA-image": "scored", "VQAv2": "upload", "POPE": "scored", "GQA": "scored", "LLaVA-W": "judge"}
    assert all(r["value"] == 100.0 for r in result["columns"].values() if r["status"] == "scored")
    assert result["columns"]["SEED"]["n"] == 2  # the video question (middle frame) counts, as in LLaVA's SEED
    assert result["columns"]["POPE"]["n"] == 6
    cn = [json.loads(line) for line in (tmp_path / "out" / "mmbench-cn" / "predictions.jsonl").open()]
    assert all(r["prompt"].endswith("\n" + MC_SUFFIX_CN) for r in cn)
    for bench, name in (("mmvet", "mmvet_submission.json"), ("llava-wild", "llava_wild_answers.jsonl"),
                        ("vqav2", "vqav2_submission.json")):
        assert (tmp_path / "out" / bench / name).is_file()
    assert json.loads((tmp_path / "out" / "suite_summary.json").read_text())["columns"]["GQA"]["value"] == 100.0

    text = format_suite(result)
    assert text.splitlines()[2].split() == ["ours", "100.0", "100.0", "100.0", "judge", "100.0", "upload", "100.0",
                                            "100.0", "judge"]
    assert "ViCToR-7B (Croc-7B)  69.1  60.5  63.0  36.8  72.3  80.1  86.9  63.5  73.3".split() == \
        [line for line in text.splitlines() if line.startswith("ViCToR")][0].split()
    assert "MM-Vet: judge: wrote" in text and "GPT-4 judge" in text and "EvalAI" in text


def test_published_numbers_and_missing_columns(tmp_path):
    rows = {r["name"]: r["scores"] for r in published("llava-1.5")["rows"]}
    assert list(rows["LLaVA-1.5-7B"].values()) == [64.3, 58.3, 58.6, 31.1, 66.8, 78.5, 85.9, 62.0, 65.4]
    assert [e.column for e in SUITES["llava-1.5"]] == published("llava-1.5")["columns"]
    write_layout(tmp_path / "partial")
    import shutil

    shutil.rmtree(tmp_path / "partial" / "gqa")
    result = run_suite("llava-1.5", tmp_path / "partial", oracle, tmp_path / "out", progress=False, limit=1)
    assert result["columns"]["GQA"]["status"] == "missing" and result["columns"]["POPE"]["n"] == 1
    assert "GQA: missing: none of gqa/data/testdev_balanced_questions.json" in format_suite(result)


def test_cli_suite_on_a_tiny_checkpoint(tiny_llava, layout, tmp_path, capsys):
    model, processor = tiny_llava
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    main(["eval", "--suite", "llava-1.5", "--data-root", str(layout)])  # no model: the layout check
    check = capsys.readouterr().out
    assert "missing" not in check and "mmbench_cn/mmbench_dev_cn_20231003.tsv" in check and "LLaVA-1.5-7B" in check
    main(["eval", "--suite", "llava-1.5", "--data-root", str(layout), "--model", str(tmp_path / "ckpt"),
          "--max-new-tokens", "3", "--output", str(tmp_path / "suite")])
    out = capsys.readouterr().out
    print(out)
    lines = out.splitlines()
    ours = next(line for line in lines if line.startswith("ours (ckpt)")).split()
    assert len(ours) == 2 + 9 and ours[5] == "judge" and ours[7] == "upload" and ours[10] == "judge"
    assert any(line.startswith("ViCToR-7B (Croc-7B)") for line in lines)
    assert any(line.startswith("LLaVA-1.5-7B") for line in lines)
    assert (tmp_path / "suite" / "suite_summary.json").is_file()
    with pytest.raises(SystemExit, match="unknown suite"):
        main(["eval", "--suite", "nope", "--data-root", str(layout)])
