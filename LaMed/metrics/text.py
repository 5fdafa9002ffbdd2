"""Report / answer text metrics: BLEU, ROUGE, CIDEr-D, METEOR, and the papers' per-sample variants.

Pure Python (no Java, no downloads) except :func:`meteor`, which runs the METEOR 1.5 jar shipped
with pycocoevalcap. Each function states which reference implementation it reproduces; the tests
compare against that implementation on the same inputs.

Inputs: ``predictions`` is a list of strings; ``references`` is a list of the same length whose
items are a string (one reference) or a list of strings (several references).

Tokenisation (``tokenize=``) is explicit because it changes the numbers:

* ``"basic"`` (default): lower-case, every run of characters outside ``[a-z0-9]`` is a separator.
  This is rouge-score's tokenizer; for BLEU / CIDEr it equals pycocoevalcap run on
  ``" ".join(tokens)`` (pycocoevalcap itself only splits on whitespace and expects text that the
  Java PTBTokenizer already lower-cased and stripped of punctuation).
* ``"13a"``: sacrebleu's default WMT tokenizer (case kept), also used by HF ``evaluate``'s BLEU.
* ``"whitespace"``: ``str.split()`` of already tokenised text.
* ``"ptb"``: pycocoevalcap's PTBTokenizer (Stanford CoreNLP jar; needs Java), the exact COCO
  caption pipeline.
* or any callable ``str -> list[str]``.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from collections.abc import Callable, Sequence

from .base import MetricUnavailable, check_same_length, mean_or_nan

__all__ = [
    "tokenize_basic",
    "tokenize_13a",
    "tokenize_texts",
    "corpus_bleu",
    "bleu",
    "rouge_l",
    "rouge_l_scores",
    "rouge_n",
    "rouge_n_scores",
    "coco_rouge_l",
    "coco_rouge_l_scores",
    "cider",
    "cider_scores",
    "meteor",
    "meteor_with_scores",
    "hf_sentence_bleu",
    "m3d_bleu1",
    "m3d_bleu1_scores",
    "hsenet_ngram_precisions",
    "hsenet_ngram_precision_scores",
    "lcs_length",
]

Tokenize = str | Callable[[str], list] | None
References = Sequence[str | Sequence[str]]

# ----------------------------------------------------------------------------------------------
# Tokenisers
# ----------------------------------------------------------------------------------------------

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def tokenize_basic(text: str) -> list[str]:
    """Lower-case and split on every run of characters outside ``[a-z0-9]`` (rouge-score's rule)."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


# mteval-v13a: isolate most ASCII punctuation/symbols; split "." and "," except between digits;
# split a "-" that follows a digit. Character classes written out for readability.
_13A_RULES = [
    (re.compile(r"([{|}~\[\\\]^_`!-&(-+:-@/])"), r" \1 "),
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def tokenize_13a(text: str, lowercase: bool = False) -> list[str]:
    """sacrebleu's ``13a`` tokenizer (the WMT mteval-v13a rules), case kept unless ``lowercase``."""
    line = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    if lowercase:
        line = line.lower()
    return line.split()


def _tokenize_ptb(texts: Sequence[str]) -> list[list[str]]:
    """pycocoevalcap's PTBTokenizer (Java): lower-cased, punctuation tokens removed."""
    if shutil.which("java") is None:
        raise MetricUnavailable(
            "tokenize='ptb' needs a Java runtime (java not found on PATH); install a JRE or use tokenize='basic'"
        )
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as exc:
        raise MetricUnavailable("tokenize='ptb' needs the pycocoevalcap package (pip install pycocoevalcap)") from exc
    # PTBTokenizer reads one caption a line, so newlines inside a text would split it.
    data = {i: [{"caption": " ".join(t.split())}] for i, t in enumerate(texts)}
    out = PTBTokenizer().tokenize(data)
    return [out[i][0].split() for i in range(len(texts))]


def tokenize_texts(texts: Sequence[str], tokenize: Tokenize = "basic") -> list[list[str]]:
    """Tokenise a list of texts with one of the named tokenisers (see module docstring) or a callable."""
    if tokenize == "ptb":
        return _tokenize_ptb(texts)
    if callable(tokenize):
        fn = tokenize
    elif tokenize == "basic":
        fn = tokenize_basic
    elif tokenize == "13a":
        fn = tokenize_13a
    elif tokenize in ("whitespace", None, "none"):
        fn = str.split
    else:
        raise ValueError(f"tokenize must be 'basic', '13a', 'whitespace', 'ptb' or a callable, got {tokenize!r}")
    return [list(fn(t)) for t in texts]


def _normalize_inputs(predictions: Sequence[str], references: References) -> tuple[list[str], list[list[str]]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be lists of strings, not a single string")
    check_same_length(predictions, references)
    preds = []
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise TypeError(f"predictions[{i}] must be a string, got {type(p).__name__}")
        preds.append(p)
    refs = []
    for i, r in enumerate(references):
        if isinstance(r, str):
            refs.append([r])
        elif isinstance(r, (list, tuple)) and r and all(isinstance(x, str) for x in r):
            refs.append(list(r))
        else:
            raise TypeError(f"references[{i}] must be a string or a non-empty list of strings, got {r!r}")
    return preds, refs


def _tokenize_pairs(predictions, references, tokenize) -> tuple[list[list[str]], list[list[list[str]]]]:
    preds, refs = _normalize_inputs(predictions, references)
    flat = [r for rs in refs for r in rs]
    toks = tokenize_texts(preds + flat, tokenize)  # one call: one JVM start for "ptb"
    pred_toks, ref_flat = toks[: len(preds)], toks[len(preds) :]
    out, pos = [], 0
    for rs in refs:
        out.append(ref_flat[pos : pos + len(rs)])
        pos += len(rs)
    return pred_toks, out


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _clipped_matches(pred: Sequence[str], refs: Sequence[Sequence[str]], max_n: int) -> tuple[list[int], list[int]]:
    """Per order: matches clipped by the max count over references, and the number of pred n-grams."""
    correct, total = [], []
    for n in range(1, max_n + 1):
        pc = _ngram_counts(pred, n)
        ref_max: Counter = Counter()
        for r in refs:
            ref_max |= _ngram_counts(r, n)  # element-wise max
        correct.append(sum(min(c, ref_max[g]) for g, c in pc.items()))
        total.append(max(0, len(pred) - n + 1))
    return correct, total


# ----------------------------------------------------------------------------------------------
# Corpus BLEU (pycocoevalcap Bleu / sacrebleu)
# ----------------------------------------------------------------------------------------------


def corpus_bleu(
    predictions: Sequence[str], references: References, max_n: int = 4, tokenize: Tokenize = "basic"
) -> dict:
    """Corpus BLEU-1..``max_n`` (Papineni et al. 2002) on a 0-1 scale.

    BLEU-n = BP * exp(mean_{k<=n} log p_k), where p_k = clipped k-gram matches / predicted k-grams,
    both summed over the corpus, and BP = exp(1 - r/c) if c < r else 1, with c the total prediction
    length and r the sum over samples of the reference length closest to the prediction length
    (ties go to the shorter reference). This is pycocoevalcap's ``Bleu(n)`` (``option='closest'``)
    and sacrebleu's ``corpus_bleu(..., smooth_method='none')`` / 100 with the same tokens.
    pycocoevalcap adds 1e-15/1e-9 to every ratio, so where some p_k is 0 it returns a tiny
    positive number (~1e-4 for BLEU-4) instead of 0; this function returns exactly 0.

    Returns:
        ``{"bleu1": .., ..., "bleu{max_n}": .., "precisions": [p_1..], "bp": .., "length_ratio": c / r}``.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    pred_toks, ref_toks = _tokenize_pairs(predictions, references, tokenize)
    correct = [0] * max_n
    total = [0] * max_n
    c_len = r_len = 0
    for p, rs in zip(pred_toks, ref_toks):
        cor, tot = _clipped_matches(p, rs, max_n)
        for k in range(max_n):
            correct[k] += cor[k]
            total[k] += tot[k]
        c_len += len(p)
        r_len += min((abs(len(r) - len(p)), len(r)) for r in rs)[1]
    precisions = [correct[k] / total[k] if total[k] else 0.0 for k in range(max_n)]
    if c_len == 0:
        bp = 0.0
    elif c_len >= r_len:
        bp = 1.0
    else:
        bp = math.exp(1.0 - r_len / c_len)
    out: dict = {}
    log_sum = 0.0
    for k in range(max_n):
        if precisions[k] <= 0.0 or log_sum == -math.inf:
            log_sum = -math.inf
            out[f"bleu{k + 1}"] = 0.0
        else:
            log_sum += math.log(precisions[k])
            out[f"bleu{k + 1}"] = bp * math.exp(log_sum / (k + 1))
    out["precisions"] = precisions
    out["bp"] = bp
    out["length_ratio"] = c_len / r_len if r_len else float("inf") if c_len else float("nan")
    return out


def bleu(predictions: Sequence[str], references: References, n: int = 4, tokenize: Tokenize = "basic") -> float:
    """Corpus BLEU-n with brevity penalty, 0-1 (see :func:`corpus_bleu` for the exact definition)."""
    return corpus_bleu(predictions, references, max_n=n, tokenize=tokenize)[f"bleu{n}"]


# ----------------------------------------------------------------------------------------------
# Per-sample BLEU as HF ``evaluate`` computes it (M3D, Med3DVLM, HSENet)
# ----------------------------------------------------------------------------------------------


def hf_sentence_bleu(
    prediction: str, references: str | Sequence[str], max_order: int = 4, tokenize: Tokenize = "13a"
) -> tuple[float, list[float]]:
    """BLEU of ONE sample as HF ``evaluate.load("bleu")`` computes it (tensorflow/nmt ``compute_bleu``).

    Tokens: sacrebleu 13a, case kept. p_k = clipped k-gram matches / predicted k-grams (0 when the
    prediction has no k-gram; no smoothing); BLEU = exp(mean log p_k) (0 if any p_k is 0) times
    BP = exp(1 - r/c) when c <= r (note: the *shortest* reference length r, not the closest).
    ``evaluate`` raises ZeroDivisionError on an empty prediction or reference; here an empty
    prediction scores 0 and an empty reference gives BP 1.

    Returns:
        ``(bleu, [p_1, ..., p_max_order])``.
    """
    (pred_toks,), (ref_toks,) = _tokenize_pairs(
        [prediction.strip()],
        [[r.strip() for r in ([references] if isinstance(references, str) else references)]],
        tokenize,
    )
    correct, total = _clipped_matches(pred_toks, ref_toks, max_order)
    precisions = [correct[k] / total[k] if total[k] else 0.0 for k in range(max_order)]
    geo = math.exp(sum(math.log(p) for p in precisions) / max_order) if min(precisions) > 0 else 0.0
    c = len(pred_toks)
    r = min(len(t) for t in ref_toks)
    if c == 0:
        bp = 0.0
    elif r == 0 or c > r:
        bp = 1.0
    else:
        bp = math.exp(1.0 - r / c)
    return geo * bp, precisions


def m3d_bleu1_scores(predictions: Sequence[str], references: References) -> list[float]:
    """Per-sample BLEU-1 as M3D and Med3DVLM report "BLEU": ``evaluate`` BLEU with ``max_order=1``.

    Each sample: unigram precision (13a tokens, case kept, clipped) times the brevity penalty
    against the shortest reference. See :func:`hf_sentence_bleu`.
    """
    preds, refs = _normalize_inputs(predictions, references)
    return [hf_sentence_bleu(p, r, max_order=1)[0] for p, r in zip(preds, refs)]


def m3d_bleu1(predictions: Sequence[str], references: References) -> float:
    """Mean of :func:`m3d_bleu1_scores` (the "BLEU" column of M3D / Med3DVLM tables)."""
    return mean_or_nan(m3d_bleu1_scores(predictions, references))


def hsenet_ngram_precision_scores(
    predictions: Sequence[str], references: References, max_order: int = 4
) -> list[list[float]]:
    """Per-sample k-gram precisions ``[p_1..p_max_order]`` that HSENet reports as "BLEU-1..4".

    HSENet's ``eval_HSENet_CT_Rate_MRG.py`` reads ``evaluate`` BLEU's ``precisions[0..3]`` per
    sample: clipped k-gram matches / predicted k-grams (13a tokens, case kept, no brevity penalty,
    not cumulative), 0 when the prediction has fewer than k tokens.
    """
    preds, refs = _normalize_inputs(predictions, references)
    return [hf_sentence_bleu(p, r, max_order=max_order)[1] for p, r in zip(preds, refs)]


def hsenet_ngram_precisions(predictions: Sequence[str], references: References, max_order: int = 4) -> dict[int, float]:
    """``{k: mean over samples of p_k}`` (HSENet's "BLEU-k"; see :func:`hsenet_ngram_precision_scores`)."""
    per = hsenet_ngram_precision_scores(predictions, references, max_order)
    return {k + 1: mean_or_nan([p[k] for p in per]) for k in range(max_order)}


# ----------------------------------------------------------------------------------------------
# ROUGE (rouge-score) and the COCO ROUGE-L variant (pycocoevalcap)
# ----------------------------------------------------------------------------------------------


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel algorithm (Allison-Dix / Hyyrö): one big-integer update per token of ``b``, so
    O(len(a) * len(b) / 64) machine operations instead of the O(len(a) * len(b)) Python DP.
    """
    if not a or not b:
        return 0
    masks: dict = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _stem_tokens(tokens: list[str]) -> list[str]:
    from nltk.stem import porter  # pure Python; only needed for use_stemmer=True

    stemmer = _stem_tokens.__dict__.setdefault("stemmer", porter.PorterStemmer())
    return [stemmer.stem(t) if len(t) > 3 else t for t in tokens]


def _rouge_tokens(predictions, references, use_stemmer):
    pred_toks, ref_toks = _tokenize_pairs(predictions, references, "basic")
    if use_stemmer:
        pred_toks = [_stem_tokens(t) for t in pred_toks]
        ref_toks = [[_stem_tokens(t) for t in rs] for rs in ref_toks]
    return pred_toks, ref_toks


def rouge_l_scores(predictions: Sequence[str], references: References, use_stemmer: bool = False) -> list[float]:
    """Per-sample ROUGE-L F-measure exactly as ``rouge_score.RougeScorer(['rougeL'], use_stemmer)``.

    Tokens: rouge-score's (lower-case, ``[a-z0-9]+``; Porter stems of tokens longer than 3 chars
    when ``use_stemmer``). P = LCS / len(pred), R = LCS / len(ref), F = 2PR / (P + R); 0 when either
    side is empty. Several references: the one with the highest F (``score_multi``).
    HF ``evaluate``'s "rouge" (used by M3D / Med3DVLM / HSENet) defaults to ``use_stemmer=False``.
    """
    pred_toks, ref_toks = _rouge_tokens(predictions, references, use_stemmer)
    out = []
    for p, rs in zip(pred_toks, ref_toks):
        best = 0.0
        for r in rs:
            if p and r:
                lcs = lcs_length(r, p)
                best = max(best, _f1(lcs / len(p), lcs / len(r)))
        out.append(best)
    return out


def rouge_l(predictions: Sequence[str], references: References, use_stemmer: bool = False) -> float:
    """Mean ROUGE-L F-measure over samples, 0-1 (see :func:`rouge_l_scores`)."""
    return mean_or_nan(rouge_l_scores(predictions, references, use_stemmer))


def rouge_n_scores(
    predictions: Sequence[str], references: References, n: int = 1, use_stemmer: bool = False
) -> list[float]:
    """Per-sample ROUGE-n F-measure exactly as ``rouge_score.RougeScorer([f'rouge{n}'])``.

    Overlap = sum over n-grams of min(count in pred, count in ref); P = overlap / pred n-grams,
    R = overlap / ref n-grams, F = harmonic mean. M3D and Med3DVLM report ROUGE-1 this way.
    """
    pred_toks, ref_toks = _rouge_tokens(predictions, references, use_stemmer)
    out = []
    for p, rs in zip(pred_toks, ref_toks):
        pc = _ngram_counts(p, n)
        best = 0.0
        for r in rs:
            rc = _ngram_counts(r, n)
            overlap = sum((pc & rc).values())
            best = max(best, _f1(overlap / max(sum(pc.values()), 1), overlap / max(sum(rc.values()), 1)))
        out.append(best)
    return out


def rouge_n(predictions: Sequence[str], references: References, n: int = 1, use_stemmer: bool = False) -> float:
    """Mean ROUGE-n F-measure over samples, 0-1 (see :func:`rouge_n_scores`)."""
    return mean_or_nan(rouge_n_scores(predictions, references, n, use_stemmer))


def coco_rouge_l_scores(
    predictions: Sequence[str], references: References, tokenize: Tokenize = "basic", beta: float = 1.2
) -> list[float]:
    """Per-sample ROUGE-L of the COCO caption toolkit (pycocoevalcap ``Rouge``).

    P = max over references of LCS / len(pred), R = max over references of LCS / len(ref) (taken
    separately), score = (1 + b^2) P R / (R + b^2 P) with b = 1.2; 0 if P or R is 0.
    """
    pred_toks, ref_toks = _tokenize_pairs(predictions, references, tokenize)
    out = []
    for p, rs in zip(pred_toks, ref_toks):
        if not p:
            out.append(0.0)
            continue
        lcs = [lcs_length(r, p) for r in rs]
        prec = max(n / len(p) for n in lcs)
        rec = max((n / len(r) if r else 0.0) for n, r in zip(lcs, rs))
        out.append((1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec > 0 and rec > 0 else 0.0)
    return out


def coco_rouge_l(predictions: Sequence[str], references: References, tokenize: Tokenize = "basic") -> float:
    """Mean of :func:`coco_rouge_l_scores` (pycocoevalcap's corpus ROUGE-L)."""
    return mean_or_nan(coco_rouge_l_scores(predictions, references, tokenize))


# ----------------------------------------------------------------------------------------------
# CIDEr-D (pycocoevalcap Cider)
# ----------------------------------------------------------------------------------------------


def cider_scores(
    predictions: Sequence[str], references: References, tokenize: Tokenize = "basic", n: int = 4, sigma: float = 6.0
) -> list[float]:
    """Per-sample CIDEr-D exactly as pycocoevalcap's ``Cider`` (Vedantam et al. 2015).

    For k = 1..n, each text becomes a tf-idf vector of its k-grams with
    idf(g) = log(N_refsets) - log(max(1, df(g))), df counted over the reference sets of THIS
    corpus (so a score depends on the whole corpus). Per reference:
    sim_k = sum_g min(v_pred, v_ref) * v_ref / (|v_pred| |v_ref|) * exp(-delta^2 / (2 sigma^2)),
    where delta is the difference of the *bigram* counts of prediction and reference (the
    pycocoevalcap implementation measures length that way). Score = 10 * mean_k(sum over refs
    sim_k) / num_refs.
    """
    pred_toks, ref_toks = _tokenize_pairs(predictions, references, tokenize)
    if not pred_toks:
        return []

    def counts(tokens):
        c: Counter = Counter()
        for k in range(1, n + 1):
            c.update(_ngram_counts(tokens, k))
        return c

    ref_counts = [[counts(r) for r in rs] for rs in ref_toks]
    df: Counter = Counter()
    for rcs in ref_counts:
        df.update(set(g for rc in rcs for g in rc))
    log_n = math.log(float(len(ref_counts)))

    def vec(cnt):
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        for g, tf in cnt.items():
            w = tf * (log_n - math.log(max(1.0, df[g])))
            v[len(g) - 1][g] = w
            norm[len(g) - 1] += w * w
        length = sum(tf for g, tf in cnt.items() if len(g) == 2)
        return v, [math.sqrt(x) for x in norm], length

    out = []
    for p, rcs in zip(pred_toks, ref_counts):
        vp, np_, lp = vec(counts(p))
        total = [0.0] * n
        for rc in rcs:
            vr, nr, lr = vec(rc)
            penalty = math.exp(-((lp - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vp[k].items())
                if np_[k] != 0 and nr[k] != 0:
                    val /= np_[k] * nr[k]
                total[k] += val * penalty
        out.append(10.0 * (sum(total) / n) / len(rcs))
    return out


def cider(predictions: Sequence[str], references: References, tokenize: Tokenize = "basic") -> float:
    """Corpus CIDEr-D = mean of :func:`cider_scores` (pycocoevalcap's reported number; not 0-1, up to ~10)."""
    return mean_or_nan(cider_scores(predictions, references, tokenize))


# ----------------------------------------------------------------------------------------------
# METEOR (METEOR 1.5 jar through pycocoevalcap)
# ----------------------------------------------------------------------------------------------


def _meteor_clean(text: str) -> str:
    # The jar reads "|||"-separated fields one line at a time: a newline or "|||" in a text would
    # desynchronise the protocol and hang the subprocess.
    return " ".join(text.replace("|||", " ").split())


def meteor_with_scores(predictions: Sequence[str], references: References) -> tuple[float, list[float]]:
    """METEOR 1.5 (Denkowski & Lavie 2014) via the jar shipped with pycocoevalcap, ``-l en -norm``.

    This is the COCO caption toolkit's METEOR (exact + stem + synonym + paraphrase matching,
    corpus score from aggregated statistics). It differs from nltk's ``meteor_score`` (used by HF
    ``evaluate`` in M3D / Med3DVLM / HSENet), which needs WordNet downloads. Needs Java; starting
    the JVM and loading the paraphrase table takes about 10 s per call.

    Returns:
        ``(corpus_score, per_sample_scores)``, 0-1.

    Raises:
        MetricUnavailable: Java or pycocoevalcap is missing.
    """
    preds, refs = _normalize_inputs(predictions, references)
    if shutil.which("java") is None:
        raise MetricUnavailable("meteor() runs the METEOR 1.5 jar and needs a Java runtime (java not found on PATH)")
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError as exc:
        raise MetricUnavailable("meteor() needs the pycocoevalcap package (pip install pycocoevalcap)") from exc
    if not preds:
        return float("nan"), []
    gts = {i: [_meteor_clean(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [_meteor_clean(p)] for i, p in enumerate(preds)}
    scorer = Meteor()
    try:
        score, scores = scorer.compute_score(gts, res)
    finally:
        del scorer  # its __del__ stops the Java subprocess
    return float(score), [float(s) for s in scores]


def meteor(predictions: Sequence[str], references: References) -> float:
    """Corpus METEOR 1.5 (see :func:`meteor_with_scores`)."""
    return meteor_with_scores(predictions, references)[0]
