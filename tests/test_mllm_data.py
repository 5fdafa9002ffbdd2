"""Processor (prompt formats, label masking, truncation), datasets, mixtures and the FLARE / RadGenome readers."""

from __future__ import annotations

import json

import pytest
import torch

from LaMed.data.mllm_dataset import MixtureDataset, MLLMDataset, flare_items, radgenome_items
from LaMed.data.tokenizer import train_tokenizer
from LaMed.models.mllm import IGNORE_INDEX, LaMedProcessor, format_box

CORPUS = ["The liver is enlarged.", "No focal lesion in the spleen.", "Which imaging phase is shown?", "arterial"] * 10


@pytest.fixture(scope="module")
def tokenizers():
    return {
        "bos": train_tokenizer(CORPUS, vocab_size=250, style="sentencepiece", bos=True),
        "nobos": train_tokenizer(CORPUS, vocab_size=250, style="byte_level", bos=False),
        "chat": train_tokenizer(CORPUS, vocab_size=250, style="byte_level", bos=False, chat_template="chatml"),
    }


@pytest.mark.parametrize("kind", ["bos", "nobos"])
def test_raw_format_label_masking(kind, tokenizers):
    tok = tokenizers[kind]
    proc = LaMedProcessor(tok, num_image_tokens=5)
    ex = proc.encode_example("Describe the findings.", "The liver is enlarged.")
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels) == len(ex["attention_mask"])
    assert (ids[0] == tok.bos_token_id) == (kind == "bos") and proc.add_bos == (kind == "bos")
    first_image = 1 if kind == "bos" else 0
    assert ids[first_image : first_image + 5] == [proc.image_token_id] * 5
    supervised = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    # The supervised part is exactly the answer tokens and the final EOS, contiguous at the end.
    assert supervised == list(range(supervised[0], len(ids)))
    assert labels[-1] == ids[-1] == tok.eos_token_id
    assert tok.decode(labels[supervised[0] : -1]).strip() == "The liver is enlarged."
    prompt_ids = proc.encode_prompt("Describe the findings.")
    assert ids[: len(prompt_ids)] == prompt_ids and supervised[0] == len(prompt_ids)


def test_chat_format_uses_the_template_and_masks_it(tokenizers):
    tok = tokenizers["chat"]
    proc = LaMedProcessor(tok, 3, prompt_format="chat", system_prompt="You are a radiologist.")
    text = proc.prompt_text("Which imaging phase is shown?")
    assert text.startswith(
        "<|im_start|>system\nYou are a radiologist.<|im_end|>\n<|im_start|>user\n" + "<im_patch>" * 3
    )
    assert text.endswith("<|im_start|>assistant\n")
    ex = proc.encode_example("Which imaging phase is shown?", "arterial")
    sup = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert sup[-1] == tok.convert_tokens_to_ids("<|im_end|>") and tok.decode(sup[:-1]) == "arterial"


def test_truncation_keeps_image_tokens_and_eos(tokenizers):
    tok = tokenizers["bos"]
    proc = LaMedProcessor(tok, 4, max_length=16)
    ex = proc.encode_example("Describe.", "The liver is enlarged. " * 10)
    assert len(ex["input_ids"]) == 16
    assert ex["input_ids"].count(proc.image_token_id) == 4 and ex["labels"][-1] == tok.eos_token_id
    with pytest.raises(ValueError, match="does not fit max_length=16"):
        proc.encode_example("Describe the findings of this very long question " * 5, "x")


def test_processor_save_load_and_batch(tokenizers, tmp_path):
    proc = LaMedProcessor(tokenizers["nobos"], 6, max_length=64)
    proc.save_pretrained(tmp_path)
    again = LaMedProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == proc.to_dict()
    assert again.encode_example("Q?", "A.") == proc.encode_example("Q?", "A.")
    b = again(["Q?", "Which imaging phase is shown?"], images=torch.zeros(2, 1, 4, 4, 4))
    assert b["input_ids"].shape == b["attention_mask"].shape and b["images"].shape[0] == 2
    assert b["attention_mask"][0, 0] == 0 and b["attention_mask"][1].all()  # left padding


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from LaMed.data.prepare import prepare_phantoms

    out = tmp_path_factory.mktemp("ph")
    prepare_phantoms(out, n=3, shape=(8, 32, 32), seed=7, val_fraction=0.0, test_fraction=0.0)
    return out / "train.json"


def test_dataset_records_and_samples(manifest, tokenizers):
    items = json.loads(manifest.read_text())["items"]
    proc = LaMedProcessor(tokenizers["bos"], 4)
    cap = MLLMDataset(manifest, proc, task="caption", train=False)
    assert len(cap) == 3 and cap.record(0)["answer"] == items[0]["text"]
    assert cap.record(0)["question"] == cap.record(1)["question"]  # evaluation: the first template
    s = cap[0]
    assert s["images"].shape == (1, 8, 32, 32) and s["images"].dtype == torch.float32
    closed = MLLMDataset(manifest, proc, task="vqa_closed")
    n_closed = sum(1 for it in items for q in it["vqa"] if q["type"] == "closed")
    assert len(closed) == n_closed
    r = closed.record(0)
    qa = items[0]["vqa"][r["vqa_index"]]
    assert r["question"] == qa["question"] + " Choices: " + " ".join(
        f"{k}. {v}" for k, v in sorted(qa["choices"].items())
    )
    assert r["answer"] == f"{qa['answer_choice']}. {qa['answer']}"
    text_style = MLLMDataset(manifest, proc, task="vqa_closed", closed_answer="text")
    assert text_style.record(0)["answer"] == qa["answer"]
    rec = MLLMDataset(manifest, proc, task="rec", train=False)
    r = rec.record(0)
    assert format_box(items[0]["boxes"][r["target"]]) in r["answer"] and r["answer"].count("<bx_start>") == 1
    assert format_box([0.1234, 0, 0.5, 1, 0.25, 0.75]) == "<bx_start>[0.123, 0, 0.5, 1, 0.25, 0.75]<bx_end>"


