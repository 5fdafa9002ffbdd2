"""Evaluation metrics with stated definitions: one module a family.

* :mod:`.retrieval` -- Recall@K (chunked, ties never push a query down), label-overlap retrieval.
* :mod:`.text` -- corpus BLEU, ROUGE-L/-n, CIDEr-D, METEOR (jar), M3D / HSENet per-sample variants.
* :mod:`.text_model` -- BERTScore with a local model; GREEN / RaTEScore adapters (opt-in).
* :mod:`.vqa` -- closed accuracy from parsed answers, token F1, M3D / HSENet substring scoring.
* :mod:`.classification` -- multi-label findings: AUROC, F1 / precision / recall / accuracy, thresholds, bootstrap CIs.
* :mod:`.boxes` -- box parsing, 3D IoU, M3D's enclosing-box positioning score.
* :mod:`.segmentation` -- Dice, NSD, HD95, ASSD, instance F1, M3D soft Dice.

Standard metrics carry their standard names; a paper's non-standard variant carries the paper's
name (``m3d_bleu1``, ``hsenet_ngram_precisions``, ``m3d_soft_dice``, ...). Importing this package
is cheap (numpy only); scipy / torch / transformers / Java are used lazily by the functions that
need them.
"""

from .base import MetricUnavailable
from .boxes import box_iou_3d, m3d_box_score, m3d_positioning_score, parse_box, parse_boxes
from .classification import binary_scores, bootstrap_ci, multilabel_report, roc_auc, select_threshold, select_thresholds
from .retrieval import (
    hsenet_cumulative_label_overlap,
    label_overlap_at_k,
    labels_to_multihot,
    recall_at_k,
    recall_at_k_from_embeddings,
    retrieval_ranks,
    retrieval_ranks_from_embeddings,
)
from .segmentation import assd, dice, hd95, instance_f1, iou, m3d_soft_dice, nsd, surface_distances
from .text import (
    bleu,
    cider,
    coco_rouge_l,
    corpus_bleu,
    hsenet_ngram_precisions,
    m3d_bleu1,
    meteor,
    rouge_l,
    rouge_n,
)
from .text_model import bert_score, green, ratescore
from .vqa import (
    closed_accuracy,
    exact_match,
    hsenet_class_accuracy,
    m3d_choice_substring_accuracy,
    parse_choice,
    parse_yes_no,
    token_f1,
)
