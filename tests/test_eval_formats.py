"""Benchmark readers on small files in the official layouts, format errors, resume, compare."""
import base64
import csv
import io
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from PIL import Image

from victor.eval import BENCHMARKS, BenchmarkFormatError, get_benchmark
from victor.eval.prompts import MC_SUFFIX, SHORT_ANSWER_SUFFIX
from victor.eval.run import (
    Scoring,
    compare_runs,
    format_summary_table,
    read_predictions,
    run_benchmark,
    run_scoring,
)


def png_b64(color, size=(2, 2)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def save_png(path, color=(0, 0, 255)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (3, 3), color).save(path)
    return path


def write_tsv(path, header, rows):
    # pandas-style TSV: empty cells for NaN, quoted fields when they hold newlines
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


MMB_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image",
              "source", "l2-category", "comment", "split"]
RED, BLUE = png_b64((255, 0, 0)), png_b64((0, 0, 255), size=(4, 2))


@pytest.fixture
def mmbench_tsv(tmp_path):
    rows = [
        [0, "What color is the square?", "The square is painted.", "red", "blue", "green", "", "A",
         "color", RED, "src", "perception", "", "dev"],
        [1, "Which shape?\n(pick one)", "nan", "circle", "square", "", "", "B",
         "shape", BLUE, "src", "perception", "", "dev"],
        [2, "Same image, other question?", "", "yes", "no", "maybe", "never", "D",
         "reasoning", "1", "src", "logic", "", "dev"],  # VLMEvalKit: image of row index 1
    ]
    return write_tsv(tmp_path / "mmbench_dev_en.tsv", MMB_HEADER, rows)


# --------------------------------------------------------------------------------------
# MMBench
# --------------------------------------------------------------------------------------
def test_mmbench_reader_prompts_options_and_images(mmbench_tsv):
    items = BENCHMARKS["mmbench"].load(mmbench_tsv, None)
    assert [it.id for it in items] == ["0", "1", "2"]
    assert items[0].prompt == (
        "The square is painted.\nWhat color is the square?\nA. red\nB. blue\nC. green\n" + MC_SUFFIX)
    # hint "nan" is dropped; the option list stops at the first empty cell
    assert items[1].prompt == "Which shape?\n(pick one)\nA. circle\nB. square\n" + MC_SUFFIX
    assert items[1].meta["options"] == {"A": "circle", "B": "square"}
    assert items[2].meta["options"] == {"A": "yes", "B": "no", "C": "maybe", "D": "never"}
    assert items[0].answer == "A" and items[2].answer == "D"
    assert items[0].meta["category"] == "color" and items[2].meta["l2-category"] == "logic"
    assert items[0].image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert items[2].image.size == (4, 2)  # reused from row index 1
    assert items[2].image.convert("RGB").getpixel((1, 1)) == (0, 0, 255)


def test_mmbench_test_split_without_answer_column(tmp_path):
    header = [c for c in MMB_HEADER if c != "answer"]
    path = write_tsv(tmp_path / "mmbench_test.tsv", header,
                     [[3, "Q?", "", "x", "y", "", "", "cat", RED, "s", "l2", "", "test"]])
    spec = BENCHMARKS["mmbench"]
    items = spec.load(path, None)
    assert items[0].answer is None
    result = spec.score(items, {"3": "A"})
    assert result["metrics"]["n_unlabeled"] == 1 and result["metrics"]["n_scored"] == 0


def test_mmbench_circular_copies_in_file(tmp_path):
    rows = []
    for k in range(4):  # question 5 and question 7, each with 4 rotated copies
        rows.append([5 + k * 1_000_000, "Q5?", "", "a", "b", "c", "d", "ABCD"[k], "X", RED, "", "p", "", "dev"])
        rows.append([7 + k * 1_000_000, "Q7?", "", "a", "b", "c", "d", "ABCD"[(k + 1) % 4], "Y", RED, "", "p", "",
                     "dev"])
    spec = BENCHMARKS["mmbench"]
    items = spec.load(write_tsv(tmp_path / "circ.tsv", MMB_HEADER, rows), None)
    assert len(items) == 8
    preds = {it.id: f"The answer is {it.answer}." for it in items}
    preds["2000005"] = "A"  # wrong on one copy of question 5 (gold C)
    result = spec.score(items, preds)
    assert result["metrics"]["accuracy"] == pytest.approx(7 / 8)
    assert result["metrics"]["circular_accuracy"] == pytest.approx(1 / 2)
    assert result["metrics"]["n_questions"] == 2
    cat = result["tables"]["category"]
    assert cat["X"]["accuracy"] == pytest.approx(0.75) and cat["X"]["circular_accuracy"] == 0.0
    assert cat["Y"]["accuracy"] == 1.0 and cat["Y"]["circular_accuracy"] == 1.0
    assert result["tables"]["l2-category"]["p"]["circular_accuracy"] == pytest.approx(0.5)


