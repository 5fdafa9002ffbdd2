"""Cross-modal retrieval metrics (Recall@K) and label-overlap volume-to-volume retrieval.

Conventions
-----------
* ``similarity[i, j]`` scores query ``i`` against candidate ``j``; by default the match of query ``i``
  is candidate ``i`` (``targets`` overrides this).
* The **rank** of a query is the number of candidates that score *strictly* higher than its match
  (0 = the match is first). Ties therefore never push a query down: a query whose match ties with
  other candidates at the top still has rank 0. This is the optimistic tie rule; ``torch.topk``
  based code (M3D ``eval_itr.py``, Med3DVLM ``eval_clip.py``) breaks ties by index order instead,
  which only differs when scores are exactly equal.
* ``Recall@K`` = fraction of queries with ``rank < K`` (a single positive per query, so it equals
  the "accuracy@K" of Med3DVLM and the hit rate of HSENet).

Naming of directions differs between papers (Med3DVLM's ``IR`` ranks texts for each image, i.e.
what is usually called text retrieval); Bench writes ``image_to_text`` / ``text_to_image``.

Everything is computed in blocks so that 10^5 x 10^5 never materialises the full matrix: memory is
``O(chunk x cand_chunk)`` plus the two embedding matrices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .base import to_numpy

__all__ = [
    "retrieval_ranks",
    "retrieval_ranks_from_embeddings",
    "recall_at_k",
    "recall_at_k_from_embeddings",
    "recall_from_ranks",
    "label_overlap_at_k",
    "labels_to_multihot",
    "hsenet_cumulative_label_overlap",
]


def _targets(n_queries: int, n_cands: int, targets) -> np.ndarray:
    if targets is None:
        if n_cands < n_queries:
            raise ValueError(
                f"similarity has {n_queries} queries but only {n_cands} candidates; with the default pairing "
                "(query i matches candidate i) there must be at least as many candidates, or pass targets="
            )
        return np.arange(n_queries)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    if t.shape[0] != n_queries:
        raise ValueError(f"targets has {t.shape[0]} entries, expected one per query ({n_queries})")
    if t.size and (t.min() < 0 or t.max() >= n_cands):
        raise ValueError(f"targets must index candidates in [0, {n_cands}), got range [{t.min()}, {t.max()}]")
    return t


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def retrieval_ranks(similarity, targets: Sequence[int] | None = None, chunk: int = 4096) -> np.ndarray:
    """Rank of each query's match: number of candidates with a strictly higher score.

    Args:
        similarity: ``(Q, C)`` array or tensor of scores (higher = more similar).
        targets: ``(Q,)`` index of the matching candidate of each query; default ``arange(Q)``.
        chunk: rows processed at once (bounds the temporary boolean block to ``chunk x C``).

    Returns:
        ``(Q,)`` int64 ranks, 0-based.
    """
    s = to_numpy(similarity, "similarity")
    if s.ndim != 2:
        raise ValueError(f"similarity must be 2-D (queries, candidates), got shape {s.shape}")
    q, c = s.shape
    t = _targets(q, c, targets)
    ranks = np.empty(q, dtype=np.int64)
    for start in range(0, q, chunk):
        block = np.asarray(s[start : start + chunk])
        rows = np.arange(block.shape[0])
        match = block[rows, t[start : start + chunk]]
        ranks[start : start + chunk] = np.count_nonzero(block > match[:, None], axis=1)
    return ranks


def recall_from_ranks(ranks, ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """``{k: mean(rank < k)}`` from 0-based ranks (NaN for an empty set of queries)."""
    ranks = np.asarray(ranks)
    ks = _check_ks(ks)
    if ranks.size == 0:
        return {k: float("nan") for k in ks}
    return {k: float(np.mean(ranks < k)) for k in ks}


def recall_at_k(
    similarity, ks: Iterable[int] = (1, 5, 10), targets: Sequence[int] | None = None, chunk: int = 4096
) -> dict[int, float]:
    """Recall@K for a score matrix: ``{k: fraction of queries whose match has rank < k}``.

    ``similarity[i, j]`` scores query i against candidate j and candidate ``targets[i]`` (default i)
    is the match. Ties do not push a query down (see module docstring).
    """
    return recall_from_ranks(retrieval_ranks(similarity, targets=targets, chunk=chunk), ks)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def retrieval_ranks_from_embeddings(
    query_emb,
    cand_emb,
    targets: Sequence[int] | None = None,
    chunk: int = 1024,
    cand_chunk: int = 8192,
    normalize: bool = False,
) -> np.ndarray:
    """Ranks from two embedding matrices without forming the full ``(Q, C)`` score matrix.

    Scores are dot products ``query_emb @ cand_emb.T`` in float32 (cosine similarity when
    ``normalize=True`` or when the inputs are already L2-normalised). Work is done in
    ``chunk x cand_chunk`` blocks (32 MB at the defaults), so memory stays at the size of the
    inputs; time is ``O(Q * C * dim)``, about 38 s for 10^5 x 10^5 at dim 256 on two CPU cores.

    Args:
        query_emb: ``(Q, dim)``; cand_emb: ``(C, dim)`` (numpy arrays or tensors).
        targets: index of the matching candidate per query (default ``arange(Q)``).

    Returns:
        ``(Q,)`` int64 ranks (number of candidates scoring strictly higher than the match).
    """
    qe = np.asarray(to_numpy(query_emb, "query_emb"), dtype=np.float32)
    ce = np.asarray(to_numpy(cand_emb, "cand_emb"), dtype=np.float32)
    if qe.ndim != 2 or ce.ndim != 2 or qe.shape[1] != ce.shape[1]:
        raise ValueError(f"query_emb and cand_emb must be (N, dim) with the same dim, got {qe.shape} and {ce.shape}")
    if normalize:
        qe, ce = _l2_normalize(qe), _l2_normalize(ce)
    q, c = qe.shape[0], ce.shape[0]
    t = _targets(q, c, targets)
    ce_t = np.ascontiguousarray(ce.T)  # (dim, C): contiguous column blocks for the matmul
    ranks = np.zeros(q, dtype=np.int64)
    for qs in range(0, q, chunk):
        qb = qe[qs : qs + chunk]
        tb = t[qs : qs + chunk]
        # The match score comes from a matmul with the same inner dimension as the score blocks
        # (BLAS sums over dim in the same order), so an exact tie, e.g. a duplicated candidate,
        # stays an exact tie instead of rounding into a spurious "strictly higher".
        match = np.diagonal(qb @ ce_t[:, tb]).copy()
        for cs in range(0, c, cand_chunk):
            block = qb @ ce_t[:, cs : cs + cand_chunk]
            ranks[qs : qs + qb.shape[0]] += np.count_nonzero(block > match[:, None], axis=1)
    return ranks


def recall_at_k_from_embeddings(
    query_emb,
    cand_emb,
    ks: Iterable[int] = (1, 5, 10),
    targets: Sequence[int] | None = None,
    chunk: int = 1024,
    cand_chunk: int = 8192,
    normalize: bool = False,
) -> dict[int, float]:
    """Recall@K from embeddings, computed in blocks (see :func:`retrieval_ranks_from_embeddings`)."""
    ranks = retrieval_ranks_from_embeddings(
        query_emb, cand_emb, targets=targets, chunk=chunk, cand_chunk=cand_chunk, normalize=normalize
    )
    return recall_from_ranks(ranks, ks)


# --------------------------------------------------------------------------------------------
# Volume-to-volume retrieval scored by label overlap (CT-CLIP / HSENet style)
# --------------------------------------------------------------------------------------------


def _label_matrix(labels, name: str) -> np.ndarray:
    """Multi-hot ``(N, L)`` bool matrix from a 0/1 matrix or from a list of label-name sets."""
    if isinstance(labels, np.ndarray) or hasattr(labels, "detach"):
        arr = to_numpy(labels, name)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a (N, num_labels) multi-hot matrix, got shape {arr.shape}")
        return arr.astype(bool)
    raise TypeError(f"{name} must be a multi-hot numpy array; use labels_to_multihot() for lists of names")


def labels_to_multihot(label_sets: Sequence[Iterable[str]], vocabulary: Sequence[str] | None = None):
    """Turn lists of label names into a ``(N, L)`` bool matrix; returns ``(matrix, vocabulary)``."""
    sets = [set(s) for s in label_sets]
    vocab = list(vocabulary) if vocabulary is not None else sorted(set().union(*sets)) if sets else []
    index = {name: i for i, name in enumerate(vocab)}
    out = np.zeros((len(sets), len(vocab)), dtype=bool)
    for r, s in enumerate(sets):
        for name in s:
            if name not in index:
                raise ValueError(f"label {name!r} of item {r} is not in the vocabulary")
            out[r, index[name]] = True
    return out, vocab


def _overlap(q: np.ndarray, c: np.ndarray, measure: str) -> np.ndarray:
    """Overlap of one query label row ``(L,)`` with candidate rows ``(K, L)`` -> ``(K,)``."""
    inter = (c & q).sum(axis=1).astype(np.float64)
    if measure == "jaccard":
        union = (c | q).sum(axis=1).astype(np.float64)
        # Two empty label sets are identical: Jaccard 1 (HSENet never meets this case because it
        # drops candidates without labels).
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    if measure == "precision":
        n_c = c.sum(axis=1).astype(np.float64)
        return np.where(n_c > 0, inter / np.maximum(n_c, 1), 0.0)
    if measure == "hit":
        return (inter > 0).astype(np.float64)
    raise ValueError(f"measure must be 'jaccard', 'precision' or 'hit', got {measure!r}")


def _topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores of a row, ties broken by lower index (stable sort)."""
    k = min(k, scores.shape[0])
    return np.argsort(-scores, kind="stable")[:k]


