"""Text metrics against pycocoevalcap, sacrebleu and rouge-score, plus the papers' variants by hand."""

import json
import math
import random

import numpy as np
import pytest

from LaMed.metrics import text as T
from LaMed.metrics.base import MetricUnavailable


@pytest.fixture(scope="module")
def reports(shared_data):
    """Real Radiopaedia findings as references, perturbed copies (drops, insertions, swaps) as predictions."""
    lines = (shared_data / "reports" / "radiopaedia_captions.jsonl").read_text(encoding="utf-8").splitlines()
    refs = [json.loads(line)["report"] for line in lines if line.strip()]
    rng = random.Random(0)
    preds = []
    for r in refs:
        words = [w for w in r.split() if rng.random() > 0.2]
        for _ in range(3):
            words.insert(rng.randrange(len(words) + 1), rng.choice(["liver", "the", "Mass", "no,", "(left)"]))
        if len(words) > 4:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        preds.append(" ".join(words))
    return preds, refs


def coco_inputs(preds, refs):
    tok = lambda s: " ".join(T.tokenize_basic(s))  # noqa: E731
    gts = {i: [tok(x) for x in (r if isinstance(r, list) else [r])] for i, r in enumerate(refs)}
    res = {i: [tok(p)] for i, p in enumerate(preds)}
    return gts, res


def random_corpus(seed, n=30, multi=False):
    """Small-vocabulary sentences; predictions are edited copies of a reference, so n-grams overlap."""
    rng = random.Random(seed)
    vocab = ["liver", "spleen", "kidney", "lesion", "mass", "cyst", "no", "normal", "the", "left", "right", "enlarged"]
    sent = lambda: [rng.choice(vocab) for _ in range(rng.randint(3, 15))]  # noqa: E731
    preds, refs = [], []
    for _ in range(n):
        rs = [sent() for _ in range(3 if multi else 1)]
        p = [w if rng.random() > 0.3 else rng.choice(vocab) for w in rs[0]]
        preds.append(" ".join(p[: rng.randint(2, len(p))] if rng.random() < 0.3 else p))
        refs.append([" ".join(r) for r in rs] if multi else " ".join(rs[0]))
    return preds, refs


def test_tokenizers_match_reference_libraries(reports):
    from rouge_score import tokenize as rs_tok
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    t13 = Tokenizer13a()
    texts = reports[1] + ['a-b 3-4 1,000.5 x.y (<tag>) &amp; don\'t "q" {x}|~^_`', "Line one-\nnext\nthird"]
    for t in texts:
        assert T.tokenize_13a(t) == t13(t).split()
        assert T.tokenize_basic(t) == rs_tok.tokenize(t, None)