def test_mmbench_circular_expansion_rotates_options(mmbench_tsv):
    items = BENCHMARKS["mmbench-circular"].load(mmbench_tsv, None)
    by_id = {it.id: it for it in items}
    assert sorted(by_id, key=int) == ["0", "1", "2", "1000000", "1000001", "1000002", "2000000",
                                      "2000002", "3000002"]
    first = by_id["1000000"]  # copy 1 of "red/blue/green", gold A (red)
    assert first.meta["options"] == {"A": "blue", "B": "green", "C": "red"}
    assert first.answer == "C"
    assert by_id["2000000"].meta["options"] == {"A": "green", "B": "red", "C": "blue"}
    assert by_id["2000000"].answer == "B"
    assert first.prompt.endswith("A. blue\nB. green\nC. red\n" + MC_SUFFIX)
    assert first.image is by_id["0"].image


def test_mmbench_circular_run_cut_by_limit_scores_the_copies_it_has(mmbench_tsv, tmp_path):
    """`victor eval --benchmark mmbench-circular --limit N` can end inside a question's copies: that
    question is judged on the copies that were run, and counts as one question."""
    items = BENCHMARKS["mmbench-circular"].load(mmbench_tsv, None)
    gold = {it.prompt: it.answer for it in items}
    ids = [it.id for it in items]
    assert ids[:5] == ["0", "1000000", "2000000", "1", "1000001"]  # question 0 (3 options), then 1 (2 options)

    def answers(wrong=()):
        def generate(images, prompts):
            return [("A" if gold[p] != "A" else "B") if p in wrong else gold[p] for p in prompts]
        return generate

    run = run_benchmark("mmbench-circular", mmbench_tsv, None, answers(), tmp_path / "right", limit=4,
                        progress=False)
    assert run["n"] == 4 and run["limit"] == 4
    assert run["metrics"]["n_questions"] == 2 and run["metrics"]["circular_accuracy"] == 1.0
    # a wrong answer on the one copy question 1 has fails it; on a copy of question 0, fails that one
    one_copy = [it.prompt for it in items if it.id == "1"]
    run = run_benchmark("mmbench-circular", mmbench_tsv, None, answers(one_copy), tmp_path / "q1", limit=4,
                        progress=False)
    assert run["metrics"]["circular_accuracy"] == 0.5 and run["metrics"]["accuracy"] == 0.75
    copy = [it.prompt for it in items if it.id == "2000000"]
    run = run_benchmark("mmbench-circular", mmbench_tsv, None, answers(copy), tmp_path / "q0", limit=5,
                        progress=False)
    assert run["metrics"]["n_questions"] == 2 and run["metrics"]["circular_accuracy"] == 0.5
    assert run["tables"]["category"]["color"]["circular_accuracy"] == 0.0
    assert run["tables"]["category"]["shape"] == {"n": 2, "accuracy": 1.0, "circular_accuracy": 1.0, "n_questions": 1}