def _per_query_overlaps(similarity, query_labels, cand_labels, ks, measure, exclude_self):
    s = to_numpy(similarity, "similarity")
    ql = _label_matrix(query_labels, "query_labels")
    cl = _label_matrix(cand_labels, "cand_labels")
    if s.ndim != 2 or s.shape != (ql.shape[0], cl.shape[0]):
        raise ValueError(
            f"similarity must be (num_queries, num_candidates) = ({ql.shape[0]}, {cl.shape[0]}), got {s.shape}"
        )
    if ql.shape[1] != cl.shape[1]:
        raise ValueError(f"query_labels has {ql.shape[1]} label columns but cand_labels has {cl.shape[1]}")
    ks = _check_ks(ks)
    kmax = max(ks)
    out = {k: np.empty(s.shape[0]) for k in ks}
    for i in range(s.shape[0]):
        row = np.asarray(s[i], dtype=np.float64).copy()
        if exclude_self:
            if i >= row.shape[0]:
                raise ValueError("exclude_self=True needs query i to be candidate i")
            order = _topk_indices(row, kmax + 1)
            order = order[order != i][:kmax]
        else:
            order = _topk_indices(row, kmax)
        ov = _overlap(ql[i], cl[order], measure)
        for k in ks:
            out[k][i] = ov[:k].mean() if min(k, ov.shape[0]) > 0 else float("nan")
    return out


