"""Chance levels and the clinical-content score the demo puts next to Bench's numbers.

A score means little without its floor. For each part the demo reports what a model that never
looked at the image gets on the same test split:

* retrieval: ``K / N`` (a random ranking);
* report generation: the metrics of a *random training report* given to each test case (seeded
  shuffles, averaged), i.e. fluent text with no image information;
* VQA: uniform guessing (1 / number of choices) and the majority training answer per question topic;
* segmentation: an all-foreground mask, and the *atlas* prior (voxels inside the structure in at
  least half of the training masks);
* presence of a prompted structure (detection over present and absent prompts): a model that
  always answers "present" (what SegVol and the other seed systems do): F1 ``2P / (2P + A)`` for P
  present and A absent prompts, and no absent structure reported absent;
* zero-shot findings classification: AUROC 0.5 (scores that ignore the volume rank positives
  above negatives half of the time).

Report content is scored by **findings F1**: the abnormal findings a report states (hepatomegaly,
splenomegaly, a lesion per organ, lung nodule, surgical absences), extracted by the rules of
:func:`report_findings`, matched against those of the true report (micro-averaged over the split).
On the phantoms' ground-truth reports the rules recover exactly the findings recorded in the
manifests' ``labels`` (tested), so the score reads the text the way a radiologist would.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from LaMed.metrics.segmentation import dice as _dice
from LaMed.metrics.text import rouge_l_scores

# Findings tags, named as in the phantom manifests' ``labels``.
FINDINGS = (
    "hepatomegaly",
    "splenomegaly",
    "liver lesion",
    "spleen lesion",
    "kidney lesion",
    "lung nodule",
    "cholecystectomy",
    "splenectomy",
    "nephrectomy",
)
_ORGAN_WORDS = (
    ("liver lesion", ("liver", "hepatic")),
    ("spleen lesion", ("spleen", "splenic")),
    ("kidney lesion", ("kidney", "renal")),
    ("lung nodule", ("lower lobe", "lung", "pulmonary")),
)  # liver lobes are "right lobe of the liver"
_LESION = re.compile(r"\b(lesions?|mass(es)?|cysts?|nodules?)\b")
_NEGATED = re.compile(r"^(no|without)\b|\b(no focal|without|not)\b")
_ABSENT = (("gallbladder", "cholecystectomy"), ("spleen", "splenectomy"), ("kidney", "nephrectomy"))


def _sentences(text: str) -> list[str]:
    text = re.sub(r"(?i)\b(findings|impression)\s*:", ". ", text)
    return [s.strip().lower() for s in re.split(r"[.;\n]+", text) if s.strip()]


def report_findings(text: str) -> set[str]:
    """Abnormal findings stated in a report (subset of :data:`FINDINGS`); negated sentences count for nothing."""
    found: set[str] = set()
    for s in _sentences(text):
        for word in ("hepatomegaly", "splenomegaly", "cholecystectomy", "splenectomy", "nephrectomy"):
            if re.search(rf"\b{word}\b", s) and not re.match(rf"^no\b.*\b{word}\b", s):
                found.add(word)
        if "surgically absent" in s or re.search(r"\bis absent\b", s):
            for organ, tag in _ABSENT:
                if organ in s:
                    found.add(tag)
        if _LESION.search(s) and not _NEGATED.search(s):
            for tag, words in _ORGAN_WORDS:
                if any(re.search(rf"\b{w}\b", s) for w in words):
                    found.add(tag)
    return found


def label_findings(labels: Iterable[str]) -> set[str]:
    """The findings among a manifest item's ``labels`` (organ names and the phase are not findings)."""
    return {lab for lab in labels if lab in FINDINGS}