def test_mmbench_submission_tsv(mmbench_tsv, tmp_path):
    spec = BENCHMARKS["mmbench"]
    items = spec.load(mmbench_tsv, None)
    written = spec.write_submission(items, {"0": "A", "1": "B", "2": "C"}, tmp_path / "sub.tsv")
    assert written[0] == str(tmp_path / "sub.tsv")
    with open(tmp_path / "sub.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0][:8] == ["index", "question", "hint", "A", "B", "C", "D", "prediction"]
    assert "image" not in rows[0] and "l2-category" in rows[0]
    assert [r[7] for r in rows[1:]] == ["A", "B", "C"]
    assert rows[2][1] == "Which shape?\n(pick one)"


# --------------------------------------------------------------------------------------
# SEED-Bench
# --------------------------------------------------------------------------------------
def test_seed_reader_and_score(tmp_path):
    data = {
        "question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10},
        "questions": [
            {"answer": "A", "choice_a": "beach", "choice_b": "city", "choice_c": "farm", "choice_d": "desert",
             "data_id": "1454426_2591111986", "data_type": "image", "question": "Where is this?",
             "question_id": "101669", "question_type_id": 1},
            {"answer": "C", "choice_a": "dog", "choice_b": "cat", "choice_c": "bird", "choice_d": "fish",
             "data_id": "4321_99", "data_type": "image", "question": "What animal?",
             "question_id": "101670", "question_type_id": 2},
            {"answer": "B", "choice_a": "run", "choice_b": "jump", "choice_c": "sit", "choice_d": "fly",
             "data_id": "v_abc.mp4", "data_type": "video", "question": "What happens?",
             "question_id": "200001", "question_type_id": 10},
        ],
    }
    path = tmp_path / "SEED-Bench.json"
    path.write_text(json.dumps(data))
    spec = BENCHMARKS["seed"]
    items = spec.load(path, tmp_path / "SEED-Bench-image")
    assert [it.id for it in items] == ["101669", "101670"]  # the video question is skipped
    assert items[0].prompt == "Where is this?\nA. beach\nB. city\nC. farm\nD. desert\n" + MC_SUFFIX
    assert items[0].image == str(tmp_path / "SEED-Bench-image" / "1454426_2591111986")
    assert items[1].meta["question_type"] == "Instance Identity"
    result = spec.score(items, {"101669": "A", "101670": "dog"})
    assert result["metrics"]["accuracy"] == 0.5
    assert result["tables"]["question_type"]["Scene Understanding"]["accuracy"] == 1.0
    assert result["tables"]["question_type"]["Instance Identity"]["accuracy"] == 0.0
    spec.write_submission(items, {"101669": "A.", "101670": "dog"}, tmp_path / "seed.jsonl")
    lines = [json.loads(l) for l in (tmp_path / "seed.jsonl").read_text().splitlines()]
    assert lines == [{"question_id": "101669", "prediction": "A"}, {"question_id": "101670", "prediction": "A"}]


# --------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------
def pope_lines(labels):
    return [{"question_id": i + 1, "image": f"COCO_val2014_{310196 + i:012d}.jpg",
             "text": f"Is there a thing{i} in the image?", "label": lab} for i, lab in enumerate(labels)]


def test_pope_single_file(tmp_path):
    path = write_jsonl(tmp_path / "coco_pope_random.json", pope_lines(["yes", "no", "yes", "no"]))
    spec = BENCHMARKS["pope"]
    items = spec.load(path, "/data/coco/val2014")
    assert items[0].id == "random/1"
    assert items[0].prompt == "Is there a thing0 in the image?\n" + SHORT_ANSWER_SUFFIX
    assert items[0].image == os.path.join("/data/coco/val2014", "COCO_val2014_000000310196.jpg")
    assert items[0].answer == "yes" and items[0].meta["category"] == "random"
    preds = {"random/1": "Yes, there is.", "random/2": "Yes", "random/3": "No, there is not.", "random/4": "No."}
    m = spec.score(items, preds)["metrics"]
    # TP 1, FP 1, FN 1, TN 1
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["yes_ratio"] == 0.5 and m["f1_category_mean"] == 0.5


def test_pope_directory_of_three_files(tmp_path):
    d = tmp_path / "pope"
    d.mkdir()
    write_jsonl(d / "coco_pope_random.json", pope_lines(["yes", "no"]))
    write_jsonl(d / "coco_pope_popular.json", pope_lines(["yes", "no"]))
    write_jsonl(d / "coco_pope_adversarial.json", pope_lines(["yes", "no"]))
    spec = BENCHMARKS["pope"]
    items = spec.load(d, tmp_path)
    assert len(items) == 6 and len({it.id for it in items}) == 6  # question ids repeat across files
    assert {it.meta["category"] for it in items} == {"random", "popular", "adversarial"}
    preds = {it.id: "yes" for it in items}
    preds["adversarial/2"] = "no"  # adversarial: perfect; others: TP1 FP1 -> P 0.5 R 1 F1 2/3
    result = spec.score(items, preds)
    table = result["tables"]["category"]
    assert table["adversarial"]["f1"] == 1.0
    assert table["random"]["f1"] == pytest.approx(2 / 3) and table["popular"]["accuracy"] == 0.5
    assert result["metrics"]["f1_category_mean"] == pytest.approx((1 + 4 / 3) / 3)
    # pooled: TP 3, FP 2, TN 1, FN 0
    assert result["metrics"]["accuracy"] == pytest.approx(4 / 6)
    assert result["metrics"]["f1"] == pytest.approx(2 * 0.6 * 1 / 1.6)
    assert result["metrics"]["yes_ratio"] == pytest.approx(5 / 6)


# --------------------------------------------------------------------------------------
# GQA, VQAv2
# --------------------------------------------------------------------------------------
def test_gqa_questions_json(tmp_path):
    data = {
        "20968379": {"imageId": "n288870", "question": "Is the sky dark?", "answer": "yes",
                     "fullAnswer": "Yes, the sky is dark.", "types": {"structural": "verify", "semantic": "attr",
                                                                      "detailed": "verifyAttr"}},
        "20968380": {"imageId": "n288870", "question": "What is on the table?", "answer": "laptop",
                     "fullAnswer": "The laptop is on the table.",
                     "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
    }
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps(data))
    spec = BENCHMARKS["gqa"]
    items = spec.load(path, tmp_path / "images")
    assert items[0].prompt == "Is the sky dark?\n" + SHORT_ANSWER_SUFFIX
    assert items[0].image == str(tmp_path / "images" / "n288870.jpg")
    result = spec.score(items, {"20968379": "Yes.", "20968380": "a laptop"})
    assert result["metrics"]["accuracy"] == 0.5
    assert result["tables"]["structural"] == {"query": {"n": 1, "accuracy": 0.0}, "verify": {"n": 1, "accuracy": 1.0}}
    spec.write_submission(items, {"20968379": "Yes.", "20968380": "Laptop"}, tmp_path / "gqa_pred.json")
    assert json.loads((tmp_path / "gqa_pred.json").read_text()) == [
        {"questionId": "20968379", "prediction": "yes"}, {"questionId": "20968380", "prediction": "laptop"}]
    # LLaVA's jsonl already ends with the instruction: it is not appended twice
    llava = write_jsonl(tmp_path / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": "20968379", "image": "n288870.jpg", "text": "Is the sky dark?\n" + SHORT_ANSWER_SUFFIX,
         "category": "default"}])
    assert spec.load(llava, tmp_path)[0].prompt == "Is the sky dark?\n" + SHORT_ANSWER_SUFFIX


