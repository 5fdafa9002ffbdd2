"""What every text-prompted 3D segmentation model shares: prompt handling, training forward with
one image encoding per volume, iterative refinement, inference API.

A family implements three methods::

    encode_image(volume (B, 1, D, H, W)) -> ImageFeatures
    decode_once(features, prompts: Prompts, image_index (N,), mask (N, 1, ...) | None, extra_token (N, 1, C) | None)
        -> (low-res logits (N, 1, d', h', w'), mask-token output (N, 1, C) | None)
    (optional) build text encoder in __init__ as ``self.text_encoder``

and inherits :meth:`forward` (the contract of docs/architecture.md ``forward(volume, text_embedding=None,
points=None, boxes=None) -> logits (B, 1, D, H, W)``, plus the training batch), :meth:`decode`
(rough pass + refinements), :meth:`encode_text` and :meth:`segment` (texts in, probabilities out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from LaMed.models.segmentation.common import upsample_logits
from LaMed.models.segmentation.configuration import parse_prompt_type
from LaMed.models.segmentation.losses import SegLoss


@dataclass
class ImageFeatures:
    """Encoder output: ``embeddings`` ``(B, C, d, h, w)`` (the decoder's image embedding), plus
    family-specific maps: ``high_res`` (Text3DSAM skips) and ``levels`` (RefSAM3D stage maps)."""

    embeddings: torch.Tensor
    high_res: list[torch.Tensor] = field(default_factory=list)
    levels: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Prompts:
    """Prompts of ``N`` decodes. ``text_embedding`` ``(N, C)`` from any source; ``text_tokens``
    ``(N, L, C)`` with ``text_mask`` ``(N, L)`` (RefSAM3D); ``points`` ``(N, P, 3)`` voxel indices
    (D, H, W) with ``point_labels`` ``(N, P)`` (1 positive, 0 negative, -1 padding); ``boxes``
    ``(N, 6)`` as ``(d0, h0, w0, d1, h1, w1)`` voxel indices."""

    text_embedding: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    points: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None

    def subset(self, parts) -> Prompts:
        """Keep only the prompt kinds in ``parts`` (``{"text", "box", "point"}``)."""
        return Prompts(
            text_embedding=self.text_embedding if "text" in parts else None,
            text_tokens=self.text_tokens if "text" in parts else None,
            text_mask=self.text_mask if "text" in parts else None,
            points=self.points if "point" in parts else None,
            point_labels=self.point_labels if "point" in parts else None,
            boxes=self.boxes if "box" in parts else None,
        )


@dataclass
class SegOutput(ModelOutput):
    """``logits`` ``(B, 1, D, H, W)`` at inference; ``loss`` and its parts when labels are given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss_dice: torch.Tensor | None = None
    loss_bce: torch.Tensor | None = None
    loss_focal: torch.Tensor | None = None
    loss_presence: torch.Tensor | None = None


class PromptableSegModel(PreTrainedModel):
    """Base of :class:`SegVolModel`, :class:`Text3DSAMModel`, :class:`RefSAM3DModel`."""

    main_input_name = "volume"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    # ---- family hooks ---------------------------------------------------------------------------
    def encode_image(self, volume: torch.Tensor) -> ImageFeatures:
        raise NotImplementedError

    def decode_once(
        self,
        features: ImageFeatures,
        prompts: Prompts,
        image_index: torch.Tensor | None,
        mask: torch.Tensor | None,
        extra_token: torch.Tensor | None,
    ):
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------------
    def _init_weights(self, module):
        # Every sub-module initialises itself in its constructor (SAM / MONAI / HF schemes);
        # the generic HF re-initialisation would overwrite e.g. the zero-initialised adapters.
        return

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None):
        if hasattr(self.image_encoder, "set_grad_checkpointing"):
            self.image_encoder.set_grad_checkpointing(enable)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self._set_gradient_checkpointing(True)

    @property
    def img_size(self):
        return tuple(self.config.img_size)

    @property
    def loss_fn(self) -> SegLoss:
        c = self.config
        return SegLoss(
            c.loss,
            c.dice_weight,
            c.bce_weight,
            c.focal_weight,
            presence_weight=float(c.presence_weight),
            presence_topk=int(c.presence_topk),
            presence_on=str(c.presence_on),
        )

    def prompt_text(self, name: str) -> str:
        """The text prompt of a structure name (``config.prompt_template``, underscores -> spaces);
        a full sentence (ending with ``.``, ``?`` or ``!``) is used as it is."""
        name = name.strip()
        if name.endswith((".", "?", "!")):
            return name
        return self.config.prompt_template.format(name.replace("_", " "))

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, return_tokens: bool = False
    ):
        """Token ids ``(N, L)`` -> prompt embedding ``(N, C)`` [and tokens ``(N, L, C)``]."""
        if getattr(self, "text_encoder", None) is None:
            raise ValueError(
                f"{type(self).__name__} was built without a text encoder (text_encoder_config=None); "
                "pass text_embedding instead of input_ids"
            )
        return self.text_encoder(input_ids, attention_mask, return_tokens=return_tokens)

    def decode(
        self, features: ImageFeatures, prompts: Prompts, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rough pass plus ``config.refine_passes`` refinements (shared weights, only the last one
        returned): low-resolution logits ``(N, 1, d', h', w')``."""
        low, token = self.decode_once(features, prompts, image_index, None, None)
        for _ in range(int(self.config.refine_passes)):
            mask = torch.sigmoid(low) if self.config.refine_input == "sigmoid" else low
            size = self.prompt_encoder.mask_input_size
            if tuple(mask.shape[2:]) != tuple(size):
                mask = upsample_logits(mask, size)
            low, token = self.decode_once(
                features, prompts, image_index, mask, token if self.config.refine_token else None
            )
        return low

    def encode_prompts(
        self,
        text_embedding: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
    ) -> Prompts:
        """Prompts of K queries for :meth:`decode`: text (``input_ids (K, L)`` + ``attention_mask``, or a
        ready ``text_embedding (K, C)``), points ``(K, P, 3)`` (+ ``point_labels (K, P)``, default all
        positive), boxes ``(K, 6)`` (or ``(K, 2, 3)``), in voxels of the model input. The text is encoded
        once here, so one volume can be decoded for many prompts without re-running the text tower."""
        tokens = mask = None
        if text_embedding is None and input_ids is not None:
            if self.config.text_pooling == "mean" and hasattr(self, "cross_attention"):
                text_embedding, tokens = self.encode_text(input_ids, attention_mask, return_tokens=True)
                mask = attention_mask
            else:
                text_embedding = self.encode_text(input_ids, attention_mask)
        if points is not None and point_labels is None:
            point_labels = torch.ones(points.shape[:-1], dtype=torch.long, device=points.device)
        if boxes is not None and boxes.ndim == 3:
            boxes = boxes.reshape(boxes.shape[0], 6)
        return Prompts(text_embedding, tokens, mask, points, point_labels, boxes)

    def forward(
        self,
        volume: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> SegOutput:
        """Inference: ``volume (B, 1, D, H, W)`` with one prompt per volume (``text_embedding (B, C)``
        or ``input_ids (B, L)``, ``points (B, P, 3)`` + ``point_labels (B, P)``, ``boxes (B, 6)``)
        -> ``logits (B, 1, D, H, W)``.

        Training (``labels`` given): ``labels (B, K, D, H, W)`` (K classes per volume, 1/0),
        ``label_mask (B, K)`` (which classes are real), prompts per class: ``input_ids (B, K, L)``,
        ``points (B, K, P, 3)``, ``point_labels (B, K, P)``, ``boxes (B, K, 6)``. Every valid class
        is decoded with every ``config.train_prompt_types`` combination; the loss is the mean over
        (class, prompt type) of the per-sample loss.
        """
        if labels is not None:
            return self._training_forward(
                volume, labels, label_mask, input_ids, attention_mask, points, point_labels, boxes, text_embedding
            )
        features = self.encode_image(volume)
        prompts = self.encode_prompts(text_embedding, input_ids, attention_mask, points, point_labels, boxes)
        low = self.decode(features, prompts)
        return SegOutput(logits=upsample_logits(low, volume.shape[2:]))

    # ---- training ---------------------------------------------------------------------------------
    def _training_forward(
        self, volume, labels, label_mask, input_ids, attention_mask, points, point_labels, boxes, text_embedding=None
    ) -> SegOutput:
        b, k = labels.shape[:2]
        if label_mask is None:
            label_mask = torch.ones(b, k, dtype=torch.bool, device=labels.device)
        pairs = label_mask.bool().nonzero()  # (N, 2): (image, class)
        if pairs.numel() == 0:
            raise ValueError("training batch has no valid (image, class) pair (label_mask is all False)")
        bi, ki = pairs[:, 0], pairs[:, 1]

        def pick(x):
            return None if x is None else x[bi, ki]

        prompts = self.encode_prompts(
            pick(text_embedding), pick(input_ids), pick(attention_mask), pick(points), pick(point_labels), pick(boxes)
        )
        targets = labels[bi, ki].unsqueeze(1)
        kinds = [parse_prompt_type(t) for t in self.config.train_prompt_types]
        for parts in kinds:  # refuse early rather than decode with a silently missing prompt
            need = {"text": prompts.text_embedding, "box": prompts.boxes, "point": prompts.points}
            missing = [p for p in parts if need[p] is None]
            if missing:
                raise ValueError(
                    f"train_prompt_types has {'+'.join(sorted(parts))!r} but the batch has no {missing} prompts"
                )
        if self.config.encode_once:
            features = self.encode_image(volume)
            groups = [(torch.arange(len(bi), device=bi.device), features, bi)]
        else:
            # SegVol's trainer: the whole batch is re-encoded for every class.
            groups = []
            for cls in torch.unique(ki).tolist():
                sel = (ki == cls).nonzero().squeeze(1)
                groups.append((sel, self.encode_image(volume), bi[sel]))
        per_sample: dict[str, list[torch.Tensor]] = {}
        for parts in kinds:
            for sel, features, image_index in groups:
                sub = _index_prompts(prompts.subset(parts), sel)
                low = self.decode(features, sub, image_index=image_index)
                logits = upsample_logits(low, volume.shape[2:])
                for name, value in self.loss_fn(logits, targets[sel]).items():
                    per_sample.setdefault(name, []).append(value)
        out = {name: torch.cat(v).mean() for name, v in per_sample.items()}
        return SegOutput(
            loss=out["loss"],
            loss_dice=out.get("dice"),
            loss_bce=out.get("bce"),
            loss_focal=out.get("focal"),
            loss_presence=out.get("presence"),
        )

    # ---- convenience inference ---------------------------------------------------------------
    @torch.no_grad()
    def segment(
        self,
        volume: torch.Tensor,
        texts: Sequence[str] | None = None,
        tokenizer=None,
        text_embedding: torch.Tensor | None = None,
        points=None,
        point_labels=None,
        boxes=None,
        features: ImageFeatures | None = None,
    ) -> torch.Tensor:
        """Probabilities ``(K, 1, D, H, W)`` for one volume ``(1, 1, D, H, W)`` and K prompts.

        The volume is encoded once and decoded for each of the K prompts (see :meth:`prompt_text`).
        """
        features = features if features is not None else self.encode_image(volume)
        ids = mask = None
        if texts is not None:
            if tokenizer is None:
                tokenizer = getattr(self, "tokenizer", None)
            if tokenizer is None:
                raise ValueError(
                    "segment(texts=...) needs a tokenizer (pass tokenizer= or load the model with load_seg_model)"
                )
            enc = tokenizer([self.prompt_text(t) for t in texts], padding=True, return_tensors="pt")
            dev = volume.device
            ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        prompts = self.encode_prompts(text_embedding, ids, mask, points, point_labels, boxes)
        n = next(x.shape[0] for x in (prompts.text_embedding, prompts.points, prompts.boxes) if x is not None)
        index = torch.zeros(n, dtype=torch.long, device=volume.device)
        low = self.decode(features, prompts, image_index=index)
        return torch.sigmoid(upsample_logits(low, volume.shape[2:]).float())


def _index_prompts(p: Prompts, sel: torch.Tensor) -> Prompts:
    def take(x):
        return None if x is None else x.index_select(0, sel)

    return Prompts(
        take(p.text_embedding),
        take(p.text_tokens),
        take(p.text_mask),
        take(p.points),
        take(p.point_labels),
        take(p.boxes),
    )