def findings_f1(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Micro-averaged precision / recall / F1 of :func:`report_findings` over a split.

    A case with no finding in either text contributes nothing (a correct "no abnormality" is
    scored by the other cases' false positives staying low); ``exact`` is the fraction of cases
    whose finding sets are equal, normal cases included.
    """
    if len(predictions) != len(references):
        raise ValueError(f"findings_f1: {len(predictions)} predictions for {len(references)} references")
    tp = fp = fn = exact = 0
    for p, r in zip(predictions, references):
        ps, rs = report_findings(p), report_findings(r)
        tp, fp, fn = tp + len(ps & rs), fp + len(ps - rs), fn + len(rs - ps)
        exact += ps == rs
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "findings_precision": precision,
        "findings_recall": recall,
        "findings_f1": f1,
        "findings_exact": exact / max(len(references), 1),
        "cases": float(len(references)),
    }


def random_report_baseline(
    train_reports: Sequence[str], test_reports: Sequence[str], repeats: int = 20, seed: int = 0
) -> dict[str, float]:
    """Scores of giving each test case a random training report (means over ``repeats`` draws):
    findings F1 / exact and ROUGE-L (``LaMed.metrics.text``, the scorer Bench uses)."""

    if not train_reports or not test_reports:
        raise ValueError("random_report_baseline: needs training and test reports")
    rng = np.random.default_rng(seed)
    acc: dict[str, list[float]] = {}
    for _ in range(repeats):
        picks = [train_reports[i] for i in rng.integers(len(train_reports), size=len(test_reports))]
        scores = findings_f1(picks, test_reports)
        scores["rouge_l"] = float(np.mean(rouge_l_scores(picks, list(test_reports))))
        for k, v in scores.items():
            acc.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in acc.items() if k != "cases"}


def other_volume_baseline(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Findings scores of the model's own reports matched against *other* test cases' truths.

    Every cyclic shift ``k = 1 .. n-1`` pairs report ``i`` with the truth of case ``(i + k) mod n``;
    the scores are averaged over the shifts. A generator that ignores the volume scores the same
    on the right and the wrong truths, so the gap to this baseline is what the image contributed.
    """
    n = len(references)
    if n != len(predictions) or n < 2:
        raise ValueError(f"other_volume_baseline: needs equal lists of >= 2 reports, got {len(predictions)} and {n}")
    acc: dict[str, list[float]] = {}
    for k in range(1, n):
        shifted = list(references[k:]) + list(references[:k])
        for key, v in findings_f1(predictions, shifted).items():
            acc.setdefault(key, []).append(v)
    return {k: float(np.mean(v)) for k, v in acc.items() if k != "cases"}


def vqa_baselines(
    train_items: Sequence[Mapping], test_items: Sequence[Mapping], types: Sequence[str] = ("closed", "yes_no")
) -> dict[str, dict[str, float]]:
    """Per question type: ``uniform`` (1/4 for four choices, 1/2 for yes / no) and ``majority``
    (the most frequent training answer of the same question topic, or of the type when the topic
    was never seen), both as accuracies on the test questions."""

    def key(q):
        return q.get("topic") or q.get("question")

    def answer(q):
        return q.get("answer_choice") if q.get("type") == "closed" else str(q.get("answer", "")).strip().lower()

    out: dict[str, dict[str, float]] = {}
    for t in types:
        train_q = [q for it in train_items for q in it.get("vqa") or [] if q.get("type") == t]
        test_q = [q for it in test_items for q in it.get("vqa") or [] if q.get("type") == t]
        if not test_q:
            continue
        by_topic: dict[str, Counter] = {}
        for q in train_q:
            by_topic.setdefault(key(q), Counter())[answer(q)] += 1
        overall = Counter(answer(q) for q in train_q)
        hits = 0
        for q in test_q:
            c = by_topic.get(key(q)) or overall
            hits += bool(c) and c.most_common(1)[0][0] == answer(q)
        uniform = [1.0 / len(q.get("choices") or {}) if t == "closed" and q.get("choices") else 0.5 for q in test_q]
        out[t] = {"uniform": float(np.mean(uniform)), "majority": hits / len(test_q), "questions": float(len(test_q))}
    return out


def atlas_masks(train_masks: Mapping[str, Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
    """Per structure, the voxels inside it in at least half of the training masks (same grid)."""
    out = {}
    for name, masks in train_masks.items():
        if masks:
            out[name] = np.mean(np.stack([np.asarray(m, bool) for m in masks]), axis=0) >= 0.5
    return out


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (``LaMed.metrics.segmentation.dice``; 1 when both are empty)."""

    return float(_dice(np.asarray(pred, bool), np.asarray(truth, bool)))


def seg_baselines(
    train_masks: Mapping[str, Sequence[np.ndarray]], test_masks: Mapping[str, Sequence[np.ndarray]]
) -> dict[str, dict[str, float]]:
    """Mean test Dice per structure of the all-foreground mask and of the atlas (:func:`atlas_masks`)."""
    atlas = atlas_masks(train_masks)
    out: dict[str, dict[str, float]] = {}
    for name, masks in test_masks.items():
        if not masks:
            continue
        everything = [dice(np.ones_like(m, bool), m) for m in masks]
        row = {"all_foreground": float(np.mean(everything)), "cases": float(len(masks))}
        if name in atlas:
            row["atlas"] = float(np.mean([dice(atlas[name], m) for m in masks]))
        out[name] = row
    return out


def chance_recall(n: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K of a random ranking of ``n`` candidates: ``K / n``."""
    return {f"R@{k}": min(k, n) / n for k in ks if n}


def summarize_margin(score: float | None, chance: float | None) -> str:
    """``"0.83 (chance 0.17)"`` for the report."""
    if score is None:
        return "-"
    return f"{score:.3f}" + (f" (chance {chance:.3f})" if chance is not None else "")


def detection_summary(detection: Mapping, calibration: Mapping | None = None) -> dict:
    """The demo's view of Bench's ``detection`` (BiomedSegFM definitions over prompts), with the
    always-present baseline: ``chance_f1 = 2P / (2P + A)``; ``absent_reported`` = TN / A (chance 0)."""
    tp, fp, fn, tn = (int(detection[k]) for k in ("tp", "fp", "fn", "tn"))
    present, absent = tp + fn, fp + tn
    return {
        "f1": float(detection["f1"]),
        "precision": float(detection["precision"]),
        "recall": float(detection["recall"]),
        "dice_tp": detection.get("dice_tp"),
        "present_prompts": present,
        "absent_prompts": absent,
        "absent_reported": tn / absent if absent else None,
        "chance_f1": 2 * present / (2 * present + absent) if present else 0.0,
        "chance_precision": present / (present + absent) if present + absent else None,
        "chance_absent_reported": 0.0,
        "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "calibration": dict(calibration) if calibration else None,
    }


ZERO_SHOT_CHANCE = 0.5


def zero_shot_summary(summary: Mapping) -> dict:
    """The demo's view of a ``Bench.eval_classify`` summary: per finding its AUROC, 95 % interval,
    positives and group; ``mean_auroc`` per finding group (the prompt set's ``group``) and over
    ``all`` findings whose AUROC is defined (both classes present in the test split). With linear
    probes (``summary["linear_probe"]``), each finding also has ``probe_auroc`` and ``probe`` holds
    their means by group and the probe's settings."""
    groups = {name: f.get("group", "") for name, f in (summary.get("prompt_set") or {}).get("findings", {}).items()}
    ci = summary.get("ci95", {})
    lp = summary.get("linear_probe")
    per: dict[str, dict] = {}
    for name, g in summary["per_class"].items():
        per[name] = {
            "auroc": _defined(g.get("auroc")),
            "ci95": ci.get(name, {}).get("auroc"),
            "positives": int(g["positives"]),
            "group": groups.get(name, ""),
        }
        if lp:
            per[name]["probe_auroc"] = _defined(lp["auroc"].get(name))
    out = {
        "per_finding": per,
        "mean_auroc": _group_means(per, "auroc"),
        "chance": ZERO_SHOT_CHANCE,
        "cases": int(summary["counts"]["cases"]),
        "settings": summary.get("settings", {}),
    }
    if lp:
        out["probe"] = {
            "mean_auroc": _group_means(per, "probe_auroc"),
            "train_manifest": lp.get("train_manifest"),
            "train_cases": lp.get("train_cases"),
            "c": lp.get("c"),
        }
    return out


def _defined(value) -> float | None:
    """A finite AUROC, else ``None`` (one class only in the test split)."""
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def _group_means(per: Mapping[str, Mapping], key: str) -> dict[str, float]:
    """Mean of ``per[*][key]`` over each finding group and over ``all``, skipping undefined values."""
    means: dict[str, float] = {}
    for group in sorted({p["group"] for p in per.values()} | {"all"}):
        vals = [p[key] for p in per.values() if p.get(key) is not None and group in ("all", p["group"])]
        if vals and group:
            means[group] = float(np.mean(vals))
    return means