def test_vqav2_questions_and_annotations(tmp_path):
    questions = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
                 "license": {}, "questions": [
                     {"image_id": 262148, "question": "How many dogs?", "question_id": 262148000},
                     {"image_id": 262148, "question": "Is it sunny?", "question_id": 262148001}]}

    def answers(values):
        return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(values)]

    annotations = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014", "annotations": [
        {"question_id": 262148000, "image_id": 262148, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "3", "answers": answers(["2", "2"] + ["3"] * 8)},
        {"question_id": 262148001, "image_id": 262148, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": answers(["yes"] * 10)}]}
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(questions))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    spec = BENCHMARKS["vqav2"]
    items = spec.load(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", "/coco/val2014")
    assert items[0].image == os.path.join("/coco/val2014", "COCO_val2014_000000262148.jpg")
    assert items[0].prompt == "How many dogs?\n" + SHORT_ANSWER_SUFFIX
    assert len(items[0].answer) == 10 and items[0].meta["answer_type"] == "number"
    assert [it.id for it in spec.load(tmp_path, "/coco")] == ["262148000", "262148001"]  # directory form
    result = spec.score(items, {"262148000": "Two.", "262148001": "Yes"})
    assert result["metrics"]["vqa_accuracy"] == pytest.approx((0.6 + 1.0) / 2)
    wrong = spec.score(items, {"262148000": "Four.", "262148001": "No"})
    assert wrong["metrics"]["vqa_accuracy"] == 0.0 and wrong["tables"]["answer_type"]["yes/no"]["accuracy"] == 0.0
    assert result["tables"]["answer_type"]["number"]["accuracy"] == pytest.approx(0.6)
    spec.write_submission(items, {"262148000": "Two.", "262148001": "Yes"}, tmp_path / "sub.json")
    assert json.loads((tmp_path / "sub.json").read_text()) == [
        {"question_id": 262148000, "answer": "2"}, {"question_id": 262148001, "answer": "yes"}]
    testdev = write_jsonl(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", [
        {"question_id": 1, "image": "COCO_test2015_000000000001.jpg", "text": "What is it?\n" + SHORT_ANSWER_SUFFIX}])
    items = spec.load(testdev, "/coco/test2015")
    assert items[0].answer is None and items[0].prompt == "What is it?\n" + SHORT_ANSWER_SUFFIX
    assert spec.score(items, {"1": "cat"})["metrics"]["n_unlabeled"] == 1


# --------------------------------------------------------------------------------------
# ScienceQA, MMStar, RealWorldQA
# --------------------------------------------------------------------------------------
PROBLEMS = {
    "4": {"question": "Which property do these objects have in common?", "choices": ["shiny", "sticky", "soft"],
          "answer": 2, "hint": "Select the best answer.", "image": "image.png", "task": "closed choice",
          "grade": "grade2", "subject": "natural science", "split": "test"},
    "5": {"question": "Which word is a noun?", "choices": ["run", "dog"], "answer": 1, "hint": "",
          "image": None, "grade": "grade1", "subject": "language science", "split": "test"},
    "6": {"question": "Which map shows Ohio?", "choices": ["left", "right"], "answer": 0, "hint": "",
          "image": "image.png", "grade": "grade4", "subject": "social science", "split": "train"},
}


