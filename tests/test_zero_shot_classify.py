"""Zero-shot findings classification: prompt sets as data, their validation errors, scores computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_configs import TINY_BERT, tiny_clip_with_phantoms

from LaMed.inference.classify import (
    PromptSetError,
    classify_split,
    classify_volume,
    encode_prompts,
    evaluate_zero_shot,
    list_prompt_sets,
    load_prompt_set,
    manifest_labels,
    zero_shot_scores,
)
from LaMed.models.clip import LamedClipConfig, LamedClipModel

# ---- prompt sets ------------------------------------------------------------------------------------


def test_ct_rate_set_names_the_18_csv_columns_in_the_published_styles():
    from Data.ct_rate import CT_RATE_LABELS

    assert {"ct_rate", "phantom"} <= set(list_prompt_sets())
    ps = load_prompt_set("ct_rate")
    assert ps.names == list(CT_RATE_LABELS) and ps.style == "ct_clip"
    emph = ps.findings[CT_RATE_LABELS.index("Emphysema")]
    # CT-CLIP's released scripts/zero_shot.py: [f"{pathology}.", f"not {pathology}."]
    assert emph.positive == ("Emphysema.",) and emph.negative == ("not Emphysema.",)
    present = load_prompt_set("ct_rate", style="ct_clip_present").findings[0]
    assert present.positive == ("Medical material is present.",)
    assert present.negative == ("Medical material is not present.",)
    merlin = load_prompt_set("ct_rate", style="merlin").findings[2]
    assert len(merlin.positive) > 1 and len(merlin.negative) > 1 and "Cardiomegaly." in merlin.positive
    sub = load_prompt_set("ct_rate", findings=["Emphysema", "lung nodule"])
    assert sub.names == ["Emphysema", "Lung nodule"]


def test_prompt_set_errors_name_the_file_and_problem(tmp_path):
    with pytest.raises(PromptSetError, match="unknown finding.*Hepatomegaly"):
        load_prompt_set("ct_rate", findings=["Emphysema", "Hepatomegaly"])
    with pytest.raises(PromptSetError, match="empty set"):
        load_prompt_set("ct_rate").select([])
    with pytest.raises(PromptSetError, match="unknown prompt style 'clipish'"):
        load_prompt_set("ct_rate", style="clipish")
    with pytest.raises(PromptSetError, match="'nope' not found"):
        load_prompt_set("nope")
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: empty\nfindings: []\n")
    with pytest.raises(PromptSetError, match=r"empty\.yaml: 'findings' must be a non-empty list"):
        load_prompt_set(empty)
    dup = tmp_path / "dup.yaml"
    dup.write_text("findings: [{name: a}, {name: A}]\n")
    with pytest.raises(PromptSetError, match=r"dup\.yaml: findings\[1\]: finding 'A' appears twice"):
        load_prompt_set(dup)
    blank = tmp_path / "blank.yaml"
    blank.write_text("findings: [{name: a, positive: []}]\n")
    with pytest.raises(PromptSetError, match=r"blank\.yaml: findings\[0\] \(a\)\.positive"):
        load_prompt_set(blank)
    typo = tmp_path / "typo.yaml"
    typo.write_text("findings: [{name: a, postive: [x]}]\n")
    with pytest.raises(PromptSetError, match="unknown key.*postive"):
        load_prompt_set(typo)
    ps = load_prompt_set("phantom")
    with pytest.raises(PromptSetError, match=r"m\.json: finding\(s\) \['portal venous phase'\].*label_names"):
        manifest_labels({"label_names": [f.name for f in ps.findings[:-1]]}, [], ps, "m.json")
    with pytest.raises(PromptSetError, match="have no 'labels'"):
        manifest_labels({}, [{"id": "a", "labels": []}, {"id": "b"}], ps)


def test_labels_key_maps_a_finding_to_several_manifest_labels(tmp_path):
    f = tmp_path / "contrast.yaml"
    f.write_text(
        "findings: [{name: contrast, labels: [arterial phase, portal venous phase], positive: [c], negative: [n]}]\n"
    )
    ps = load_prompt_set(f)
    items = [
        {"id": "a", "labels": ["liver", "arterial phase"]},
        {"id": "b", "labels": ["non-contrast phase"]},
        {"id": "c", "labels": ["Portal venous phase"]},
    ]
    assert manifest_labels({}, items, ps)[:, 0].tolist() == [1, 0, 1]


def test_phantom_labels_follow_the_generator():
    from LaMed.data.phantom import make_phantom

    ps = load_prompt_set("phantom")
    items = []
    for seed in range(12):
        p = make_phantom(seed, shape=(8, 32, 32))
        items.append(
            {
                "id": str(seed),
                "labels": p.labels,
                "phase": p.findings["phase"],
                "liver_enlarged": p.findings["organs"]["liver"].get("enlarged", False),
            }
        )
    y = manifest_labels({}, items, ps)
    col = {n: y[:, k] for k, n in enumerate(ps.names)}
    assert [bool(v) for v in col["non-contrast phase"]] == [it["phase"] == "non-contrast" for it in items]
    assert [bool(v) for v in col["portal venous phase"]] == [it["phase"] == "portal venous" for it in items]
    assert [bool(v) for v in col["hepatomegaly"]] == [bool(it["liver_enlarged"]) for it in items]


# ---- scores ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_shot")
    model, tok = tiny_clip_with_phantoms(root, n=14, seed=5, test_fraction=0.3, val_fraction=0.3)
    return root, model, tok


def test_scores_equal_a_hand_computed_softmax_over_mean_cosines(tiny):
    root, model, tok = tiny
    ps = load_prompt_set("phantom", findings=["hepatomegaly", "arterial phase"])
    image = torch.rand(1, 1, 16, 64, 64)
    got = classify_volume(model, tok, image, ps)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(image), dim=-1)[0]
        scale = float(model.scale)
        for f in ps.findings:
            sides = []
            for prompts in (f.positive, f.negative):
                cos = []
                for p in prompts:  # one prompt at a time: no padding shared with the others
                    e = tok([p], return_tensors="pt")
                    t = torch.nn.functional.normalize(model.encode_text(e["input_ids"], e["attention_mask"]), dim=-1)[0]
                    cos.append(float(img @ t))
                sides.append(np.mean(cos))
            p_present = torch.softmax(torch.tensor([scale * sides[0], scale * sides[1]]), 0)[0].item()
            assert got[f.name]["similarity"] == pytest.approx(sides[0], abs=1e-5)
            assert got[f.name]["similarity_negative"] == pytest.approx(sides[1], abs=1e-5)
            assert got[f.name]["probability"] == pytest.approx(p_present, abs=1e-5)


def test_zero_shot_scores_are_stable_for_large_scales():
    img = np.array([[1.0, 0.0]])
    s = zero_shot_scores(img, np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), 1e4)
    assert s["probability"][0, 0] == 1.0 and np.isfinite(s["probability"]).all()
    s = zero_shot_scores(img, np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), 1e4)
    assert s["probability"][0, 0] == 0.0


def test_split_scores_labels_and_evaluation(tiny):
    root, model, tok = tiny
    ps = load_prompt_set("phantom")
    test_m = json.loads((root / "data" / "test.json").read_text())
    res = classify_split(model, tok, root / "data" / "test.json", ps, batch_size=3)
    assert res.ids == [it["id"] for it in test_m["items"]] and res.probability.shape == (len(res.ids), len(ps.names))
    assert ((res.probability > 0) & (res.probability < 1)).all()
    for i, it in enumerate(test_m["items"]):
        assert res.labels[i, ps.names.index("lung nodule")] == int("lung nodule" in it["labels"])
    one = classify_volume(model, tok, np.load(root / "data" / test_m["items"][0]["image"]).astype(np.float32), ps)
    assert one["hepatomegaly"]["probability"] == pytest.approx(res.probability[0, 0], abs=1e-5)
    val = classify_split(model, tok, root / "data" / "validation.json", ps)
    rep = evaluate_zero_shot(res, val, score="similarity", n_boot=20, seed=1)
    assert rep["settings"]["thresholds"] == "validation (f1)" and set(rep["per_finding"]) == set(ps.names)
    again = evaluate_zero_shot(res, val, score="similarity", n_boot=20, seed=1)
    assert json.dumps(rep, sort_keys=True) == json.dumps(again, sort_keys=True)  # NaN-safe equality
    with pytest.raises(PromptSetError, match="give a validation split"):
        evaluate_zero_shot(res, None, score="similarity", n_boot=0)


def test_prompts_longer_than_the_text_tower_are_refused(tiny, tmp_path):
    _, model, tok = tiny
    long = tmp_path / "long.yaml"
    long.write_text("findings: [{name: a, positive: ['" + "word " * 400 + "'], negative: [no]}]\n")
    with pytest.raises(ValueError, match="long.yaml"):
        encode_prompts(model, tok, load_prompt_set(long))


# ---- Bench and lamed predict ---------------------------------------------------------------------------


def test_run_and_eval_classify_match_sklearn_on_the_written_predictions(tiny, tmp_path):
    from sklearn.metrics import roc_auc_score

    from Bench.common import BenchError
    from Bench.eval_classify import evaluate_classify
    from Bench.eval_classify import main as eval_main
    from Bench.run_classify import run_classify

    root, _, _ = tiny
    test, val = root / "data" / "test.json", root / "data" / "validation.json"
    s = run_classify(
        test,
        tmp_path / "zs",
        root / "model",
        val_manifest=val,
        prompt_set="phantom",
        score="similarity",
        n_boot=50,
        seed=3,
        batch_size=4,
    )
    for name in ("predictions.jsonl", "val_predictions.jsonl", "summary.json", "per_sample.csv", "summary.md"):
        assert (tmp_path / "zs" / name).is_file()
    recs = [json.loads(line) for line in (tmp_path / "zs" / "predictions.jsonl").read_text().splitlines()]
    items = {it["id"]: it for it in json.loads(test.read_text())["items"]}
    for name, g in s["per_class"].items():
        y = [int(name in items[r["id"]]["labels"]) for r in recs]
        if 0 < sum(y) < len(y):
            assert g["auroc"] == pytest.approx(roc_auc_score(y, [r["findings"][name]["similarity"] for r in recs]))
        else:
            assert g["auroc"] is None or np.isnan(g["auroc"])
    assert "macro" in (tmp_path / "zs" / "summary.md").read_text()
    # the command line gives the same numbers from the files alone
    again = eval_main(
        [
            "--predictions",
            str(tmp_path / "zs" / "predictions.jsonl"),
            "--manifest",
            str(test),
            "--val-predictions",
            str(tmp_path / "zs" / "val_predictions.jsonl"),
            "--val-manifest",
            str(val),
            "--score",
            "similarity",
            "--prompt-set",
            "phantom",
            "--n-boot",
            "50",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "cli"),
        ]
    )
    assert json.dumps([again["overall"], again["ci95"]]) == json.dumps([s["overall"], s["ci95"]])
    # loud failures: a prediction for an unknown case, a missing finding, a label vocabulary without the finding
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "nobody", "findings": recs[0]["findings"]}) + "\n")
    with pytest.raises(BenchError, match="not in manifest"):
        evaluate_classify(str(bad), str(test), prompt_set="phantom")
    short = dict(recs[0], findings={k: v for k, v in list(recs[0]["findings"].items())[1:]})
    bad.write_text(json.dumps(recs[1]) + "\n" + json.dumps(short) + "\n")
    with pytest.raises(BenchError, match="record 2 .* has findings"):
        evaluate_classify(str(bad), str(test), prompt_set="phantom")
    with pytest.raises(BenchError, match="no natural threshold"):
        evaluate_classify(
            str(tmp_path / "zs" / "predictions.jsonl"), str(test), score="similarity", prompt_set="phantom"
        )
    with pytest.raises(BenchError, match="label_names"):
        evaluate_classify(
            str(tmp_path / "zs" / "predictions.jsonl"), str(_with_vocab(test, tmp_path)), prompt_set="phantom"
        )


def _with_vocab(manifest, tmp_path):
    m = json.loads(manifest.read_text())
    m["label_names"] = ["hepatomegaly"]
    p = manifest.parent / "test_vocab.json"
    p.write_text(json.dumps(m))
    return p


def test_lamed_predict_classify_writes_per_finding_probabilities(tiny, tmp_path, capsys):
    from LaMed.cli import main

    root, model, tok = tiny
    item = json.loads((root / "data" / "test.json").read_text())["items"][0]
    src = root / "data" / item["image"]
    out = tmp_path / "one.json"
    assert (
        main(
            [
                "predict",
                "--model",
                str(root / "model"),
                "--image",
                str(src),
                "--out",
                str(out),
                "--classify",
                "phantom:merlin",
            ]
        )
        == 0
    )
    rec = json.loads(out.read_text())["classification"]
    assert rec["prompt_set"] == "phantom" and rec["style"] == "merlin"
    direct = classify_volume(model, tok, np.load(src).astype(np.float32), load_prompt_set("phantom", style="merlin"))
    for name, v in direct.items():
        assert rec["findings"][name]["probability"] == pytest.approx(v["probability"], abs=1e-5)
    assert (
        main(
            [
                "predict",
                "--model",
                str(root / "model"),
                "--image",
                str(src),
                "--out",
                str(tmp_path / "x.json"),
                "--classify",
                "nope",
            ]
        )
        != 0
    )
    assert "prompt set 'nope' not found" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("family", ["m3d_hsenet1", "med3dvlm_siglip", "hsenet_stage2"])
def test_every_clip_family_scores_zero_shot(tiny, family):
    """M3D-CLIP / HSENet stage 1 (ViT, raw scale), Med3DVLM (DCFormer, SigLIP: its bias cancels in the
    pair), HSENet stage 2 (2E3 tower with slice features): softmax over the pair with the model's scale."""
    _, _, tok = tiny
    torch.manual_seed(1)
    kw = {
        "m3d_hsenet1": dict(vision_encoder="vit3d_test", logit_scale_mode="raw"),
        "med3dvlm_siglip": dict(vision_encoder="dcformer_test", loss_type="siglip", vision_pooling="mean"),
        "hsenet_stage2": dict(vision_encoder="vit3d_2e3_test", logit_scale_mode="raw"),
    }[family]
    model = LamedClipModel(LamedClipConfig(text_config=TINY_BERT, projection_dim=16, **kw)).eval()
    size = tuple(model.vision_model.config.img_size)
    image = torch.rand(1, 1, *size)
    feats = torch.randn(8, 48) if family == "hsenet_stage2" else None
    ps = load_prompt_set("phantom", findings=["hepatomegaly", "splenectomy"])
    got = classify_volume(model, tok, image, ps, slice_features=feats)
    with torch.no_grad():
        extra = {"slice_features": feats[None]} if feats is not None else {}
        img = model.encode_image(image, **extra)[0]
        bias = float(getattr(model, "logit_bias", torch.tensor(0.0)))
        for f in ps.findings:
            sims = []
            for prompts in (f.positive, f.negative):
                e = tok(list(prompts), padding=True, return_tensors="pt")
                sims.append(float((model.encode_text(e["input_ids"], e["attention_mask"]) @ img).mean()))
            logits = torch.tensor([float(model.scale) * s + bias for s in sims])
            assert got[f.name]["probability"] == pytest.approx(torch.softmax(logits, 0)[0].item(), abs=1e-5)


