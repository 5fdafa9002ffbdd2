"""Linear probes on CLIP image embeddings (LaMed.inference.linear_probe, Bench.run_classify --probe-manifest).

Expected values: a planted linear signal is found and noise is not (AUROC by scikit-learn on held-out
cases); the probe's probabilities equal those of a logistic regression fitted directly with
scikit-learn on the L2-normalised embeddings; the Bench numbers equal scikit-learn's AUROC of the
probabilities it wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_configs import tiny_clip_with_phantoms

from LaMed.inference.linear_probe import fit_linear_probe


def _planted(n: int, seed: int):
    """Embeddings whose first axis carries finding "a"; finding "b" is independent of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16))
    a = (x[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)
    b = rng.integers(0, 2, size=n)
    return x * rng.uniform(0.5, 3.0, size=(n, 1)), np.stack([a, b], 1)  # any norm: the probe normalises


def test_probe_finds_a_planted_direction_and_not_noise():
    from sklearn.metrics import roc_auc_score

    x, y = _planted(600, 0)
    xt, yt = _planted(2000, 1)
    probe = fit_linear_probe(x, y, ["a", "b"])
    p = probe.predict_proba(xt)
    assert p.shape == (2000, 2) and ((p > 0) & (p < 1)).all()
    assert roc_auc_score(yt[:, 0], p[:, 0]) > 0.9
    assert abs(roc_auc_score(yt[:, 1], p[:, 1]) - 0.5) < 0.06


def test_probe_probabilities_equal_a_direct_scikit_learn_fit():
    from sklearn.linear_model import LogisticRegression

    x, y = _planted(300, 2)
    xt, _ = _planted(50, 3)
    probe = fit_linear_probe(x, y, ["a", "b"], c=0.3)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit_t = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    for k in range(2):
        ref = LogisticRegression(C=0.3, max_iter=5000).fit(unit, y[:, k]).predict_proba(unit_t)[:, 1]
        np.testing.assert_allclose(probe.predict_proba(xt)[:, k], ref, rtol=1e-6, atol=1e-9)
    # extreme logits do not overflow
    big = fit_linear_probe(x, y, ["a", "b"], c=1e6)
    assert np.isfinite(big.predict_proba(xt * 1e3)).all()


def test_probe_refusals_name_the_problem():
    x, y = _planted(40, 4)
    y1 = y.copy()
    y1[:, 1] = 0
    with pytest.raises(ValueError, match=r"\['b'\] have only positive or only negative"):
        fit_linear_probe(x, y1, ["a", "b"])
    with pytest.raises(ValueError, match="expected shape"):
        fit_linear_probe(x, y[:, :1], ["a", "b"])
    with pytest.raises(ValueError, match="must be > 0"):
        fit_linear_probe(x, y, ["a", "b"], c=0.0)
    with pytest.raises(ValueError, match="0/1"):
        fit_linear_probe(x, y * 2, ["a", "b"])
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_probe(bad, y, ["a", "b"])
    probe = fit_linear_probe(x, y, ["a", "b"])
    with pytest.raises(ValueError, match="dimensions"):
        probe.predict_proba(x[:, :8])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("linear_probe")
    tiny_clip_with_phantoms(root, n=30, seed=11, test_fraction=0.3)
    return root


def _two_class_findings(manifest, names):
    items = json.loads(manifest.read_text())["items"]
    return [n for n in names if 0 < sum(n in it["labels"] for it in items) < len(items)]


def test_run_classify_probe_writes_and_scores_like_zero_shot(tiny, tmp_path):
    from sklearn.metrics import roc_auc_score

    from Bench.common import BenchError
    from Bench.run_classify import main as run_main
    from LaMed.inference.classify import load_prompt_set

    train, test = tiny / "data" / "train.json", tiny / "data" / "test.json"
    usable = _two_class_findings(train, load_prompt_set("phantom").names)
    assert len(usable) >= 3, usable
    args = ["--model", str(tiny / "model"), "--manifest", str(test), "--prompt-set", "phantom", "--n-boot", "20"]
    s = run_main([*args, "--findings", ",".join(usable), "--probe-manifest", str(train), "--out", str(tmp_path / "zs")])
    lp = s["linear_probe"]
    assert lp["train_cases"] == len(json.loads(train.read_text())["items"]) and lp["c"] == 1.0
    for name in ("predictions.jsonl", "summary.json", "per_sample.csv", "summary.md"):
        assert (tmp_path / "zs" / "linear_probe" / name).is_file()
    recs = [json.loads(r) for r in (tmp_path / "zs" / "linear_probe" / "predictions.jsonl").read_text().splitlines()]
    items = {it["id"]: it for it in json.loads(test.read_text())["items"]}
    assert [r["id"] for r in recs] == list(items)
    checked = 0
    for name in usable:
        y = [int(name in items[r["id"]]["labels"]) for r in recs]
        if 0 < sum(y) < len(y):
            assert lp["auroc"][name] == pytest.approx(
                roc_auc_score(y, [r["findings"][name]["probability"] for r in recs])
            )
            checked += 1
    assert checked >= 1
    # the zero-shot result of the same call is unchanged by the probe
    plain = run_main([*args, "--findings", ",".join(usable), "--out", str(tmp_path / "plain")])
    assert json.dumps(plain["per_class"]) == json.dumps(s["per_class"]) and "linear_probe" not in plain
    # refusals name the split or the option, and write nothing (the probes are fitted first)
    m = json.loads(train.read_text())
    m["items"] = [it for it in m["items"] if "splenectomy" not in it["labels"]]
    no_removal = tiny / "data" / "train_no_splenectomy.json"
    no_removal.write_text(json.dumps(m))
    with pytest.raises(BenchError, match=r"train_no_splenectomy\.json: finding\(s\) \['splenectomy'\] have only"):
        run_main(
            [*args, "--findings", "splenectomy", "--probe-manifest", str(no_removal), "--out", str(tmp_path / "x")]
        )
    with pytest.raises(BenchError, match="--probe-c"):
        run_main([*args, "--probe-manifest", str(train), "--probe-c", "0", "--out", str(tmp_path / "y")])
    with pytest.raises(BenchError, match=r"shares \d+ volume\(s\) with the test manifest"):
        run_main([*args, "--probe-manifest", str(test), "--out", str(tmp_path / "z")])
    unlabelled = tiny / "data" / "train_unlabelled.json"
    m = json.loads(train.read_text())
    m["items"] = [{k: v for k, v in it.items() if k != "labels"} for it in m["items"]]
    unlabelled.write_text(json.dumps(m))
    with pytest.raises(BenchError, match=r"train_unlabelled\.json: the items carry no 'labels'"):
        run_main([*args, "--probe-manifest", str(unlabelled), "--out", str(tmp_path / "u")])
    with pytest.raises(BenchError, match="missing.json: manifest not found"):
        run_main([*args, "--probe-manifest", str(tmp_path / "missing.json"), "--out", str(tmp_path / "m")])
    assert not any((tmp_path / d).exists() for d in "xyzum")