def test_scienceqa_llava_json_with_problems(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    llava = [
        {"id": "4", "image": "4/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: Select the best answer.\nWhich property do these objects"
                                       " have in common?\nA. shiny\nB. sticky\nC. soft"},
            {"from": "gpt", "value": "C"}]},
        {"id": "5", "conversations": [
            {"from": "human", "value": "Which word is a noun?\nA. run\nB. dog"}, {"from": "gpt", "value": "B"}]},
    ]
    path = tmp_path / "llava_test_CQM-A.json"
    path.write_text(json.dumps(llava))
    spec = BENCHMARKS["scienceqa"]
    items = spec.load(path, tmp_path / "images" / "test")
    assert [it.id for it in items] == ["4"]  # text-only questions are not part of ScienceQA-IMG
    assert items[0].prompt == ("Context: Select the best answer.\nWhich property do these objects have in common?"
                               "\nA. shiny\nB. sticky\nC. soft\n" + MC_SUFFIX)
    assert items[0].answer == "C" and items[0].meta["subject"] == "natural science"
    assert items[0].image == str(tmp_path / "images" / "test" / "4" / "image.png")
    assert spec.score(items, {"4": "C"})["metrics"]["accuracy"] == 1.0
    for wrong in ("A", "B", "The answer is B.", "shiny", "sticky"):  # gold C (soft)
        assert spec.score(items, {"4": wrong})["metrics"]["accuracy"] == 0.0, wrong
    assert spec.score(items, {"4": "soft"})["metrics"]["accuracy"] == 1.0  # the option's text
    assert spec.score(items, {})["metrics"]["n_missing"] == 1


def test_scienceqa_problems_json_and_jsonl(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["4", "5"], "train": ["6"]}))
    spec = BENCHMARKS["scienceqa"]
    items = spec.load(tmp_path, tmp_path / "test")
    assert [it.id for it in items] == ["4"]
    assert items[0].prompt == ("Context: Select the best answer.\nWhich property do these objects have in common?"
                               "\nA. shiny\nB. sticky\nC. soft\n" + MC_SUFFIX)
    assert items[0].image == str(tmp_path / "test" / "4" / "image.png")
    rows = [{"id": "a", "question": "Pick one", "choices": ["x", "y"], "answer": 1, "hint": "",
             "image": png_b64((0, 255, 0)), "subject": "s"},
            {"id": "b", "question": "No image", "choices": ["x", "y"], "answer": 0, "hint": "", "image": None}]
    items = spec.load(write_jsonl(tmp_path / "sqa.jsonl", rows), None)
    assert [it.id for it in items] == ["a"]
    assert items[0].prompt == "Pick one\nA. x\nB. y\n" + MC_SUFFIX and items[0].answer == "B"
    assert items[0].image.convert("RGB").getpixel((0, 0)) == (0, 255, 0)
    two = [*items, *spec.load(tmp_path, tmp_path / "test")]  # "a" (gold B) and "4" (gold C)
    result = spec.score(two, {"a": "B", "4": "A"})
    assert result["metrics"]["accuracy"] == 0.5
    assert result["tables"]["subject"] == {"natural science": {"n": 1, "accuracy": 0.0}, "s": {"n": 1, "accuracy": 1.0}}


