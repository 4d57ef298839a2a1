"""Every metric of victor.eval.metrics against hand-computed values."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest

from victor.eval import metrics as M

OPTIONS = {"A": "red", "B": "blue", "C": "light blue", "D": "a cat"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("[C]", "C"),
        ("**B**", "B"),
        ("B) blue", "B"),
        ("B. blue", "B"),
        ("B: blue", "B"),
        ("B blue", "B"),
        ("b", "B"),
        ("b.", "B"),
        ("(c)", "C"),
        ("b) blue", "B"),
        ("The answer is B", "B"),
        ("The answer is B.", "B"),
        ("Answer: b", "B"),
        ("answer: (d)", "D"),
        ("The correct option is (C).", "C"),
        ("Option D", "D"),
        ("I think C is right.", "C"),
        ("The answer is B, not C", "B"),
        ("blue", "B"),  # option text, unique exact match
        ("Blue.", "B"),
        ("light blue", "C"),  # "blue" is inside "light blue": the more specific option wins
        ("It is red.", "A"),
        ("a cat", "D"),  # the article "a" is not option A
        ("A cat", "D"),
        ("The answer is a cat", "D"),
        ("A", "A"),
        ("a", "A"),
        ("B or C", None),  # ambiguous
        ("E", None),  # not an option
        ("The answer is E", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("I don't know", None),
        ("green", None),
        # cases each rule alone decides (found by mutation testing, see docs/testing.md)
        ("B. Not C.", "B"),  # a delimited leading letter wins over other letters in the text
        ("**B or C", None),  # markdown before an undelimited letter is not a delimiter
        ("b) the second one", "B"),
        ("(c) the third one", "C"),
        ("'b'", "B"),
        ("`b`", "B"),
        ("the answer is b.", "B"),
        ("the answer is b, the blue one", "B"),
        ("the answer is b) blue", "B"),
        ("the answer is b] blue", "B"),
        ("the answer is b: blue", "B"),
        ("the answer is b; blue", "B"),
        ("the answer is b!", "B"),
        # the same delimiters where no option text could rescue a missed keyword
        ("the answer is b)", "B"),
        ("the answer is b]", "B"),
        ("the answer is b, surely", "B"),
        ("the answer is b: sure", "B"),
        ("the answer is b; sure", "B"),
        ("The answer is A cat.", "D"),  # "A" followed by a lowercase word is the article
        ("Option E is wrong; the answer is B, not C", "B"),  # a keyword naming no option is passed over
        ("Either B or C, the blue one", None),  # two standalone letters: ambiguous, whatever the text says
        ("It is light blue.", "C"),  # "blue" inside "light blue": the more specific option wins
    ],
)
def test_extract_choice_table(text, expected):
    assert M.extract_choice(text, OPTIONS) == expected


def test_extract_choice_option_texts_edge_cases():
    assert M.extract_choice("blue", {"A": "blue", "B": "Blue", "C": "red"}) is None  # two options, same text
    assert M.extract_choice("green", {"A": "?", "B": "blue"}) is None  # an option with no words matches nothing
    assert M.extract_choice("none", {"A": None, "B": "blue"}) is None  # a missing option text is not "none"
    assert M.extract_choice("a t shirt", {"A": "t-shirt", "B": "hat"}) == "A"  # punctuation is a space
    nine = {letter: f"thing {letter.lower()}" for letter in "ABCDEFGHI"} | {"C": "cats"}
    assert M.extract_choice("I like cats", nine) == "C"  # "I" + lowercase word is the pronoun, not option I


def test_extract_choice_respects_number_of_options():
    two = {"A": "yes", "B": "no"}
    assert M.extract_choice("C", two) is None
    assert M.extract_choice("no", two) == "B"
    assert M.extract_choice("Yes, it is.", two) == "A"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes", "yes"),
        ("Yes, there is a dog in the image.", "yes"),
        ("No", "no"),
        ("No, there is no dog.", "no"),
        ("No,", "no"),  # comma dropped before splitting
        ("There is no dog in the image.", "no"),
        ("The dog is not visible", "no"),
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # case-sensitive word test, as in LLaVA eval_pope.py
        ("Nope", "yes"),
        ("", "yes"),
        (None, "yes"),
        ("There is\nno dog", "yes"),  # the reference splits on single spaces only
    ],
)
def test_pope_yes_no(text, expected):
    assert M.pope_yes_no(text) == expected


def test_binary_metrics_hand_computed():
    preds = ["yes", "yes", "yes", "no", "yes", "no", "no", "no"]
    golds = ["yes", "yes", "no", "yes", "no", "no", "no", "no"]
    m = M.binary_metrics(preds, golds)
    # TP = 2 (0, 1), FP = 2 (2, 4), FN = 1 (3), TN = 3 (5, 6, 7)
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["n"]) == (2, 2, 1, 3, 8)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)  # 2 * 0.5 * (2/3) / (0.5 + 2/3)
    assert m["yes_ratio"] == pytest.approx(0.5)


def test_binary_metrics_degenerate_is_zero_not_error():
    m = M.binary_metrics(["no", "no"], ["no", "no"])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == 1.0 and m["yes_ratio"] == 0.0
    empty = M.binary_metrics([], [])
    assert (empty["n"], empty["accuracy"], empty["yes_ratio"], empty["f1"]) == (0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"preds \(1\) and golds \(2\) differ in length"):
        M.binary_metrics(["yes"], ["yes", "no"])


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two dogs.", "2 dogs"),
        ("The cat's toy", "cat's toy"),
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not spaced
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("yes!", "yes"),
        ("Yes", "yes"),
        ("dont know", "don't know"),
        ("left-hand", "left hand"),  # mark not touching a space -> space
        ("t - shirt", "t shirt"),  # mark touching a space -> deleted
        ("A man", "man"),
        ("an apple", "apple"),
        ("none", "0"),
        ("  ten\n", "10"),
        ("Whats up?", "what's up"),
        ("t-shirt -red", "tshirt red"),  # a mark touching a space anywhere is deleted everywhere
        ("t-shirt- red", "tshirt red"),
        ("red\tcar", "red car"),
        ("t-shirt\n-red", "tshirt red"),  # newline and tab become spaces before the punctuation rule
        ("t-shirt\t-red", "tshirt red"),
        (None, ""),
    ],
)
def test_normalize_vqa_answer(raw, normalised):
    assert M.normalize_vqa_answer(raw) == normalised


def test_vqa_soft_accuracy_leave_one_out_differs_from_simple_min():
    # 2 of 10 annotators said "red": leaving out a "red" annotator (2 ways) leaves 1 match
    # (1/3), leaving out a "blue" one (8 ways) leaves 2 matches (2/3): (2/3 + 16/3) / 10 = 0.6
    answers = ["red", "red"] + ["blue"] * 8
    assert M.vqa_soft_accuracy("red", answers) == pytest.approx(0.6)
    assert min(1, 2 / 3) == pytest.approx(0.6667, abs=1e-4)  # the naive formula would say 0.667
    # 3 matches: 3 subsets keep 2 (2/3), 7 keep 3 (1) -> (2 + 7) / 10 = 0.9, not 1.0
    assert M.vqa_soft_accuracy("Two.", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    # 4 matches: every subset keeps >= 3 -> 1.0
    assert M.vqa_soft_accuracy("2", ["two"] * 4 + ["3"] * 6) == pytest.approx(1.0)
    # 1 match: 9 subsets keep it (1/3), 1 loses it (0) -> 0.3
    assert M.vqa_soft_accuracy("A dog", ["dog"] + ["cat"] * 9) == pytest.approx(0.3)
    assert M.vqa_soft_accuracy("bird", ["dog"] * 10) == 0.0
    with pytest.raises(ValueError, match="^vqa_soft_accuracy needs at least one reference answer$"):
        M.vqa_soft_accuracy("dog", [])


def test_gqa_exact_match_and_short_answers():
    assert M.gqa_exact_match("Yes.", "yes")
    assert M.gqa_exact_match(" Table ", "table")
    assert not M.gqa_exact_match("the table", "table")  # no article removal in GQA
    assert not M.gqa_exact_match("yes", None)
    assert M.normalize_gqa_answer("Left.") == "left"
    assert M.normalize_short_answer("Three.") == "3"
    assert M.normalize_short_answer("none") == "none"
    assert M.normalize_gqa_answer(None) == "" and not M.gqa_exact_match(None, "None")
    assert M.normalize_gqa_answer("TAX.") == "tax"


def test_accuracy_and_grouping():
    assert M.accuracy([True, False, True, True]) == pytest.approx(0.75)
    assert M.accuracy([0.6, 0.9]) == pytest.approx(0.75)
    assert M.accuracy([]) == 0.0
    table = M.grouped_accuracy(["b", "a", "b", None], [1, 0, 0, 1])
    assert list(table) == ["a", "b", "unknown"]
    assert table["a"] == {"n": 1, "accuracy": 0.0}
    assert table["b"] == {"n": 2, "accuracy": 0.5}
    assert table["unknown"] == {"n": 1, "accuracy": 1.0}
    with pytest.raises(ValueError, match=r"groups \(1\) and correct \(2\) differ in length"):
        M.grouped_accuracy(["a"], [1, 0])


def test_circular_accuracy_three_of_four_copies_fails_the_question():
    rows = [
        (5, True), (1_000_005, True), (2_000_005, False), (3_000_005, True),  # 3 of 4 right
        (7, True), (1_000_007, True), (2_000_007, True), (3_000_007, True),  # all right
        (9, True),  # a question without copies
    ]
    assert M.accuracy(ok for _, ok in rows) == pytest.approx(8 / 9)
    assert M.circular_groups(rows) == {5: False, 7: True, 9: True}
    assert M.circular_accuracy(rows) == pytest.approx(2 / 3)
