"""Retrieval front end: embeddings cached once per split, Bench outputs, scores equal a direct ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_configs import tiny_clip_with_phantoms

from LaMed.models.clip import LamedClipModel


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny CLIP saved with the MiniLM tokenizer, and a few test phantoms at 16x64x64."""
    root = tmp_path_factory.mktemp("clip_retrieval")
    tiny_clip_with_phantoms(root, n=6, seed=11, test_fraction=0.99)
    return root


def count_calls(monkeypatch):
    calls = {"image": 0, "text": 0}
    image, text = LamedClipModel.encode_image, LamedClipModel.encode_text

    def enc_image(self, *a, **k):
        calls["image"] += 1
        return image(self, *a, **k)

    def enc_text(self, *a, **k):
        calls["text"] += 1
        return text(self, *a, **k)

    monkeypatch.setattr(LamedClipModel, "encode_image", enc_image)
    monkeypatch.setattr(LamedClipModel, "encode_text", enc_text)
    return calls


def test_second_evaluation_reads_the_cache(setup, monkeypatch, tmp_path):
    from Bench.run_retrieval import run_retrieval

    calls = count_calls(monkeypatch)
    n = len(json.loads((setup / "data" / "test.json").read_text())["items"])
    batches = -(-n // 4)
    assert n >= 5
    first = run_retrieval(
        setup / "data", tmp_path / "a", setup / "model", batch_size=4, max_length=256, cache_dir=tmp_path / "cache"
    )
    assert calls == {"image": batches, "text": batches} and first["encoding"]["from_cache"] is False
    second = run_retrieval(
        setup / "data", tmp_path / "b", setup / "model", batch_size=4, max_length=256, cache_dir=tmp_path / "cache"
    )
    assert calls == {"image": batches, "text": batches} and second["encoding"]["from_cache"] is True  # no re-encoding
    assert second["overall"] == first["overall"]
    for name in ("summary.json", "per_sample.csv", "summary.md", "embeddings.npz"):
        assert (tmp_path / "b" / name).is_file()
    # Another encoding setting or other weights are another cache entry.
    run_retrieval(
        setup / "data", tmp_path / "c", setup / "model", batch_size=4, max_length=64, cache_dir=tmp_path / "cache"
    )
    assert calls["image"] == 2 * batches


def test_cache_key_follows_the_weights(setup, tmp_path):
    from transformers import AutoTokenizer

    from LaMed.inference.retrieval import encode_split

    model = LamedClipModel.from_pretrained(setup / "model")
    tok = AutoTokenizer.from_pretrained(setup / "model")
    manifest = setup / "data" / "test.json"
    a = encode_split(model, tok, manifest, cache_dir=tmp_path, max_length=256)
    with torch.no_grad():
        model.visual_projection.weight.mul_(-1.0)
    b = encode_split(model, tok, manifest, cache_dir=tmp_path, max_length=256)
    assert not a.from_cache and not b.from_cache and a.cache_path != b.cache_path
    np.testing.assert_allclose(b.image, -a.image, atol=1e-6)  # new weights really were used
    c = encode_split(model, tok, manifest, cache_dir=tmp_path, max_length=256)
    assert c.from_cache and c.cache_path == b.cache_path
    np.testing.assert_array_equal(c.image, b.image)
    assert c.labels == b.labels and c.ids == b.ids


def test_scores_equal_a_direct_ranking_of_the_embeddings(setup, tmp_path):
    from Bench.run_retrieval import run_retrieval
    from LaMed.inference.retrieval import SplitEmbeddings, score_embeddings

    summary = run_retrieval(setup / "data", tmp_path, setup / "model", batch_size=3, max_length=256, ks=(1, 5))
    with np.load(tmp_path / "embeddings.npz") as z:
        img, txt, ids = z["image"], z["text"], list(z["ids"])
    sim = txt @ img.T  # report -> volume
    # rank of the match = number of volumes scored strictly higher (by hand, one query at a time)
    ranks = [int(sum(sim[i, j] > sim[i, i] for j in range(len(ids)))) for i in range(len(ids))]
    assert summary["overall"]["text_to_image_R@1"] == pytest.approx(np.mean([r < 1 for r in ranks]))
    assert summary["overall"]["text_to_image_R@5"] == pytest.approx(np.mean([r < 5 for r in ranks]))
    labels = [it["labels"] for it in json.loads((setup / "data" / "test.json").read_text())["items"]]
    lib = score_embeddings(SplitEmbeddings(ids, img, txt, labels), ks=(1, 5), label_ks=(1,))
    assert lib["all"]["text_to_image_R@1"] == summary["overall"]["text_to_image_R@1"]
    assert lib["all"]["chance_R@5"] == pytest.approx(5 / len(ids))
    # Volume -> volume: Jaccard of the nearest other volume's labels, averaged (self excluded).
    e = img / np.linalg.norm(img, axis=1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    nearest = s.argmax(1)
    jac = [len(set(labels[i]) & set(labels[j])) / len(set(labels[i]) | set(labels[j])) for i, j in enumerate(nearest)]
    assert lib["all"]["v2v_jaccard@1"] == pytest.approx(np.mean(jac))
