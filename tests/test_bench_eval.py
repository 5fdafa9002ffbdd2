"""Bench evaluators end to end on a tiny prepared manifest written in the test."""

import csv
import json

import numpy as np
import pytest

from Bench import eval_mrg, eval_pos, eval_retrieval, eval_seg, eval_vqa
from Bench.common import BenchError, load_manifest
from LaMed.metrics import segmentation as S
from LaMed.metrics import text as T


def cube(shape, lo, hi):
    m = np.zeros(shape, np.uint8)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return m


@pytest.fixture
def prepared(tmp_path):
    """Three items in two datasets with reports, VQA, boxes, masks and labels (lamed.prepared/1)."""
    root = tmp_path / "data"
    (root / "masks").mkdir(parents=True)
    shape = (1, 8, 12, 12)
    items = []
    texts = ["the liver is enlarged with a cyst", "no focal lesion in the spleen", "left kidney stone"]
    labels = [["cyst", "hepatomegaly"], ["normal"], ["stone", "cyst"]]
    for i in range(3):
        iid = f"case_{i}"
        liver = cube(shape[1:], (1, 2, 2), (5, 8, 8 + i))[None]
        np.save(root / "masks" / f"{iid}_liver.npy", liver)
        items.append(
            {
                "id": iid,
                "dataset": "alpha" if i < 2 else "beta",
                "image": f"images/{iid}.npy",
                "spacing": [2.0, 1.0, 1.0],
                "masks": {"liver": f"masks/{iid}_liver.npy"},
                "text": texts[i],
                "vqa": [
                    {
                        "question": "Which organ?",
                        "answer": "liver",
                        "type": "closed",
                        "choices": {"A": "spleen", "B": "liver", "C": "kidney", "D": "lung"},
                        "answer_choice": "B",
                        "question_type": "organ",
                    },
                    {"question": "Is there a lesion?", "answer": "yes", "type": "yes_no"},
                    {"question": "What is seen?", "answer": "a liver cyst", "type": "open"},
                ],
                "boxes": {"liver": [0.1, 0.2, 0.2, 0.6, 0.7, 0.7]},
                "labels": labels[i],
                "source": "synthetic",
            }
        )
    manifest = {"format": "lamed.prepared/1", "dataset": "phantom", "split": "test", "preset": "m3d", "items": items}
    path = root / "test.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return path


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_manifest_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": "other", "items": []}), encoding="utf-8")
    with pytest.raises(BenchError, match=r"m\.json: field 'format'"):
        load_manifest(bad)
    bad.write_text(json.dumps({"format": "lamed.prepared/1", "items": [{"id": "a"}, {"id": "a"}]}), encoding="utf-8")
    with pytest.raises(BenchError, match="repeats id 'a'"):
        load_manifest(bad)


def test_eval_mrg(prepared, tmp_path):
    preds = ["the liver is enlarged", "no lesion in the spleen", "right kidney stone"]
    pred_file = write_jsonl(tmp_path / "mrg.jsonl", [{"id": f"case_{i}", "prediction": p} for i, p in enumerate(preds)])
    out = tmp_path / "out_mrg"
    summary = eval_mrg.main(["--predictions", str(pred_file), "--manifest", str(prepared), "--out", str(out)])
    refs = json.loads(prepared.read_text(encoding="utf-8"))["items"]
    refs = [it["text"] for it in refs]
    assert summary["overall"]["bleu4"] == pytest.approx(T.bleu(preds, refs, 4))
    assert summary["overall"]["rouge_l"] == pytest.approx(T.rouge_l(preds, refs))
    assert summary["overall"]["m3d_bleu1"] == pytest.approx(T.m3d_bleu1(preds, refs))
    assert summary["per_dataset"]["alpha"]["count"] == 2
    assert summary["per_dataset"]["beta"]["bleu1"] == pytest.approx(T.bleu(preds[2:], refs[2:], 1))
    assert summary["counts"] == {"evaluated": 3, "missing_predictions": 0}
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert saved["overall"]["cider"] == pytest.approx(T.cider(preds, refs))
    rows = read_csv(out / "per_sample.csv")
    assert [r["id"] for r in rows] == ["case_0", "case_1", "case_2"]
    assert float(rows[0]["hsenet_bleu1"]) == pytest.approx(1.0)  # every predicted word is in the report
    assert "| overall | 3 |" in (out / "summary.md").read_text(encoding="utf-8")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "nope", "prediction": "x"}])
    with pytest.raises(BenchError, match="not in manifest"):
        eval_mrg.evaluate_mrg(str(bad), str(prepared))