def test_lcs_bit_parallel_matches_dynamic_programming():
    rng = random.Random(3)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randrange(0, 40))]
        b = [rng.choice("abcd") for _ in range(rng.randrange(0, 40))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(len(a)):
            for j in range(len(b)):
                table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
        assert T.lcs_length(a, b) == table[-1][-1]


@pytest.mark.parametrize("source", ["reports", "random", "random_multi"])
def test_corpus_bleu_matches_pycocoevalcap(source, reports):
    from pycocoevalcap.bleu.bleu import Bleu

    preds, refs = reports if source == "reports" else random_corpus(1, multi=source.endswith("multi"))
    gts, res = coco_inputs(preds, refs)
    ref_scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    ours = T.corpus_bleu(preds, refs, max_n=4)
    for k in range(4):
        assert ours[f"bleu{k + 1}"] == pytest.approx(ref_scores[k], rel=1e-8, abs=1e-9)
    assert T.bleu(preds, refs, n=2) == pytest.approx(ref_scores[1], rel=1e-8)


def test_corpus_bleu_matches_sacrebleu_13a(reports):
    import sacrebleu

    preds, refs = reports
    ref = sacrebleu.corpus_bleu(preds, [refs], smooth_method="none").score / 100
    assert T.bleu(preds, refs, tokenize="13a") == pytest.approx(ref, rel=1e-9)
    preds, refs = random_corpus(2, multi=True)
    streams = [[r[i] for r in refs] for i in range(3)]
    ref = sacrebleu.corpus_bleu(preds, streams, smooth_method="none").score / 100
    assert T.bleu(preds, refs, tokenize="13a") == pytest.approx(ref, rel=1e-9)


def test_bleu_edge_cases():
    # one-word texts: unigram precision 1, no bigram at all -> BLEU-2 is 0
    out = T.corpus_bleu(["liver"], ["liver"], max_n=2)
    assert out["bleu1"] == 1.0 and out["bleu2"] == 0.0
    # empty prediction: nothing matches, BP 0
    assert T.bleu([""], ["the liver is normal"], n=1) == 0.0
    # empty reference: precision 0
    assert T.bleu(["the liver"], [""], n=1) == 0.0
    # no 4-gram match: exactly 0, while pycocoevalcap's epsilons give a tiny positive number
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = coco_inputs(["a b c d e"], ["a b c x e"])
    coco, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert T.bleu(["a b c d e"], ["a b c x e"], n=4) == 0.0 and 0 < coco[3] < 1e-3
    # hand value: 3 of 4 unigrams match, closest reference length 6 -> BP exp(1 - 6/4)
    assert T.bleu(["the liver is enlarged"], [["the liver is normal in size", "x"]], n=1) == pytest.approx(
        0.75 * math.exp(1 - 6 / 4)
    )
    with pytest.raises(ValueError, match="predictions has 2 items but references has 1"):
        T.bleu(["a", "b"], ["a"])
    with pytest.raises(TypeError, match=r"predictions\[1\]"):
        T.bleu(["a", None], ["a", "b"])
    with pytest.raises(ValueError, match="tokenize"):
        T.bleu(["a"], ["a"], tokenize="nope")


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_matches_rouge_score(reports, use_stemmer):
    from rouge_score import rouge_scorer

    preds, refs = reports
    preds = preds + ["", "liver", "Liver!"]
    refs = refs + ["the liver", "", "liver"]
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1", "rouge2"], use_stemmer=use_stemmer)
    ref = [scorer.score(r, p) for p, r in zip(preds, refs)]
    np.testing.assert_allclose(
        T.rouge_l_scores(preds, refs, use_stemmer), [s["rougeL"].fmeasure for s in ref], atol=1e-12
    )
    np.testing.assert_allclose(
        T.rouge_n_scores(preds, refs, 1, use_stemmer), [s["rouge1"].fmeasure for s in ref], atol=1e-12
    )
    np.testing.assert_allclose(
        T.rouge_n_scores(preds, refs, 2, use_stemmer), [s["rouge2"].fmeasure for s in ref], atol=1e-12
    )
    assert T.rouge_l(preds, refs, use_stemmer) == pytest.approx(np.mean([s["rougeL"].fmeasure for s in ref]))


def test_rouge_multi_reference_takes_best_f():
    from rouge_score import rouge_scorer

    preds, refs = random_corpus(4, n=10, multi=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expect = [scorer.score_multi(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    np.testing.assert_allclose(T.rouge_l_scores(preds, refs), expect, atol=1e-12)


@pytest.mark.parametrize("source", ["reports", "random_multi"])
def test_coco_rouge_and_cider_match_pycocoevalcap(source, reports):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    preds, refs = reports if source == "reports" else random_corpus(5, multi=True)
    gts, res = coco_inputs(preds, refs)
    c_mean, c_all = Cider().compute_score(gts, res)
    np.testing.assert_allclose(T.cider_scores(preds, refs), c_all, rtol=1e-9, atol=1e-12)
    assert T.cider(preds, refs) == pytest.approx(c_mean, rel=1e-9)
    r_mean, r_all = Rouge().compute_score(gts, res)
    np.testing.assert_allclose(T.coco_rouge_l_scores(preds, refs), r_all, rtol=1e-12)


def test_m3d_bleu1_hand_example_and_sacrebleu():
    import sacrebleu

    pred, ref = "the liver is enlarged", "the liver is normal in size"
    # 3 of 4 unigrams match; BP = exp(1 - 6/4)
    assert T.m3d_bleu1([pred], [ref]) == pytest.approx(0.75 * math.exp(-0.5))
    # case is kept (13a, like HF evaluate): "The" does not match "the"
    assert T.m3d_bleu1(["The liver"], ["the liver"]) == pytest.approx(0.5)
    # the shortest reference sets the brevity penalty (not the closest): 5 tokens vs refs of 3 and 6
    # (BP 1 against the shortest; the corpus BLEU uses the closest, 6, so BP exp(1 - 6/5))
    assert T.m3d_bleu1(["a b c d e"], [["a b c", "a b c d e f"]]) == 1.0
    assert T.bleu(["a b c d e"], [["a b c", "a b c d e f"]], n=1, tokenize="13a") == pytest.approx(math.exp(1 - 6 / 5))
    # single reference: equals sacrebleu's unsmoothed sentence BLEU with max order 1
    scorer = sacrebleu.metrics.BLEU(max_ngram_order=1, smooth_method="none", effective_order=False)
    preds, refs = random_corpus(7, n=15)
    for p, r in zip(preds, refs):
        assert T.m3d_bleu1([p], [r]) == pytest.approx(scorer.sentence_score(p, [r]).score / 100, rel=1e-9)
    assert T.m3d_bleu1([""], ["x"]) == 0.0


def test_hsenet_ngram_precisions_hand_example():
    per = T.hsenet_ngram_precision_scores(["a b c d", "a b"], ["a b c e", "a b"])
    assert per[0] == pytest.approx([3 / 4, 2 / 3, 1 / 2, 0.0])
    assert per[1] == pytest.approx([1.0, 1.0, 0.0, 0.0])  # no 3-grams in a 2-token prediction -> 0
    mean = T.hsenet_ngram_precisions(["a b c d", "a b"], ["a b c e", "a b"])
    assert mean == pytest.approx({1: 7 / 8, 2: 5 / 6, 3: 1 / 4, 4: 0.0})
    # no brevity penalty: a one-word exact prediction has precision 1 although the reference is long
    assert T.hsenet_ngram_precisions(["liver"], ["liver is enlarged"], max_order=1) == {1: 1.0}


@pytest.mark.slow  # one JVM start + paraphrase table load: 10-30 s
def test_meteor_jar_matches_recorded_pycocoevalcap_value(reports):
    import shutil

    if shutil.which("java") is None:
        pytest.skip("no Java runtime: meteor() is documented to need one")
    _, refs = reports
    preds = [r.split(".")[0] for r in refs]
    preds[0] = preds[0] + "\n|||"  # newline and the jar's field separator must not break the protocol
    corpus, per = T.meteor_with_scores(preds, refs)
    # pycocoevalcap 1.2 Meteor().compute_score on the same (clean) inputs, computed once
    assert corpus == pytest.approx(0.36932900761918114, abs=1e-6)
    assert per[1] == pytest.approx(0.7265279861745988, abs=1e-6)


def test_meteor_without_java_is_unavailable(monkeypatch):
    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    with pytest.raises(MetricUnavailable, match="Java"):
        T.meteor(["a"], ["a"])