def test_mmstar_jsonl_export(tmp_path):
    rows = [
        {"index": 0, "question": "Which option describe the object relationship in the image correctly?\n"
                                 "Options: A: The suitcase is on the book., B: The suitcase is beneath the cat., "
                                 "C: The suitcase is beneath the bed., D: The suitcase is beneath the book.",
         "image": png_b64((9, 9, 9)), "answer": "A", "category": "coarse perception",
         "l2_category": "image scene and topic", "meta_info": {}},
        {"index": 1, "question": "How many birds?\nOptions: A: 1, B: 2, C: 3, D: 4", "image": png_b64((1, 1, 1)),
         "answer": "C", "category": "fine-grained perception", "l2_category": "object counting"},
        {"index": 2, "question": "Count again?\nOptions: A: 1, B: 2, C: 3, D: 4", "image": png_b64((1, 1, 1)),
         "answer": "B", "category": "fine-grained perception", "l2_category": "object counting"},
    ]
    spec = BENCHMARKS["mmstar"]
    items = spec.load(write_jsonl(tmp_path / "mmstar.jsonl", rows), None)
    assert items[0].meta["options"] == {"A": "The suitcase is on the book.", "B": "The suitcase is beneath the cat.",
                                        "C": "The suitcase is beneath the bed.", "D": "The suitcase is beneath the book."}
    assert items[1].prompt == "How many birds?\nOptions: A: 1, B: 2, C: 3, D: 4\n" + MC_SUFFIX
    result = spec.score(items, {"0": "A", "1": "(C)", "2": "A"})
    assert result["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert result["tables"]["l2_category"]["object counting"]["accuracy"] == 0.5
    assert result["metrics"]["l2_macro_accuracy"] == pytest.approx((1.0 + 0.5) / 2)


def test_realworldqa_jsonl_export(tmp_path):
    save_png(tmp_path / "img" / "0.png")
    rows = [
        {"image": "img/0.png", "answer": "B",
         "question": "Which way is the car facing?\n\nA. Left\nB. Right\nC. Towards us\n"
                     "Please answer directly with only the letter of the correct option and nothing else."},
        {"image": {"bytes": png_b64((5, 5, 5)), "path": None}, "answer": "3",
         "question": "How many lanes are there?\nPlease answer directly with a single word or number."},
    ]
    spec = BENCHMARKS["realworldqa"]
    items = spec.load(write_jsonl(tmp_path / "realworldqa.jsonl", rows), None)
    assert items[0].prompt == rows[0]["question"]  # released questions carry their own instruction
    assert items[0].meta["options"] == {"A": "Left", "B": "Right", "C": "Towards us"}
    assert items[0].image == str(tmp_path / "img" / "0.png")
    assert items[1].meta["question_format"] == "open" and items[1].image.size == (2, 2)
    result = spec.score(items, {"0": "B.", "1": "Three."})
    assert result["metrics"]["accuracy"] == 1.0
    assert spec.score(items, {"0": "Left", "1": "4"})["metrics"]["accuracy"] == 0.0


# --------------------------------------------------------------------------------------
# LLM-judged: MM-Vet, LLaVA-Bench in-the-wild
# --------------------------------------------------------------------------------------
def test_mmvet_reader_and_submission(tmp_path):
    data = {"v1_0": {"imagename": "v1_0.png", "capability": ["ocr", "math"],
                     "question": "What is x in the equation?", "answer": "-1 <AND> -5"},
            "v1_1": {"imagename": "v1_1.jpg", "capability": ["rec"], "question": "What is this?", "answer": "a cat"}}
    (tmp_path / "mm-vet.json").write_text(json.dumps(data))
    (tmp_path / "images").mkdir()
    spec = BENCHMARKS["mmvet"]
    items = spec.load(tmp_path, None)
    assert [it.id for it in items] == ["v1_0", "v1_1"]
    assert items[0].prompt == "What is x in the equation?"
    assert items[0].image == str(tmp_path / "images" / "v1_0.png")
    result = spec.score(items, {"v1_0": "x = -1"})
    assert result["scored"] is False and result["metrics"] == {"n_answered": 1, "n_missing": 1}
    spec.write_submission(items, {"v1_0": "x = -1", "v1_1": "cat"}, tmp_path / "sub.json")
    assert json.loads((tmp_path / "sub.json").read_text()) == {"v1_0": "x = -1", "v1_1": "cat"}


def test_llava_wild_reader_and_submission(tmp_path):
    path = write_jsonl(tmp_path / "questions.jsonl", [
        {"image": "001.jpg", "text": "What is the name of this famous sight in the photo?", "category": "conv",
         "question_id": 0},
        {"image": "001.jpg", "text": "Describe this photo in detail.", "category": "detail", "question_id": 1}])
    spec = get_benchmark("llava_wild")
    items = spec.load(path, tmp_path / "images")
    assert items[1].prompt == "Describe this photo in detail." and items[1].meta["category"] == "detail"
    spec.write_submission(items, {"0": "Diamond Head.", "1": "A beach."}, tmp_path / "ans.jsonl", model_id="m")
    lines = [json.loads(l) for l in (tmp_path / "ans.jsonl").read_text().splitlines()]
    assert [set(l) for l in lines] == [{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}] * 2
    assert lines[0]["question_id"] == 0 and lines[0]["text"] == "Diamond Head." and lines[0]["model_id"] == "m"
    assert spec.score(items, {"0": "x"})["scored"] is False


# --------------------------------------------------------------------------------------
# Format errors
# --------------------------------------------------------------------------------------
def test_pope_file_passed_as_mmbench(tmp_path):
    path = write_jsonl(tmp_path / "coco_pope_random.json", pope_lines(["yes"]))
    with pytest.raises(BenchmarkFormatError) as e:
        BENCHMARKS["mmbench"].load(path, None)
    assert "coco_pope_random.json" in str(e.value) and "'index'" in str(e.value)


def test_mmbench_file_passed_as_pope(mmbench_tsv):
    with pytest.raises(BenchmarkFormatError) as e:
        BENCHMARKS["pope"].load(mmbench_tsv, None)
    assert "mmbench_dev_en.tsv" in str(e.value) and "line 1" in str(e.value)


def test_format_errors_name_file_record_and_field(tmp_path, mmbench_tsv):
    bad = pope_lines(["yes", "no"])
    del bad[1]["text"]
    with pytest.raises(BenchmarkFormatError, match=r"coco_pope_random\.json: line 2: missing field 'text'"):
        BENCHMARKS["pope"].load(write_jsonl(tmp_path / "coco_pope_random.json", bad), None)

    seed = {"questions": [{"question_id": "1", "question": "q", "choice_b": "b", "data_id": "x"}]}
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    with pytest.raises(BenchmarkFormatError, match=r"seed\.json: questions\[0\]: missing field 'choice_a'"):
        BENCHMARKS["seed"].load(tmp_path / "seed.json", None)

    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {"data_subtype": "val2014", "questions": [{"image_id": 1, "question": "q", "question_id": 10}]}))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(
        {"annotations": [{"question_id": 10, "answer_type": "other"}]}))
    with pytest.raises(BenchmarkFormatError, match=r"annotations\.json: annotations\[0\]: missing field 'answers'"):
        BENCHMARKS["vqav2"].load(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", None)

    # a POPE directory passed as GQA: the GQA reader wants a JSON dict, not JSON lines
    with pytest.raises(BenchmarkFormatError, match=r"coco_pope_random\.json: line 2: not valid JSON"):
        BENCHMARKS["gqa"].load(tmp_path / "coco_pope_random.json", None)

    rows = list(csv.reader(open(mmbench_tsv, newline="", encoding="utf-8"), delimiter="\t"))
    rows[1][MMB_HEADER.index("image")] = "not-an-index"
    with pytest.raises(BenchmarkFormatError, match=r"bad\.tsv: row 1 \(index 0\): field 'image'"):
        BENCHMARKS["mmbench"].load(write_tsv(tmp_path / "bad.tsv", rows[0], rows[1:]), None)
    assert issubclass(BenchmarkFormatError, ValueError)


# --------------------------------------------------------------------------------------
# run_benchmark: resume, summary, compare
# --------------------------------------------------------------------------------------
@pytest.fixture
def pope_dir(tmp_path):
    d = tmp_path / "pope"
    d.mkdir()
    for cat in ["adversarial", "popular", "random"]:
        write_jsonl(d / f"coco_pope_{cat}.json", pope_lines(["yes", "no", "yes"]))
    images = tmp_path / "val2014"
    for k in range(3):
        save_png(images / f"COCO_val2014_{310196 + k:012d}.jpg", (k * 50, 0, 0))
    return d, images


class FakeGenerate:
    """Answers "yes" when the image's red channel is 0 (deterministic), records its calls."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = [], fail_after

    def __call__(self, images, prompts):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        assert all(im.mode == "RGB" for im in images) and all("<image>" not in p for p in prompts)
        self.calls.append(list(prompts))
        return ["Yes, there is." if im.getpixel((0, 0))[0] == 0 else "No." for im in images]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, pope_dir):
    data, images = pope_dir
    full = run_benchmark("pope", data, images, FakeGenerate(), tmp_path / "full", batch_size=4, progress=False)

    crashing = FakeGenerate(fail_after=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_benchmark("pope", data, images, crashing, tmp_path / "resumed", batch_size=4, progress=False)
    assert len(read_predictions(tmp_path / "resumed" / "predictions.jsonl")) == 4  # first batch flushed
    with open(tmp_path / "resumed" / "predictions.jsonl", "a") as f:
        f.write('{"id": "random/3", "predic')  # a line cut by a crash mid-write

    rerun = FakeGenerate()
    resumed = run_benchmark("pope", data, images, rerun, tmp_path / "resumed", batch_size=4, progress=False)
    assert [len(c) for c in rerun.calls] == [4, 1]  # only the 5 remaining items are generated
    assert resumed == full
    lines = (tmp_path / "resumed" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 9 and len({json.loads(l)["id"] for l in lines}) == 9

    # hand-computed: images 0 (red 0) -> yes, 1, 2 -> no; labels yes, no, yes per category
    # per category: TP 1, FP 0, TN 1, FN 1 -> acc 2/3, P 1, R 0.5, F1 2/3
    assert full["n"] == 9 and full["benchmark"] == "pope"
    assert full["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert full["metrics"]["f1_category_mean"] == pytest.approx(2 / 3)
    assert full["metrics"]["yes_ratio"] == pytest.approx(1 / 3)
    assert full["tables"]["category"]["random"]["recall"] == 0.5
    saved = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert saved == full and saved["data"] == str(data)

    # a finished run re-scores without calling generate at all
    again = FakeGenerate(fail_after=0)
    assert run_benchmark("pope", data, images, again, tmp_path / "full", progress=False) == full
    with pytest.raises(ValueError, match="refusing to resume"):
        run_benchmark("gqa", data, images, again, tmp_path / "full", progress=False)


def test_a_scoring_mode_plugs_into_the_one_runner(tmp_path, pope_dir):
    """The runner, not the mode, owns run_info, resume, batching and the summary's header."""
    data, images = pope_dir

    class Constant(Scoring):
        name = "constant"

        def __init__(self, fail_at=None):
            self.batches, self.fail_at = [], fail_at

        def predict(self, spec, batch):
            self.batches.append(len(batch))
            if len(self.batches) == self.fail_at:
                raise RuntimeError("simulated crash")
            return [{"id": it.id, "prediction": "yes"} for it in batch]

        def summarize(self, spec, items, records, output_dir):
            return {"metrics": spec.score(items, {i: r["prediction"] for i, r in records.items()})["metrics"]}

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_scoring("pope", data, images, Constant(fail_at=2), tmp_path / "c", batch_size=4, progress=False)
    mode = Constant()
    summary = run_scoring("pope", data, images, mode, tmp_path / "c", batch_size=4, progress=False)
    assert mode.batches == [4, 1]  # the first batch was kept
    assert list(summary)[:8] == ["benchmark", "kind", "scoring", "data", "image_root", "n", "limit", "metrics"]
    assert summary["scoring"] == "constant" and summary["metrics"]["yes_ratio"] == 1.0
    assert json.loads((tmp_path / "c" / "run_info.json").read_text())["scoring"] == "constant"
    with pytest.raises(ValueError, match="constant-scored run"):
        run_benchmark("pope", data, images, FakeGenerate(), tmp_path / "c", progress=False)


def test_run_mmbench_writes_predictions_and_submission(tmp_path, mmbench_tsv):
    def generate(images, prompts):
        return ["A" for _ in prompts]

    summary = run_benchmark("mmbench", mmbench_tsv, None, generate, tmp_path / "out", batch_size=2,
                            limit=2, progress=False)
    assert summary["n"] == 2 and summary["metrics"]["accuracy"] == 0.5
    assert summary["submission"][0] == "submission.tsv" and (tmp_path / "out" / "submission.tsv").exists()
    rec = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert rec["id"] == "0" and rec["prediction"] == "A" and rec["answer"] == "A"
    assert rec["meta"]["category"] == "color" and "_row" not in rec["meta"]
    text = format_summary_table(summary)
    assert "circular_accuracy" in text and "50.00" in text and "category" in text


def _summary(path, bench, metrics, report):
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(
        {"benchmark": bench, "n": 10, "metrics": metrics, "report_metrics": report, "tables": {}}))