def label_overlap_at_k(
    similarity,
    query_labels,
    cand_labels,
    ks: Iterable[int] = (1, 5, 10, 50),
    measure: str = "jaccard",
    exclude_self: bool = True,
) -> dict[int, float]:
    """Mean label overlap of the top-K retrieved volumes, each K computed independently.

    For each query, the K candidates with the highest similarity are retrieved (ties broken by
    lower index), each is scored against the query's label set, the K scores are averaged, and the
    result is averaged over queries.

    Args:
        similarity: ``(Q, C)`` scores (e.g. cosine similarity of image embeddings).
        query_labels, cand_labels: multi-hot ``(Q, L)`` / ``(C, L)`` matrices (see
            :func:`labels_to_multihot`).
        measure: ``"jaccard"`` = |A∩B| / |A∪B| (HSENet's ``calc_similarity``; two empty sets
            score 1), ``"precision"`` = |A∩B| / |B| (share of the retrieved volume's labels that the
            query has; 0 when B is empty), ``"hit"`` = 1 if they share at least one label.
        exclude_self: drop candidate ``i`` from query ``i``'s list (needs the same ordering of
            queries and candidates). HSENet keeps it (``exclude_self=False``).

    Returns:
        ``{k: mean overlap}``.
    """
    per = _per_query_overlaps(similarity, query_labels, cand_labels, ks, measure, exclude_self)
    return {k: float(np.mean(v)) if v.size else float("nan") for k, v in per.items()}


def hsenet_cumulative_label_overlap(
    similarity, query_labels, cand_labels, ks: Sequence[int] = (1, 5, 10, 50), exclude_self: bool = False
) -> dict[int, float]:
    """HSENet's published volume-to-volume "MAP@K", reproducing its accumulation across K.

    HSENet (``Preprint/LaMed/src/utils/image_text_retrieval_stage*.py``) appends every query's mean
    Jaccard at K to one list that is never reset between K values and reports the mean of that
    list. With the same queries for each K this is the running mean of the per-K values:
    ``reported[K_j] = mean(jaccard@K_1, ..., jaccard@K_j)`` for ``ks`` in the given order. Use
    :func:`label_overlap_at_k` for the per-K (standard) numbers. Candidates are expected to be
    filtered to volumes with at least one positive label (as HSENet does); the query itself is not
    excluded by default, as in HSENet.
    """
    ks = list(ks)
    per = _per_query_overlaps(similarity, query_labels, cand_labels, ks, "jaccard", exclude_self)
    pooled: list[np.ndarray] = []
    out = {}
    for k in ks:
        pooled.append(per[k])
        out[k] = float(np.mean(np.concatenate(pooled)))
    return out
