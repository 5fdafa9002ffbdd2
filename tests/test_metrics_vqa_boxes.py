"""VQA answer parsing / scoring and 3D box metrics on hand-worked examples."""

import pytest

from LaMed.metrics import boxes as B
from LaMed.metrics import vqa as V


@pytest.mark.parametrize(
    "text,letter",
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B) liver", "B"),
        ("b) liver", "B"),
        ("B: the liver", "B"),
        ("The answer is B", "B"),
        ("answer: (c)", "C"),
        ("Option D.", "D"),
        ("The Answer is: A", "A"),
        ("I think D is right", "D"),
        ("the (d) one", "D"),
        ("A mass in the liver", None),
        ("The answer is a mass", None),
        ("CT shows nothing", None),
        ("", None),
    ],
)
def test_parse_choice(text, letter):
    assert V.parse_choice(text) == letter


def test_parse_choice_by_option_text_and_allowed_letters():
    choices = {"A": "liver", "B": "left kidney", "C": "left kidney cyst", "D": "spleen"}
    assert V.parse_choice("It is a left kidney cyst.", choices) == "C"  # longest nested option wins
    assert V.parse_choice("probably the spleen", choices) == "D"
    assert V.parse_choice("E", {"A": "x", "B": "y"}) is None  # E is not an option
    assert V.parse_choice("E") is None and V.parse_choice("E", letters="ABCDE") == "E"


def test_yes_no_and_closed_accuracy():
    assert [V.parse_yes_no(t) for t in ("No, there is none", "Yes.", "There is no lesion", "maybe", "")] == [
        "no",
        "yes",
        "no",
        None,
        None,
    ]
    preds = ["(B) liver", "The answer is C", "yes it is", "No.", "garbage"]
    answers = ["B", "D", "Yes", "no", "A"]
    assert V.closed_correct(preds, answers) == [True, False, True, True, False]
    assert V.closed_accuracy(preds, answers) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="answers"):
        V.closed_accuracy(["x"], ["liver"])
    with pytest.raises(ValueError, match="predictions has 1 items but answers has 2"):
        V.closed_accuracy(["x"], ["A", "B"])


def test_m3d_substring_scoring_differs_from_parsed_accuracy():
    preds = ["B. liver", "The answer is B", "A. liver B. spleen", "b. liver", "(B)"]
    assert V.m3d_choice_substring_scores(preds, ["B"] * 5) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert V.closed_correct(preds[:2], ["B", "B"]) == [True, True]
    assert V.m3d_choice_substring_accuracy(preds, ["B"] * 5) == pytest.approx(0.4)


def test_hsenet_class_accuracy_and_text_scores():
    preds = ["Lung/nodule in the left lobe", "heart", "", "pleura/x"]
    answers = ["lung nodule", "lung", "anything", "Pleura effusion"]
    # lower-cased text before the first "/" must be a substring of the answer (taken as is)
    assert V.hsenet_class_match_scores(preds, answers) == [1.0, 0.0, 1.0, 0.0]
    assert V.exact_match(" Liver ", "liver") == 1.0 and V.exact_match("the liver.", "liver") == 0.0
    assert V.exact_match("the liver.", "Liver", normalize=True) == 1.0
    # "the" is dropped; tokens {left, kidney, cyst} vs {left, kidney}: P 2/3, R 1 -> F 0.8
    assert V.token_f1("The left kidney cyst", "left kidney") == pytest.approx(0.8)
    assert V.token_f1("spleen", "liver") == 0.0


def test_box_parsing():
    text = "The liver is at [0.1, 0.2, 0.3, 0.5, 0.6, 0.7] and (1,2,3,4,5,6); not [a, 1, 2] nor [1, 2, 3]."
    assert B.parse_boxes(text) == [[0.1, 0.2, 0.3, 0.5, 0.6, 0.7], [1, 2, 3, 4, 5, 6]]
    assert B.parse_box("[.5 1e-1 2 3 4 5]") == [0.5, 0.1, 2, 3, 4, 5]
    assert B.parse_box("no box here") is None
    # M3D's regex needs exactly ", " separators
    assert B.m3d_extract_box("[0.1, 0.2, 0.3, 0.5, 0.6, 0.7]") == [0.1, 0.2, 0.3, 0.5, 0.6, 0.7]
    assert B.m3d_extract_box("[0.1,0.2,0.3,0.5,0.6,0.7]") is None


def test_box_iou_and_m3d_score_hand_example():
    a, b = [0, 0, 0, 2, 2, 2], [1, 1, 1, 3, 3, 3]
    assert B.box_iou_3d(a, b) == pytest.approx(1 / 15)  # 1 / (8 + 8 - 1)
    assert B.m3d_box_score(a, b) == pytest.approx(1 / 27)  # 1 / enclosing 3^3
    assert B.box_iou_3d(a, a) == 1.0 and B.m3d_box_score(a, a) == pytest.approx(1.0, abs=1e-6)
    assert B.box_iou_3d(a, [5, 5, 5, 6, 6, 6]) == 0.0
    assert B.box_iou_3d([1, 1, 1, 0, 0, 0], a) == 0.0  # inverted box has no volume
    assert B.box_iou_3d([1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]) == 1.0
    assert B.m3d_positioning_score("at [0, 0, 0, 2, 2, 2]", "[1, 1, 1, 3, 3, 3]") == pytest.approx(1 / 27)
    assert B.m3d_positioning_score("I cannot tell", "[1, 1, 1, 3, 3, 3]") == -1.0
    with pytest.raises(ValueError, match="6 values"):
        B.box_iou_3d([0, 0, 1], a)
