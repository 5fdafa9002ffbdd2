"""VQA scoring: closed-ended accuracy from a parsed choice / yes-no, open-ended token scores, and the
published substring rules of M3D / Med3DVLM and HSENet under their own names.

Open-ended answers are also scored with the report metrics of :mod:`LaMed.metrics.text`
(BLEU, ROUGE, METEOR, BERTScore); Bench's ``eval_vqa`` does that per question type.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

from .base import check_same_length, mean_or_nan

__all__ = [
    "parse_choice",
    "parse_yes_no",
    "closed_correct",
    "closed_accuracy",
    "exact_match",
    "token_f1",
    "m3d_choice_substring_scores",
    "m3d_choice_substring_accuracy",
    "hsenet_class_match_scores",
    "hsenet_class_accuracy",
]


def _letters(choices: Mapping[str, str] | None, letters: str) -> str:
    if choices:
        return "".join(sorted(k.upper() for k in choices))
    return letters


def parse_choice(text: str, choices: Mapping[str, str] | None = None, letters: str = "ABCD") -> str | None:
    """The choice letter a generated answer commits to, or ``None``.

    Tried in order (first hit wins):

    1. the text starts with the letter followed by punctuation or nothing: ``"B"``, ``"B."``,
       ``"(B) liver"``, ``"b) liver"``, ``"B: liver"``;
    2. an explicit phrase: ``"The answer is B"``, ``"answer: (c)"``, ``"option D"``, ``"choice b"``;
    3. a parenthesised letter anywhere: ``"... (C) ..."``;
    4. when ``choices`` (letter -> option text) are given: the single option whose text occurs in
       the answer (case-insensitive; the longest one if several nest, e.g. "left kidney" in
       "left kidney cyst");
    5. the first lone capital letter, except an "A" followed by a lower-case word (the article in
       ``"A mass in the liver"`` is not choice A).

    Letters are restricted to the keys of ``choices`` (default ``letters``).
    """
    if not isinstance(text, str):
        raise TypeError(f"answer must be a string, got {type(text).__name__}")
    allowed = _letters(choices, letters)
    up, low_l = re.escape(allowed), re.escape(allowed.lower())
    # A capital letter must not run into a word; a lower-case one only counts when it is clearly a
    # label ("b)", "b.", "(b)" or the end of the text), since "a" is usually the article.
    letter = rf"\(?(?:([{up}])(?![A-Za-z])|([{low_l}])(?=\s*[).:]|\s*$))"
    t = text.strip()

    def pick(m):
        return (m.group(1) or m.group(2)).upper()

    m = re.match(rf"^{letter}\s*(?:[).:,]|$)", t)
    if m:
        return pick(m)
    m = re.search(rf"\b(?i:answer|option|choice)\b\s*(?:is|would be)?\s*[:\-]?\s*{letter}", t)
    if m and (m.group(1) or m.group(2)):
        return pick(m)
    m = re.search(rf"\(([{up}{low_l}])\)", t)
    if m:
        return m.group(1).upper()
    if choices:
        low = t.lower()
        hits = [(len(v), k.upper()) for k, v in choices.items() if v and v.strip().lower() in low]
        if hits:
            hits.sort(reverse=True)
            longest = [h for h in hits if h[0] == hits[0][0]]
            if len(longest) == 1:
                return longest[0][1]
    for m in re.finditer(rf"(?<![A-Za-z])([{up}])(?![A-Za-z])", t):
        # "A" / "I" followed by a lower-case word is the article / pronoun, not a choice.
        if m.group(1) in "AI" and re.match(r"\s+[a-z]", t[m.end() :]):
            continue
        return m.group(1)
    return None


_YES = {"yes", "true", "correct", "present"}
_NO = {"no", "false", "incorrect", "absent", "not"}


def parse_yes_no(text: str) -> str | None:
    """``"yes"`` / ``"no"`` from a generated answer, or ``None``.

    The first word decides when it is yes/no (or true/false); otherwise the first standalone
    ``yes`` or ``no`` in the text.
    """
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return None
    if words[0] in ("yes", "true"):
        return "yes"
    if words[0] in ("no", "false"):
        return "no"
    for w in words:
        if w == "yes":
            return "yes"
        if w == "no":
            return "no"
    return None


def closed_correct(
    predictions: Sequence[str], answers: Sequence[str], choices: Sequence[Mapping[str, str] | None] | None = None
) -> list[bool]:
    """Per-question correctness of closed answers.

    An answer that is ``yes``/``no`` (any case) is compared with :func:`parse_yes_no`; otherwise the
    answer is a choice letter compared with :func:`parse_choice` (``choices[i]`` helps parsing).
    An unparseable prediction is wrong.
    """
    check_same_length(predictions, answers, "predictions", "answers")
    if choices is not None:
        check_same_length(predictions, choices, "predictions", "choices")
    out = []
    for i, (p, a) in enumerate(zip(predictions, answers)):
        a_norm = a.strip().lower().rstrip(".")
        if a_norm in ("yes", "no"):
            out.append(parse_yes_no(p) == a_norm)
            continue
        ch = choices[i] if choices is not None else None
        letter = a.strip().strip("().").upper()
        if len(letter) != 1:
            raise ValueError(f"answers[{i}] = {a!r} is neither yes/no nor a single choice letter")
        out.append(parse_choice(p, ch) == letter)
    return out


def closed_accuracy(
    predictions: Sequence[str], answers: Sequence[str], choices: Sequence[Mapping[str, str] | None] | None = None
) -> float:
    """Fraction of closed questions answered correctly (see :func:`closed_correct`)."""
    return mean_or_nan([float(c) for c in closed_correct(predictions, answers, choices)])


def _normalize(s: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answer: str, normalize: bool = False) -> float:
    """1.0 if the strings are equal after strip + lower-case (HSENet's ``acc_text``), else 0.0.

    ``normalize=True`` uses SQuAD normalisation instead (also drops punctuation and articles).
    """
    if normalize:
        return float(_normalize(prediction) == _normalize(answer))
    return float(prediction.strip().lower() == answer.strip().lower())


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD token F1 on normalised text (M3D's ``qa_f1_score``): bag-of-words precision/recall F1."""
    p, a = _normalize(prediction).split(), _normalize(answer).split()
    common = sum((Counter(p) & Counter(a)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(a)
    return 2 * prec * rec / (prec + rec)


def m3d_choice_substring_scores(predictions: Sequence[str], answer_letters: Sequence[str]) -> list[float]:
    """M3D / Med3DVLM closed-VQA scoring: 1 if the string ``"<letter>."`` occurs anywhere in the output.

    (``eval_vqa.py``: ``answer_choice + '.' in generated_text``.) Case-sensitive; "B" alone, or
    an output that lists "A. ... B. ..." both count differently from a parsed answer, which is
    why :func:`closed_accuracy` is the standard number.
    """
    check_same_length(predictions, answer_letters, "predictions", "answer_letters")
    return [float(f"{a.strip()}." in p) for p, a in zip(predictions, answer_letters)]


def m3d_choice_substring_accuracy(predictions: Sequence[str], answer_letters: Sequence[str]) -> float:
    """Mean of :func:`m3d_choice_substring_scores` (M3D's / Med3DVLM's reported closed accuracy)."""
    return mean_or_nan(m3d_choice_substring_scores(predictions, answer_letters))


def hsenet_class_match_scores(predictions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """HSENet's "Major Class Accuracy" per question (``acc_class`` in ``eval_HSENet_Rad_Geome_VQA.py``).

    1 if the prediction's text before its first ``/``, lower-cased and stripped, is a substring of
    the ground-truth answer (taken as is), else 0. Reproduced quirk: an empty prediction (or one
    starting with ``/``) is a substring of every answer and counts as correct.
    """
    check_same_length(predictions, answers, "predictions", "answers")
    return [float(p.split("/")[0].strip().lower() in a) for p, a in zip(predictions, answers)]


def hsenet_class_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Mean of :func:`hsenet_class_match_scores`."""
    return mean_or_nan(hsenet_class_match_scores(predictions, answers))