def test_eval_vqa(prepared, tmp_path):
    recs = [
        {"id": "case_0", "question_index": 0, "prediction": "The answer is B"},  # parsed right, no "B."
        {"id": "case_1", "question_index": 0, "prediction": "B. liver"},
        {"id": "case_2", "question": "Which organ?", "prediction": "A. spleen"},
        {"id": "case_0", "question_index": 1, "prediction": "Yes, there is."},
        {"id": "case_1", "question_index": 2, "prediction": "liver cyst"},
    ]
    pred_file = write_jsonl(tmp_path / "vqa.jsonl", recs)
    summary = eval_vqa.main(
        ["--predictions", str(pred_file), "--manifest", str(prepared), "--out", str(tmp_path / "o")]
    )
    organ = summary["per_class"]["organ"]
    assert organ["count"] == 3
    assert organ["correct"] == pytest.approx(2 / 3)
    assert organ["m3d_substring"] == pytest.approx(1 / 3)
    assert summary["per_class"]["yes_no"]["correct"] == 1.0
    assert summary["per_class"]["open"]["token_f1"] == pytest.approx(1.0)  # "a" is dropped by normalisation
    assert summary["counts"]["missing_predictions"] == 9 - 5
    assert summary["per_dataset"]["beta"]["correct"] == 0.0
    dup = write_jsonl(tmp_path / "dup.jsonl", recs[:1] * 2)
    with pytest.raises(BenchError, match="predicted twice"):
        eval_vqa.evaluate_vqa(str(dup), str(prepared))


