"""Recall@K and label-overlap retrieval against hand computations and a brute-force definition."""

import numpy as np
import pytest

from LaMed.metrics.retrieval import (
    hsenet_cumulative_label_overlap,
    label_overlap_at_k,
    labels_to_multihot,
    recall_at_k,
    recall_at_k_from_embeddings,
    retrieval_ranks,
    retrieval_ranks_from_embeddings,
)


def brute_ranks(sim, targets=None):
    targets = range(sim.shape[0]) if targets is None else targets
    return np.array([sum(1 for j in range(sim.shape[1]) if sim[i, j] > sim[i, t]) for i, t in enumerate(targets)])


def test_hand_example_with_ties():
    s = np.array(
        [
            [0.5, 0.5, 0.1],  # tie with another candidate at the top: still rank 0
            [0.9, 0.2, 0.2],  # one strictly higher, one tie: rank 1
            [0.3, 0.3, 0.3],
        ]
    )  # all equal: rank 0
    assert retrieval_ranks(s).tolist() == [0, 1, 0]
    assert recall_at_k(s, ks=(1, 2)) == {1: pytest.approx(2 / 3), 2: 1.0}


def test_random_matrix_matches_brute_force_and_chunking():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=(37, 41)).astype(np.float32)  # many ties
    expect = brute_ranks(s)
    assert np.array_equal(retrieval_ranks(s, chunk=5), expect)
    r = recall_at_k(s, ks=(1, 5, 10), chunk=8)
    for k in (1, 5, 10):
        assert r[k] == pytest.approx(np.mean(expect < k))


def test_targets_and_torch_input():
    torch = pytest.importorskip("torch")
    s = np.array([[0.1, 0.9, 0.3], [0.8, 0.1, 0.7]])
    assert retrieval_ranks(torch.tensor(s), targets=[1, 2]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="targets"):
        retrieval_ranks(s, targets=[0, 5])
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(s, ks=(0,), targets=[1, 2])


def test_embeddings_equal_matrix_version_including_duplicates():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((53, 16)).astype(np.float32)
    c = rng.standard_normal((61, 16)).astype(np.float32)
    c[3] = c[0]  # exact duplicate of query 0's match: a tie that must not push query 0 down
    c[10] = c[7]
    c[20] = 2 * c[20]
    sim = q @ c.T
    expect = brute_ranks(sim)
    got = retrieval_ranks_from_embeddings(q, c, chunk=7, cand_chunk=5)
    assert np.array_equal(got, expect)
    assert recall_at_k_from_embeddings(q, c, ks=(1, 5), chunk=9, cand_chunk=13) == recall_at_k(sim, ks=(1, 5))
    # normalize=True is cosine similarity
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    assert np.array_equal(retrieval_ranks_from_embeddings(q, c, normalize=True), brute_ranks(qn @ cn.T))


def test_embedding_shape_errors():
    with pytest.raises(ValueError, match="same dim"):
        retrieval_ranks_from_embeddings(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least as many candidates"):
        retrieval_ranks(np.zeros((4, 3)))


LABELS = [{"nodule", "effusion"}, {"nodule"}, {"effusion", "emphysema"}, {"nodule", "effusion"}]


def test_label_overlap_hand_example():
    lab, vocab = labels_to_multihot(LABELS)
    assert vocab == ["effusion", "emphysema", "nodule"]
    s = np.array([[1.0, 0.9, 0.1, 0.8], [0.7, 1.0, 0.2, 0.6], [0.3, 0.1, 1.0, 0.2], [0.9, 0.4, 0.3, 1.0]])
    # exclude self: q0 retrieves 1 (J=1/2) then 3 (J=1); q1 -> 0 (1/2), 3 (1/2); q2 -> 0 (1/3), 3 (1/3);
    # q3 -> 0 (1), 1 (1/2)
    out = label_overlap_at_k(s, lab, lab, ks=(1, 2), measure="jaccard", exclude_self=True)
    assert out[1] == pytest.approx(np.mean([1 / 2, 1 / 2, 1 / 3, 1]))
    assert out[2] == pytest.approx(np.mean([3 / 4, 1 / 2, 1 / 3, 3 / 4]))
    # keeping self (HSENet): top-1 is the query itself -> Jaccard 1 everywhere
    assert label_overlap_at_k(s, lab, lab, ks=(1,), exclude_self=False)[1] == 1.0
    # precision = |A∩B| / |B|: q2 retrieves 0 ({effusion, nodule}) -> 1/2
    prec = label_overlap_at_k(s, lab, lab, ks=(1,), measure="precision")
    assert prec[1] == pytest.approx(np.mean([1.0, 1 / 2, 1 / 2, 1.0]))
    assert label_overlap_at_k(s, lab, lab, ks=(1,), measure="hit")[1] == 1.0


def test_hsenet_cumulative_reproduces_the_unreset_accumulator():
    rng = np.random.default_rng(2)
    n = 12
    lab = rng.random((n, 5)) < 0.4
    lab[:, 0] |= ~lab.any(axis=1)  # every candidate has a positive label, as HSENet filters
    s = rng.standard_normal((n, n))
    ks = (1, 3, 5)
    # HSENet's procedure written out: one list, never reset, mean reported after each K.
    acc, reported = [], {}
    for k in ks:
        for i in range(n):
            top = sorted(range(n), key=lambda j: -s[i, j])[:k]
            acc.append(np.mean([(lab[i] & lab[j]).sum() / (lab[i] | lab[j]).sum() for j in top]))
        reported[k] = np.mean(acc)
    got = hsenet_cumulative_label_overlap(s, lab, lab, ks=ks)
    for k in ks:
        assert got[k] == pytest.approx(reported[k])
    per_k = label_overlap_at_k(s, lab, lab, ks=ks, exclude_self=False)
    assert got[3] == pytest.approx((per_k[1] + per_k[3]) / 2)
    assert got[1] == pytest.approx(per_k[1])