def test_split_with_slice_features_matches_one_volume_at_a_time(tiny, tmp_path):
    _, _, tok = tiny
    root = tiny[0] / "data"
    torch.manual_seed(2)
    model = LamedClipModel(
        LamedClipConfig(
            vision_encoder="vit3d_2e3_test", text_config=TINY_BERT, projection_dim=16, logit_scale_mode="raw"
        )
    ).eval()
    man = json.loads((root / "test.json").read_text())
    rng = np.random.default_rng(0)
    for it in man["items"]:
        rel = f"slice_features/{it['id']}.npy"
        (root / "slice_features").mkdir(exist_ok=True)
        np.save(root / rel, rng.normal(size=(8, 48)).astype(np.float32))
        it["slice_features"] = rel
    (root / "test_sf.json").write_text(json.dumps(man))
    ps = load_prompt_set("phantom", findings=["hepatomegaly", "lung nodule"])
    res = classify_split(model, tok, root / "test_sf.json", ps, batch_size=2, slice_features="slice_features")
    for i, it in enumerate(man["items"]):
        one = classify_volume(
            model,
            tok,
            np.load(root / it["image"]).astype(np.float32),
            ps,
            slice_features=np.load(root / it["slice_features"]),
        )
        assert one["lung nodule"]["probability"] == pytest.approx(res.probability[i, 1], abs=1e-5)
    with pytest.raises(PromptSetError, match="slice_features field 'feats' missing"):
        classify_split(model, tok, root / "test_sf.json", ps, slice_features="feats")
