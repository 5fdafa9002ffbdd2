"""Train a small BPE tokenizer offline (tests, demos, tiny recipes): no hub download needed.

Two styles, matching the tokenizers the published LLMs ship:

* ``"byte_level"`` (Llama-3 / Qwen2.5 / Phi-4 style): byte-level BPE, no unknown tokens;
  ``bos=False`` gives a BOS-less tokenizer like Qwen's.
* ``"sentencepiece"`` (Llama-2 / Phi-3 style): ``▁``-prefixed pieces (Metaspace) with byte fallback
  (256 ``<0xNN>`` tokens), so any character still round-trips.

``chat_template="chatml"`` attaches a Qwen-like ChatML template (``<|im_start|>role ... <|im_end|>``,
EOS = ``<|im_end|>``), for testing the chat prompt format.

    tok = train_tokenizer(reports, vocab_size=600)
    tok("Splenomegaly.")["input_ids"]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

STYLES = ("byte_level", "sentencepiece")
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    style: str = "byte_level",
    bos: bool = True,
    chat_template: str | None = None,
    extra_tokens: Sequence[str] = (),
    min_frequency: int = 2,
):
    """Train a BPE tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Args:
        texts: training corpus (e.g. phantom reports and VQA strings).
        vocab_size: target size including the special and byte tokens (the trainer may stop earlier
            when the corpus has no more merges).
        style: ``"byte_level"`` or ``"sentencepiece"`` (see the module docstring).
        bos: give the tokenizer a BOS token that it prepends (``<s>``); ``False`` = no BOS (Qwen).
        chat_template: ``None`` or ``"chatml"`` (adds ``<|im_start|>`` / ``<|im_end|>``, EOS ``<|im_end|>``).
        extra_tokens: more special tokens to reserve (LaMed's own are added by ``prepare_tokenizer``).
        min_frequency: minimum pair count for a merge.
    Returns:
        a fast tokenizer with ``unk`` (sentencepiece style), ``pad``, ``eos`` and optionally ``bos``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in STYLES:
        raise ValueError(f"train_tokenizer: style must be one of {STYLES}, got {style!r}")
    if chat_template not in (None, "chatml"):
        raise ValueError(f"train_tokenizer: chat_template must be None or 'chatml', got {chat_template!r}")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer: the corpus is empty")
    chat = ["<|im_start|>", "<|im_end|>"] if chat_template else []
    specials: list[str] = ["<unk>", "<s>", "</s>", "<pad>", *chat, *extra_tokens]
    if style == "byte_level":
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        # Words become "▁word" pieces (space folded into the next word, one prepended at the start).
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tk.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        alphabet = []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    if style == "sentencepiece":
        tk = _add_byte_pieces(tk)
    if bos:
        bos_id = tk.token_to_id("<s>")
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    eos = "<|im_end|>" if chat_template else "</s>"
    kwargs = dict(tokenizer_object=tk, eos_token=eos, pad_token="<pad>", unk_token="<unk>")
    if bos:
        kwargs["bos_token"] = "<s>"
    tok = PreTrainedTokenizerFast(**kwargs)
    if chat_template:
        tok.chat_template = CHATML
    return tok


def _add_byte_pieces(tk):
    """Append the 256 ``<0xNN>`` byte pieces as ordinary vocabulary entries (not special tokens, so
    ``skip_special_tokens`` decoding keeps the characters they spell), as Llama-2's vocabulary has them."""
    import json

    from tokenizers import Tokenizer

    state = json.loads(tk.to_str())
    vocab = state["model"]["vocab"]
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab) + len(state.get("added_tokens", [])))
    ids = sorted(set(vocab.values()) | {t["id"] for t in state.get("added_tokens", [])})
    if ids != list(range(len(ids))):  # keep ids dense: renumber the byte pieces after everything else
        top = max(t["id"] for t in state.get("added_tokens", [])) if state.get("added_tokens") else -1
        nxt = max(top, max(v for k, v in vocab.items() if not k.startswith("<0x"))) + 1
        for i in range(256):
            vocab[f"<0x{i:02X}>"] = nxt + i
    return Tokenizer.from_str(json.dumps(state))


def phantom_corpus(manifests: Sequence[str | Path]) -> list[str]:
    """Reports, questions, choices and answers of prepared manifests: a corpus for :func:`train_tokenizer`."""
    import json

    texts: list[str] = []
    for m in manifests:
        for item in json.loads(Path(m).read_text())["items"]:
            texts.append(item.get("text", ""))
            for qa in item.get("vqa", []):
                texts += [
                    qa.get("question", ""),
                    str(qa.get("answer", "")),
                    *map(str, (qa.get("choices") or {}).values()),
                ]
            texts += [r.get("text", "") for r in item.get("refer", [])]
    return [t for t in texts if t]


__all__ = ["train_tokenizer", "phantom_corpus", "STYLES", "CHATML"]
