"""Model-based report metrics: BERTScore (own implementation) and GREEN / RaTEScore (adapters).

All are opt-in: they need a model that is already on disk (``model_path``). Nothing is downloaded;
without a usable local model they raise :class:`~LaMed.metrics.base.MetricUnavailable` with a
message saying what to provide, and never return a made-up score. Scores from a different
backbone than the paper's (e.g. a small local BERT instead of roberta-large layer 17) are not
comparable to published numbers.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .base import MetricUnavailable, check_same_length

__all__ = ["bert_score", "green", "ratescore"]


def _require_model_dir(model_path: str | None, metric: str, published: str) -> str:
    if not model_path:
        raise MetricUnavailable(
            f"{metric} needs a local model: pass model_path=<folder>. The published setting uses {published}; "
            "download it on a connected machine (e.g. `huggingface-cli download ...`) and point model_path at the folder. "
            "Nothing is downloaded at evaluation time."
        )
    if not os.path.isdir(model_path):
        raise MetricUnavailable(f"{metric}: model_path {model_path!r} is not a folder on this machine")
    return model_path


def _normalize_refs(references) -> list[list[str]]:
    out = []
    for i, r in enumerate(references):
        if isinstance(r, str):
            out.append([r])
        elif isinstance(r, (list, tuple)) and r and all(isinstance(x, str) for x in r):
            out.append(list(r))
        else:
            raise TypeError(f"references[{i}] must be a string or a non-empty list of strings")
    return out


def bert_score(
    predictions: Sequence[str],
    references,
    model_path: str | None = None,
    num_layers: int | None = None,
    idf: bool = False,
    batch_size: int = 16,
    device: str = "cpu",
    max_length: int = 510,
) -> dict:
    """BERTScore (Zhang et al. 2020) with a local encoder, the definition of the ``bert-score`` package.

    Each text is tokenised with the model's tokenizer (special tokens added, truncated to
    ``max_length``) and embedded with hidden layer ``num_layers`` (default: the last layer; the
    package's ``lang="en"`` default is roberta-large layer 17). Token vectors are L2-normalised;
    [CLS]/[SEP]-type special tokens get weight 0, other tokens weight 1, or
    idf(w) = log((M + 1) / (df(w) + 1)) over the M references when ``idf``.
    P = sum_j w_j max_i cos(x̂_j, x_i) / sum_j w_j over prediction tokens, R the same over reference
    tokens, F = 2PR / (P + R); the max runs over all tokens of the other text, markers included
    (as in bert-score). Several references: the one with the highest F. An empty text
    scores 0. No baseline rescaling.

    Returns:
        ``{"precision": [..], "recall": [..], "f1": [..], "P": mean, "R": mean, "F": mean}``.

    Raises:
        MetricUnavailable: no ``model_path`` folder.
    """
    path = _require_model_dir(model_path, "BERTScore", "roberta-large (layer 17)")
    check_same_length(predictions, references)
    refs = _normalize_refs(references)
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    n_layers = model.config.num_hidden_layers
    layer = n_layers if num_layers is None else int(num_layers)
    if not 0 <= layer <= n_layers:
        raise ValueError(f"num_layers must be in [0, {n_layers}] for {path}, got {num_layers}")
    # Like bert-score: only the sequence markers ([CLS]/[SEP], <s>/</s>) are ignored; [UNK] counts.
    special = {i for i in (tok.cls_token_id, tok.sep_token_id, tok.bos_token_id, tok.eos_token_id) if i is not None}

    texts = sorted(set([p.strip() for p in predictions] + [r.strip() for rs in refs for r in rs]))
    ids = {t: tok(t, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"] for t in texts}

    idf_of: dict = {}
    if idf:
        m = sum(len(rs) for rs in refs)
        df = Counter(i for rs in refs for r in rs for i in set(ids[r.strip()]))
        idf_of = {i: math.log((m + 1) / (c + 1)) for i, c in df.items()}
        default_idf = math.log(m + 1)  # token never seen in the references

    emb: dict = {}
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            seqs = [ids[t] for t in chunk]
            width = max(len(s) for s in seqs)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[layer]
            hidden = torch.nn.functional.normalize(hidden.float(), dim=-1)
            for t, s, h in zip(chunk, seqs, hidden):
                emb[t] = h[: len(s)].cpu().numpy().astype(np.float64)

    def weights(t):
        w = np.array([0.0 if i in special else (idf_of.get(i, default_idf) if idf else 1.0) for i in ids[t]])
        return w

    precision, recall, f1 = [], [], []
    for p, rs in zip(predictions, refs):
        p = p.strip()
        best = None
        for r in rs:
            r = r.strip()
            wp, wr = weights(p), weights(r)
            if wp.sum() <= 0 or wr.sum() <= 0:
                continue  # an empty text has no token to match: scores 0
            sim = emb[p] @ emb[r].T  # (pred tokens, ref tokens)
            pp = float((sim.max(axis=1) * wp).sum() / wp.sum())
            rr = float((sim.max(axis=0) * wr).sum() / wr.sum())
            ff = 2 * pp * rr / (pp + rr) if pp + rr > 0 else 0.0
            if best is None or ff > best[2]:
                best = (pp, rr, ff)
        best = best or (0.0, 0.0, 0.0)
        precision.append(best[0])
        recall.append(best[1])
        f1.append(best[2])
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"precision": precision, "recall": recall, "f1": f1, "P": mean(precision), "R": mean(recall), "F": mean(f1)}


def green(
    predictions: Sequence[str],
    references: Sequence[str],
    model_path: str | None = None,
    batch_size: int = 8,
    cuda: bool = False,
) -> dict:
    """GREEN (Ostmeier et al. 2024) through the official ``green-score`` package and a local judge model.

    GREEN = matched findings / (matched findings + clinically significant errors), counted by the
    7B judge ``StanfordAIMI/GREEN-radllama2-7b`` (a GPU is needed in practice). This is an adapter:
    the judge prompt and the parsing are the package's.

    Returns:
        ``{"scores": [..], "mean": .., "std": ..}``.

    Raises:
        MetricUnavailable: no local model folder, or ``green-score`` not installed.
    """
    path = _require_model_dir(model_path, "GREEN", "StanfordAIMI/GREEN-radllama2-7b")
    check_same_length(predictions, references)
    try:
        from green_score import GREEN
    except ImportError as exc:
        raise MetricUnavailable("GREEN needs the green-score package (pip install green-score)") from exc
    scorer = GREEN(
        model_id_or_path=path, do_sample=False, batch_size=batch_size, return_0_if_no_green_score=True, cuda=cuda
    )
    mean, std, scores, _summary, _df = scorer(list(references), list(predictions))
    return {"scores": [float(s) for s in scores], "mean": float(mean), "std": float(std)}


def ratescore(
    predictions: Sequence[str],
    references: Sequence[str],
    ner_model_path: str | None = None,
    synonym_model_path: str | None = None,
) -> dict:
    """RaTEScore (Zhao et al. 2024) through the official ``RaTEScore`` package with local models.

    Needs the NER model ``Angelakeke/RaTE-NER-Deberta`` (``ner_model_path``) and the synonym
    encoder ``FremyCompany/BioLORD-2023-C`` (``synonym_model_path``) on disk. HSENet reports the
    mean of the per-sample scores (RaTEScore 0.5.0).

    Returns:
        ``{"scores": [..], "mean": ..}``.

    Raises:
        MetricUnavailable: a model folder is missing, or ``RaTEScore`` is not installed.
    """
    ner = _require_model_dir(ner_model_path, "RaTEScore (NER model)", "Angelakeke/RaTE-NER-Deberta")
    syn = _require_model_dir(synonym_model_path, "RaTEScore (synonym model)", "FremyCompany/BioLORD-2023-C")
    check_same_length(predictions, references)
    try:
        from RaTEScore import RaTEScore
    except ImportError as exc:
        raise MetricUnavailable("RaTEScore needs the RaTEScore package (pip install RaTEScore)") from exc
    scorer = RaTEScore(bert_model=ner, eval_model=syn)
    scores = [float(s) for s in scorer.compute_score(list(predictions), list(references))]
    return {"scores": scores, "mean": float(np.mean(scores)) if scores else float("nan")}