def test_eval_pos(prepared, tmp_path):
    recs = [
        {"id": "case_0", "target": "liver", "prediction": "at [0.1, 0.2, 0.2, 0.6, 0.7, 0.7]"},
        {"id": "case_1", "target": "liver", "prediction": "[0.1,0.2,0.2,0.6,0.7,0.45]"},  # M3D regex misses it
        {"id": "case_2", "target": "liver", "prediction": "I do not know"},
    ]
    pred_file = write_jsonl(tmp_path / "pos.jsonl", recs)
    summary = eval_pos.main(
        ["--predictions", str(pred_file), "--manifest", str(prepared), "--out", str(tmp_path / "o")]
    )
    # IoUs: 1, 0.5 (half the width), 0 (unparsed)
    assert summary["overall"]["iou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert summary["overall"]["iou_at_0.5"] == pytest.approx(2 / 3)
    assert summary["overall"]["m3d_score"] == pytest.approx((1 / (0.125 + 1e-6) * 0.125 - 1 - 1) / 3)
    assert summary["counts"]["unparsed"] == 1


def test_eval_seg(prepared, tmp_path):
    root = prepared.parent
    pdir = tmp_path / "preds"
    pdir.mkdir()
    gts = [np.load(root / "masks" / f"case_{i}_liver.npy")[0] for i in range(3)]
    p0 = gts[0].copy()
    p0[1] = 0  # case_0: binary .npy, one slice missing
    np.save(pdir / "case_0_liver.npy", p0)
    prob = np.where(gts[1] > 0, 0.9, 0.1).astype(np.float32)
    np.save(pdir / "case_1_liver.npy", prob[None])  # case_1: probabilities, (1, D, H, W)
    # case_2: no prediction -> counted as empty
    out = tmp_path / "o"
    summary = eval_seg.main(
        [
            "--predictions",
            str(pdir),
            "--manifest",
            str(prepared),
            "--out",
            str(out),
            "--tolerance-mm",
            "2",
            "--instance-classes",
            "liver",
        ]
    )
    rows = {r["id"]: r for r in read_csv(out / "per_sample.csv")}
    assert float(rows["case_0"]["dice"]) == pytest.approx(S.dice(p0, gts[0]))
    assert float(rows["case_0"]["nsd"]) == pytest.approx(S.nsd(p0, gts[0], (2.0, 1.0, 1.0), 2.0))
    assert float(rows["case_1"]["dice"]) == 1.0
    assert float(rows["case_1"]["soft_dice_m3d"]) == pytest.approx(S.m3d_soft_dice(prob, gts[1], from_logits=False))
    assert rows["case_2"]["missing"] == "1.0" and float(rows["case_2"]["dice"]) == 0.0
    assert summary["overall"]["hd95_nonfinite"] == 1  # the missing case has hd95 = inf
    assert summary["per_class"]["liver"]["count"] == 3
    assert summary["overall"]["instance_f1"] == pytest.approx((1 + 1 + 0) / 3)
    # BiomedSegFM-style npz label map: label 1 = first structure of the item
    np.savez(pdir / "case_2.npz", segs=gts[2].astype(np.uint8))
    summary, _ = eval_seg.evaluate_seg(str(pdir), str(prepared))
    assert summary["per_dataset"]["beta"]["dice"] == 1.0
    np.save(pdir / "case_0_liver.npy", p0[:-1])
    with pytest.raises(BenchError, match="differs from the ground truth"):
        eval_seg.evaluate_seg(str(pdir), str(prepared))


def test_eval_seg_reads_nifti_in_canonical_order(prepared, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    gt = np.load(prepared.parent / "masks" / "case_0_liver.npy")[0]
    pdir = tmp_path / "nii"
    pdir.mkdir()
    img = sitk.GetImageFromArray(gt)  # identity direction: array (z, y, x) = canonical (D, H, W)
    img.SetSpacing((1.0, 1.0, 2.0))
    flipped = sitk.Flip(img, [True, False, False])  # stored with a flipped x axis: reoriented back to LPS
    sitk.WriteImage(flipped, str(pdir / "case_0_liver.nii.gz"))
    rows = {r["id"]: r for r in eval_seg.evaluate_seg(str(pdir), str(prepared))[1]}
    assert rows["case_0"]["dice"] == 1.0


def test_eval_retrieval(prepared, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((3, 8)).astype(np.float32)
    txt = img.copy()
    txt[2] = img[0] * 2  # report 2 matches image 0 exactly: image 0 has a tie, image 2 is ranked below
    np.savez(tmp_path / "emb.npz", ids=np.array(["case_0", "case_1", "case_2"]), image=img, text=txt)
    out = tmp_path / "o"
    summary = eval_retrieval.main(
        [
            "--predictions",
            str(tmp_path / "emb.npz"),
            "--manifest",
            str(prepared),
            "--out",
            str(out),
            "--ks",
            "1,2",
            "--v2v-ks",
            "1",
            "--first-n",
            "2",
        ]
    )
    rows = read_csv(out / "per_sample.csv")
    assert rows[0]["rank_image_to_text"] == "0"  # tie with report 2 does not push it down
    from LaMed.metrics.retrieval import retrieval_ranks

    en = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expect = retrieval_ranks(en(img) @ en(txt).T)
    assert [int(r["rank_image_to_text"]) for r in rows] == expect.tolist()
    assert summary["overall"]["image_to_text_R@1"] == pytest.approx(np.mean(expect < 1))
    assert summary["first_n"]["2"]["count"] == 2
    # labels: case_0 {cyst, hepatomegaly}, case_1 {normal}, case_2 {stone, cyst}; all three are candidates
    assert summary["v2v_count"] == 3
    sets = [{"cyst", "hepatomegaly"}, {"normal"}, {"stone", "cyst"}]
    sim = en(img) @ en(img).T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(axis=1)
    jac = [len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in enumerate(nearest)]
    assert summary["overall"]["v2v_jaccard@1"] == pytest.approx(np.mean(jac))
    assert summary["overall"]["hsenet_v2v@1"] == 1.0  # HSENet keeps the query itself: top-1 is itself


def test_scripts_run_as_modules(prepared, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pred_file = write_jsonl(tmp_path / "pos.jsonl", [{"id": "case_0", "target": "liver", "box": [0, 0, 0, 1, 1, 1]}])
    out = tmp_path / "cli"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "Bench.eval_pos",
            "--predictions",
            str(pred_file),
            "--manifest",
            str(prepared),
            "--out",
            str(out),
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["overall"]["iou"] == pytest.approx(0.125)
