"""``LaMedProcessor``: tokenizer + special tokens + prompt format + label masking, written once.

Prompt formats (a recipe choice):

* ``"raw"`` (M3D-LaMed, Med3DVLM, HSENet as published): ``[BOS] <im_patch> x T " " question``,
  then ``" " answer EOS``; no chat template, no system prompt.
* ``"chat"``: the tokenizer's chat template, ``[system,] user: "<image>\\n" question`` with the
  generation prompt, then ``answer EOS`` (Med3DVLM-FLARE / instruction-tuned LLMs).

A text may contain the placeholder :data:`IMAGE_PLACEHOLDER` once; it is expanded into
``num_image_tokens`` ``<im_patch>`` tokens (the projector's output count). Without a placeholder
the image tokens are put in front of the question. Label masking: the whole text is tokenised once
with character offsets; tokens that start inside the prompt get ``-100``, the answer tokens and the
final EOS are supervised. Over-long examples lose answer tokens, never the image tokens or the EOS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from LaMed.utils.atomic import atomic_write_text

IMAGE_PLACEHOLDER = "<image>"
IMAGE_TOKEN = "<im_patch>"
BOX_START, BOX_END = "<bx_start>", "<bx_end>"
SEG_TOKEN = "[SEG]"
IGNORE_INDEX = -100
PROMPT_FORMATS = ("raw", "chat")
PROCESSOR_FILE = "lamed_processor.json"


LAMED_TOKENS = (IMAGE_TOKEN, BOX_START, BOX_END, SEG_TOKEN)


def prepare_tokenizer(tokenizer, tokens: Sequence[str] | None = None) -> dict[str, int | None]:
    """Add LaMed's tokens to ``tokenizer`` (in place) and return their ids.

    ``<im_patch>``, ``<bx_start>``, ``<bx_end>`` are special tokens; ``[SEG]`` is a normal added
    token so it survives ``skip_special_tokens=True`` decoding (as published). ``tokens`` limits the
    tokens added to a subset of :data:`LAMED_TOKENS` (a release trained with fewer, e.g. Med3DVLM's
    ``<im_patch>`` alone); the id of a token neither added nor already known is ``None``. A tokenizer
    without a pad token gets ``unk`` (else ``eos``) as pad. Calling it twice adds nothing.
    """
    from tokenizers import AddedToken

    tokens = LAMED_TOKENS if tokens is None else tuple(tokens)
    unknown = [t for t in tokens if t not in LAMED_TOKENS]
    if unknown:
        raise ValueError(f"prepare_tokenizer: {unknown} are not LaMed tokens {LAMED_TOKENS}")
    specials = [AddedToken(t, special=True, normalized=False) for t in (IMAGE_TOKEN, BOX_START, BOX_END) if t in tokens]
    if specials:
        tokenizer.add_tokens(specials, special_tokens=True)
    if SEG_TOKEN in tokens:
        tokenizer.add_tokens([AddedToken(SEG_TOKEN, special=False, normalized=False)])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    vocab = tokenizer.get_vocab()
    return {
        name: vocab.get(tok)
        for name, tok in (
            ("image_token_id", IMAGE_TOKEN),
            ("box_start_token_id", BOX_START),
            ("box_end_token_id", BOX_END),
            ("seg_token_id", SEG_TOKEN),
        )
    }


def format_box(box: Sequence[float]) -> str:
    """``<bx_start>[d0, h0, w0, d1, h1, w1]<bx_end>`` with coordinates rounded to 3 decimals (M3D)."""
    if len(box) != 6:
        raise ValueError(f"a box needs 6 coordinates (d0, h0, w0, d1, h1, w1), got {list(box)}")
    return f"{BOX_START}[{', '.join(f'{round(float(v), 3):g}' for v in box)}]{BOX_END}"


class LaMedProcessor:
    """Turns (question, answer) pairs into model inputs for one tokenizer and one image-token count.

    Args:
        tokenizer: a fast HF tokenizer (LaMed tokens are added if missing).
        num_image_tokens: ``T``, the projector's token count (``model.num_image_tokens``).
        prompt_format: ``"raw"`` or ``"chat"`` (see the module docstring).
        system_prompt: system message for ``"chat"`` (ignored by ``"raw"``).
        add_bos: prepend BOS in ``"raw"`` format; ``None`` = whatever the tokenizer does by default
            (Llama / Phi-3: yes; Qwen, which has no BOS: no).
        max_length: longest training sequence (tokens, image tokens included); ``None`` = no limit.
        image_position: where a question without an explicit placeholder gets its image tokens:
            ``"before"`` the question (published layout) or ``"after"`` it, right before the answer.
        lamed_tokens: the LaMed tokens to add (``None``: all four); an imported release keeps the
            ones its training script added, so the tokenizer length stays the embedding size.
    """

    def __init__(
        self,
        tokenizer,
        num_image_tokens: int,
        prompt_format: str = "raw",
        system_prompt: str | None = None,
        add_bos: bool | None = None,
        max_length: int | None = None,
        image_position: str = "before",
        lamed_tokens: Sequence[str] | None = None,
    ):
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        if int(num_image_tokens) < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        if not getattr(tokenizer, "is_fast", True):
            raise TypeError("LaMedProcessor needs a fast tokenizer (character offsets are used for label masking)")
        self.tokenizer = tokenizer
        self.lamed_tokens = None if lamed_tokens is None else list(lamed_tokens)
        self.token_ids = prepare_tokenizer(tokenizer, self.lamed_tokens)
        self.num_image_tokens = int(num_image_tokens)
        self.prompt_format = prompt_format
        self.system_prompt = system_prompt
        if add_bos is None:
            probe = tokenizer("a")["input_ids"]
            add_bos = tokenizer.bos_token_id is not None and len(probe) > 0 and probe[0] == tokenizer.bos_token_id
        self.add_bos = bool(add_bos) and tokenizer.bos_token_id is not None
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; set tokenizer.eos_token before building the processor")
        self.max_length = max_length
        if image_position not in ("before", "after"):
            raise ValueError(f"image_position must be 'before' or 'after', got {image_position!r}")
        self.image_position = image_position

    @property
    def image_token_id(self) -> int:
        return self.token_ids["image_token_id"]

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    # ---- prompt text ---------------------------------------------------------------------
    def expand_image(self, text: str) -> str:
        """Replace the one :data:`IMAGE_PLACEHOLDER` by ``T`` image tokens (prepend them if absent)."""
        n = text.count(IMAGE_PLACEHOLDER)
        if n > 1:
            raise ValueError(f"a prompt may hold one {IMAGE_PLACEHOLDER} (one volume), found {n}: {text[:80]!r}")
        if IMAGE_TOKEN in text:
            raise ValueError(
                f"write {IMAGE_PLACEHOLDER} once instead of raw {IMAGE_TOKEN} tokens; the processor expands it"
            )
        image = IMAGE_TOKEN * self.num_image_tokens
        return text.replace(IMAGE_PLACEHOLDER, image) if n else image + " " + text

    def prompt_text(self, question: str, with_image: bool = True) -> str:
        """The text the model sees before its answer (image tokens expanded, BOS/template applied)."""
        if with_image and IMAGE_PLACEHOLDER not in question:
            question = (
                (question + " " + IMAGE_PLACEHOLDER)
                if self.image_position == "after"
                else (IMAGE_PLACEHOLDER + (" " if self.prompt_format == "raw" else "\n") + question)
            )
        if self.prompt_format == "raw":
            body = self.expand_image(question) if with_image else question
            return (self.tokenizer.bos_token if self.add_bos else "") + body
        user = question
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": user}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.expand_image(text) if with_image else text

    def answer_text(self, answer: str) -> str:
        return (" " + answer) if self.prompt_format == "raw" else answer

    # ---- tokenisation --------------------------------------------------------------------
    def _tokenize(self, text: str):
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)

    def encode_prompt(self, question: str, with_image: bool = True) -> list[int]:
        """Token ids of the prompt alone (for generation)."""
        ids = self._tokenize(self.prompt_text(question, with_image))["input_ids"]
        self._check_image_count(ids, with_image)
        return ids

    def encode_example(self, question: str, answer: str, with_image: bool = True) -> dict[str, list[int]]:
        """``{"input_ids", "labels", "attention_mask"}`` (lists) for one training example.

        ``labels`` are ``-100`` over the prompt (every token starting before the answer's first
        character), the answer ids and one final EOS otherwise.
        """
        prompt = self.prompt_text(question, with_image)
        enc = self._tokenize(prompt + self.answer_text(answer))
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        n_prompt = sum(1 for start, _ in offsets if start < len(prompt))
        ids.append(self.tokenizer.eos_token_id)
        labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        if self.max_length is not None and len(ids) > self.max_length:
            if n_prompt + 1 > self.max_length:
                raise ValueError(
                    f"prompt of {n_prompt} tokens (with {self.num_image_tokens} image tokens) does not fit "
                    f"max_length={self.max_length}: raise max_length or shorten the question"
                )
            keep = self.max_length - 1  # drop answer tokens, keep the EOS so the model learns to stop
            ids = ids[:keep] + [ids[-1]]
            labels = labels[:keep] + [labels[-1]]
        self._check_image_count(ids, with_image)
        return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}

    def encode_conversation(self, turns: Sequence[tuple[str, str]], with_image: bool = True) -> dict[str, list[int]]:
        """One multi-turn training example: the volume once, then ``[(question, answer), ...]`` in order.

        The first turn is laid out exactly as :meth:`encode_example` (so a single question at test
        time looks like a conversation's start); each later question follows the previous answer's
        end token (``raw``: ``" question answer</s>"``; ``chat``: the template's user / assistant
        turns). Loss on every answer and its end token only. Turns that would overflow
        ``max_length`` are dropped whole (at least the first is kept, truncated as in encode_example).
        """
        turns = [(str(q), str(a)) for q, a in turns]
        if not turns:
            raise ValueError("encode_conversation: no (question, answer) turn given")
        for n in range(len(turns), 1, -1):
            out = self._encode_turns(turns[:n], with_image)
            if self.max_length is None or len(out["input_ids"]) <= self.max_length:
                return out
        return self.encode_example(*turns[0], with_image=with_image)

    def _encode_turns(self, turns: Sequence[tuple[str, str]], with_image: bool) -> dict[str, list[int]]:
        eos = self.tokenizer.eos_token
        spans: list[tuple[int, int]] = []
        if self.prompt_format == "raw":
            text = self.prompt_text(turns[0][0], with_image)
            for k, (q, a) in enumerate(turns):
                if k:
                    text += " " + q
                start = len(text)
                text += self.answer_text(a) + eos
                spans.append((start, len(text)))
        else:
            first = self.prompt_text(turns[0][0], with_image)  # the template's first user turn, image expanded
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            for q, a in turns:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            full = self.tokenizer.apply_chat_template(messages, tokenize=False)
            head = self.tokenizer.apply_chat_template(
                messages[: len(messages) - 2 * len(turns) + 1], tokenize=False, add_generation_prompt=True
            )
            if not full.startswith(head):
                raise ValueError("encode_conversation: the chat template does not extend its first turn by prefix")
            text, cursor = first + full[len(head) :], len(first)
            for _, a in turns:
                start = text.find(a, cursor)
                if start < 0:
                    raise ValueError(f"encode_conversation: answer {a[:40]!r} not found in the chat template's text")
                end = start + len(a)
                if text.startswith(eos, end):
                    end += len(eos)
                spans.append((start, end))
                cursor = end
        enc = self._tokenize(text)
        ids = list(enc["input_ids"])
        labels = [
            t if any(a <= start < b for a, b in spans) else IGNORE_INDEX
            for t, (start, _) in zip(ids, enc["offset_mapping"])
        ]
        self._check_image_count(ids, with_image)
        return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}

    def _check_image_count(self, ids: Sequence[int], with_image: bool) -> None:
        n = sum(1 for i in ids if i == self.image_token_id)
        want = self.num_image_tokens if with_image else 0
        if n != want:
            raise ValueError(
                f"tokenised prompt holds {n} {IMAGE_TOKEN} tokens, expected {want}; does the tokenizer "
                f"treat {IMAGE_TOKEN} as one added token?"
            )

    def __call__(
        self, questions: str | Sequence[str], images=None, padding_side: str = "left", with_image: bool = True
    ) -> dict[str, Any]:
        """Batch of prompts for generation: ``{"input_ids", "attention_mask"[, "images"]}`` tensors, left-padded."""
        import torch

        questions = [questions] if isinstance(questions, str) else list(questions)
        rows = [self.encode_prompt(q, with_image) for q in questions]
        batch = pad_sequences(
            [{"input_ids": r, "attention_mask": [1] * len(r)} for r in rows],
            self.pad_token_id,
            padding_side=padding_side,
        )
        if images is not None:
            images = torch.as_tensor(images)
            if images.ndim == 4:
                images = images[None]
            if images.shape[0] != len(rows):
                raise ValueError(f"{images.shape[0]} volume(s) for {len(rows)} prompt(s)")
            batch["images"] = images
        return batch

    def decode(self, ids, skip_special_tokens: bool = True) -> str | list[str]:
        """Decode one sequence or a batch (special tokens, hence pad / EOS / <im_patch>, skipped)."""
        import torch

        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            return [self.tokenizer.decode(r, skip_special_tokens=skip_special_tokens).strip() for r in ids]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens).strip()

    # ---- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_image_tokens": self.num_image_tokens,
            "prompt_format": self.prompt_format,
            "system_prompt": self.system_prompt,
            "add_bos": self.add_bos,
            "max_length": self.max_length,
            "image_position": self.image_position,
            "lamed_tokens": self.lamed_tokens,
        }

    def save_pretrained(self, out_dir: str | Path, **kwargs) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        atomic_write_text(out / PROCESSOR_FILE, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> LaMedProcessor:
        from transformers import AutoTokenizer

        path = Path(path)
        cfg_file = path / PROCESSOR_FILE
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file}: not found (save the processor with LaMedProcessor.save_pretrained)")
        cfg = {**json.loads(cfg_file.read_text()), **overrides}
        return cls(AutoTokenizer.from_pretrained(str(path)), **cfg)


def pad_sequences(
    rows: Sequence[dict[str, Sequence[int]]],
    pad_token_id: int,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """Pad ``input_ids`` (with ``pad_token_id``), ``attention_mask`` (0) and ``labels`` (-100) to one length."""
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    longest = max(len(r["input_ids"]) for r in rows)
    if pad_to_multiple_of:
        longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key in ("input_ids", "attention_mask", "labels"):
        if key not in rows[0]:
            continue
        padded = []
        for r in rows:
            seq, pad = list(r[key]), [fill[key]] * (longest - len(r[key]))
            padded.append(pad + seq if padding_side == "left" else seq + pad)
        out[key] = torch.tensor(padded, dtype=torch.long)
    return out


class MLLMCollator:
    """``list[item] -> batch``: right-pads ``input_ids`` / ``attention_mask`` / ``labels`` to the
    longest item (dynamic padding) and stacks ``images`` ``(B, 1, D, H, W)`` (and ``slice_features``)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.padding_side, self.pad_to_multiple_of = pad_token_id, padding_side, pad_to_multiple_of

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = pad_sequences(items, self.pad_token_id, self.padding_side, self.pad_to_multiple_of)
        for key in ("images", "slice_features"):
            if key in items[0]:
                batch[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
        return batch


__all__ = [
    "LaMedProcessor",
    "MLLMCollator",
    "pad_sequences",
    "prepare_tokenizer",
    "format_box",
    "IMAGE_PLACEHOLDER",
    "IMAGE_TOKEN",
    "SEG_TOKEN",
    "BOX_START",
    "BOX_END",
    "IGNORE_INDEX",
    "PROMPT_FORMATS",
]
