"""The tiny LaMed recipe learns on phantoms: reports that name what was drawn, closed VQA above chance.

One session-scoped run: 240 phantoms 32x64x64 (216 train, 24 test), ``configs/recipes/tiny_lamed.yaml``
(2-layer Phi-3-style LLM, hidden 128, BPE tokenizer trained on the phantom texts, tiny ViT3D +
spp projector, 16 image tokens), trained from scratch on CPU, then evaluated on the held-out
phantoms through the Bench front ends (greedy decoding).

Findings F1: the abnormal findings named in a report's impression (hepatomegaly, splenomegaly,
surgically absent organs, organs holding lesions) are extracted by the same rules from the
generated and the reference report and compared (micro F1 over the test set). Chance is the F1 of
the same predictions scored against the references of *other* test phantoms (every cyclic shift):
what a fluent generator that ignores the volume gets.

Opt-in (``LAMED_LEARNING=1``): about 9 minutes of training on the shared, heavily loaded 2-core
machine (0.7-0.9 steps/s, one torch thread), longer than the 3-minute budget.

STATUS (not yet met, see the MLLM report): with the recipe as committed (500 steps, lr 5e-4) the
held-out closed-VQA accuracy was 0.49 (phase 0.46, lesion organ 0.47, chance 0.25; yes/no 0.78)
and every generated report was the same fluent report (findings F1 0.0 = chance). At lr 2e-3 the
LLM settles on text priors and the volume is ignored (closed 0.39-0.43, phase 0.29); a linear
probe on the same tiny DCFormer + mixer reaches 100 % phase accuracy in 100 steps, so the
information is there; it is the optimisation through the random LLM that does not pick it up in
this budget. Measured numbers are printed by the tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_ORGANS = {"liver": "liver", "spleen": "spleen", "right kidney": "kidney_right", "left kidney": "kidney_left",
           "right lower lobe": "lung_right", "left lower lobe": "lung_left"}
_ABSENT = {"cholecystectomy": "gallbladder", "splenectomy": "spleen", "right nephrectomy": "kidney_right",
           "left nephrectomy": "kidney_left"}


def findings(report: str) -> set:
    """Abnormal findings a phantom report states in its impression (or anywhere, if it has none)."""
    parts = re.split(r"(?:Impression|IMPRESSION|Conclusion):", report)
    text = (parts[1] if len(parts) > 1 else report).lower()
    out = {name for name in ("hepatomegaly", "splenomegaly") if name in text}
    out |= {f"absent:{organ}" for op, organ in _ABSENT.items() if op in text}
    for sentence in re.split(r"(?<=\.)\s+", text):
        if re.search(r"lesion|cyst|mass|nodule", sentence):
            out |= {f"lesion:{organ}" for words, organ in _ORGANS.items() if f"in the {words}" in sentence}
    return out


def micro_f1(preds, refs) -> float:
    tp = sum(len(p & r) for p, r in zip(preds, refs))
    n_p, n_r = sum(map(len, preds)), sum(map(len, refs))
    return 2 * tp / (n_p + n_r) if n_p + n_r else 1.0


def test_findings_extraction_on_known_reports():
    rep = ("Findings: ... \nImpression: Hepatomegaly. Two lesions in the liver, the largest 39 mm. "
           "Cyst in the right kidney (18 mm). Status post left nephrectomy.")
    assert findings(rep) == {"hepatomegaly", "lesion:liver", "lesion:kidney_right", "absent:kidney_left"}
    assert findings("Findings: normal.\nConclusion: No acute abnormality.") == set()
    assert micro_f1([{"a", "b"}], [{"a"}]) == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    if os.environ.get("LAMED_LEARNING") != "1":
        pytest.skip("learning run is opt-in: LAMED_LEARNING=1 (about 9 minutes on a loaded 2-core machine)")
    from LaMed.data.prepare import prepare_phantoms
    from LaMed.train.main import run_training

    root = tmp_path_factory.mktemp("learning")
    data = root / "phantoms"
    prepare_phantoms(data, n=240, shape=(32, 64, 64), seed=1000, val_fraction=0.0, test_fraction=0.1, workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model runs faster on one thread than on two busy ones
    try:
        run_training(str(REPO / "configs" / "recipes" / "tiny_lamed.yaml"),
                     ["--train_manifest", str(data / "train.json"), "--output_dir", str(root / "run"), "--logging_steps", "100"])
    finally:
        torch.set_num_threads(threads)
    return root / "run", data / "test.json"


def test_reports_name_the_drawn_findings_above_chance(trained, tmp_path):
    from Bench.run_mrg import run_mrg

    model, test = trained
    summary = run_mrg(str(model), str(test), str(tmp_path / "mrg"), max_new_tokens=240)
    refs = {it["id"]: it["text"] for it in json.loads(Path(test).read_text())["items"]}
    rows = [json.loads(x) for x in (tmp_path / "mrg" / "predictions.jsonl").read_text().splitlines()]
    pred = [findings(r["prediction"]) for r in rows]
    ref = [findings(refs[r["id"]]) for r in rows]
    f1 = micro_f1(pred, ref)
    chance = sum(micro_f1(pred, ref[k:] + ref[:k]) for k in range(1, len(ref))) / (len(ref) - 1)
    print(f"findings F1 {f1:.3f}, chance {chance:.3f}, ROUGE-L {summary['overall']['rouge_l']:.3f}")
    assert summary["counts"]["evaluated"] == len(rows) == 24
    assert f1 >= chance + 0.15, (f1, chance)


def test_closed_vqa_far_above_chance(trained, tmp_path):
    from Bench.run_vqa import run_vqa

    model, test = trained
    summary = run_vqa(str(model), str(test), str(tmp_path / "vqa"), types=["closed", "yes_no"], max_new_tokens=12)
    closed = summary["per_class"]["closed"]
    print(f"closed accuracy {closed['correct']:.3f} over {closed['count']}, yes/no {summary['per_class']['yes_no']['correct']:.3f}")
    assert closed["count"] >= 60
    assert closed["correct"] >= 0.5  # 4 choices: chance is 0.25