def test_compare_runs_side_by_side(tmp_path):
    _summary(tmp_path / "run_a" / "pope", "pope", {"f1_category_mean": 0.80, "accuracy": 0.75}, ["f1_category_mean",
                                                                                                  "accuracy"])
    _summary(tmp_path / "run_a" / "mmbench", "mmbench", {"circular_accuracy": 0.5, "accuracy": 0.6},
             ["circular_accuracy", "accuracy"])
    _summary(tmp_path / "run_b" / "pope", "pope", {"f1_category_mean": 0.85, "accuracy": 0.7}, ["f1_category_mean",
                                                                                                 "accuracy"])
    out = compare_runs([tmp_path / "run_a", tmp_path / "run_b"])
    lines = out.splitlines()
    assert lines[0].split() == ["benchmark", "metric", "run_a", "run_b", "delta"]
    rows = [l.split() for l in lines[1:]]
    assert ["mmbench", "circular_accuracy", "50.00", "-", "-"] in rows
    assert ["pope", "f1_category_mean", "80.00", "85.00", "+5.00"] in rows
    assert ["pope", "accuracy", "75.00", "70.00", "-5.00"] in rows
    # summary.json files and single benchmark directories work too; no delta for 3 runs
    out3 = compare_runs([tmp_path / "run_a" / "pope" / "summary.json", tmp_path / "run_b" / "pope",
                         tmp_path / "run_a" / "pope"])
    assert "delta" not in out3.splitlines()[0] and len(out3.splitlines()) == 3