@pytest.mark.parametrize("kind", ["bos", "chat"])
def test_conversation_masks_every_answer_and_starts_like_one_question(kind, tokenizers):
    tok = tokenizers[kind]
    proc = LaMedProcessor(tok, 3, prompt_format="chat" if kind == "chat" else "raw")
    turns = [
        ("Which imaging phase is shown?", "arterial"),
        ("Is the liver enlarged?", "No"),
        ("Is there a focal lesion in the spleen?", "Yes"),
    ]
    conv = proc.encode_conversation(turns)
    ids, labels = conv["input_ids"], conv["labels"]
    assert ids.count(proc.image_token_id) == 3  # the volume once
    # The first turn is exactly a one-question example (what the model sees at test time) ...
    one = proc.encode_example(*turns[0])
    n = len(one["input_ids"])
    assert ids[:n] == one["input_ids"] and labels[:n] == one["labels"]
    # ... and the supervised tokens are the three answers, each closed by the end token, nothing else.
    end = tok.eos_token_id if kind != "chat" else tok.convert_tokens_to_ids("<|im_end|>")
    groups, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
            if t == end:
                groups.append(cur)
                cur = []
        else:
            assert not cur, "a supervised answer was interrupted by an unsupervised token"
    assert [tok.decode(g[:-1]).strip() for g in groups] == ["arterial", "No", "Yes"]
    # Whole later turns are dropped when the conversation would not fit max_length.
    short = LaMedProcessor(tok, 3, prompt_format=proc.prompt_format, max_length=n + 2)
    assert short.encode_conversation(turns) == one
    with pytest.raises(ValueError, match="no .question, answer. turn"):
        proc.encode_conversation([])


def test_conversation_dataset_groups_an_items_questions(manifest, tokenizers):
    items = json.loads(manifest.read_text())["items"]
    proc = LaMedProcessor(tokenizers["bos"], 4)
    conv = MLLMDataset(manifest, proc, task="vqa_yes_no", conversation_turns=3, seed=1)
    per_item = [sum(1 for q in it["vqa"] if q["type"] == "yes_no") for it in items]
    assert len(conv) == sum(-(-k // 3) for k in per_item)
    r = conv.record(0)
    assert 1 <= len(r["turns"]) <= 3 and len(set(r["vqa_indices"])) == len(r["turns"])
    for (q, a), j in zip(r["turns"], r["vqa_indices"]):
        qa = items[0]["vqa"][j]
        assert qa["type"] == "yes_no" and q == qa["question"] and a == str(qa["answer"])
    s = conv[0]
    assert sum(1 for lab in s["labels"] if lab == proc.tokenizer.eos_token_id) == len(r["turns"])
    assert s["images"].shape == (1, 8, 32, 32)
    assert len(MLLMDataset(manifest, proc, task="caption", conversation_turns=3)) == 3  # captions: unaffected


def test_mixture_follows_weights_and_seed():
    a, b = list(range(10)), list(range(100, 130))
    mix = MixtureDataset([a, b], weights=[3, 1], length=4000, seed=0)
    from_a = sum(1 for i in range(len(mix)) if mix[i] < 100)
    assert abs(from_a / 4000 - 0.75) < 0.03  # binomial sd 0.007
    again = MixtureDataset([a, b], weights=[3, 1], length=4000, seed=0)
    assert [mix[i] for i in range(50)] == [again[i] for i in range(50)]
    # Each dataset is walked through a permutation: the first 10 draws from `a` cover it exactly once.
    firsts = [mix[i] for i in range(len(mix)) if mix[i] < 100][:10]
    assert sorted(firsts) == a
    with pytest.raises(ValueError, match="weights"):
        MixtureDataset([a, b], weights=[1])


def test_flare_and_radgenome_readers(tmp_path):
    flare = [
        {
            "case_id": "amos_0001.nii.gz",
            "findings": {"liver": "Normal.", "spleen": "Enlarged."},
            "global_vqa": [{"question": "Which organs are abnormal?", "answer": ["spleen", "kidney"]}],
            "local_vqa": [
                {
                    "id": 1,
                    "question": "Is the spleen enlarged?",
                    "answer": "yes",
                    "choices": ["yes", "no"],
                    "follow_up": -1,
                }
            ],
        }
    ]
    (tmp_path / "f.json").write_text(json.dumps(flare))
    it = flare_items(tmp_path / "f.json", "npy")[0]
    assert it["id"] == "amos_0001" and it["image"] == "npy/amos_0001.npy"
    assert it["text"] == "liver: Normal.\nspleen: Enlarged."
    assert it["vqa"][0]["answer"] == "spleen, kidney" and it["vqa"][1]["question"].endswith("Choices: ['yes', 'no']")
    rg = {
        "train": [
            {"image": "a/vol.npy", "biomedclip_features": "a/f.npy", "anatomy": "lung/left", "abnormality": "nodule"}
        ]
    }
    (tmp_path / "r.json").write_text(json.dumps(rg))
    it = radgenome_items(tmp_path / "r.json")[0]
    assert (
        "nodule" in it["vqa"][0]["question"]
        and it["vqa"][0]["answer"] == "lung/left"
        and it["slice_features"] == "a/f.npy"
    )
    with pytest.raises(ValueError, match="no split 'validation'"):
        radgenome_items(tmp_path / "r.json", split="validation")
