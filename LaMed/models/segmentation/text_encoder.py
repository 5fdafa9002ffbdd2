"""Text prompt encoder: any Hugging Face text model built from its config, pooled and projected
to the decoder's prompt width.

* SegVol: ``CLIPTextModel`` (default ``CLIPTextConfig``: 512 wide, 12 layers), frozen,
  ``pooler_output`` (the EOS token), ``dim_align`` Linear(512 -> 768). The published training ran
  ``dim_align`` under ``no_grad`` (so it never trained); here only the frozen backbone runs
  without gradients and the projection trains.
* Text3DSAM: a BERT (``nlpie/tiny-clinicalbert`` geometry), CLS token, ``text_projector``
  Linear -> LayerNorm -> GELU -> Linear.
* RefSAM3D: CLIP text, mean pooling over the word embeddings, plus the projected word tokens.

The backbone is built from ``text_encoder_config`` (a dict with ``model_type``), never downloaded; its
weights come from our checkpoint, or from a local pretrained folder at training start
(:meth:`TextPromptEncoder.load_backbone`).
"""

from __future__ import annotations

import torch
from torch import nn

from LaMed.models.convert.base import load_converted

POOLINGS = ("pooler", "cls", "mean")
PROJECTIONS = ("linear", "mlp", "identity")


def build_text_backbone(text_encoder_config: dict):
    """``AutoModel.from_config`` of a config dict (``{"model_type": "bert", ...}``)."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(text_encoder_config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ValueError("text_encoder_config needs a 'model_type' (e.g. 'clip_text_model' or 'bert')")
    config = AutoConfig.for_model(model_type, **cfg)
    return AutoModel.from_config(config)


class TextPromptEncoder(nn.Module):
    """``(input_ids, attention_mask) (B, L)`` -> prompt embedding ``(B, out_dim)`` [and tokens ``(B, L, out_dim)``].

    Args:
        text_encoder_config: config dict of the backbone.
        out_dim: prompt width C of the decoder.
        pooling: ``"pooler"`` (the model's ``pooler_output``), ``"cls"`` (first token of the last
            hidden state) or ``"mean"`` (attention-masked mean).
        projection: ``"linear"``, ``"mlp"`` (Linear, LayerNorm, GELU, Linear: keys ``proj.{0,1,3}``)
            or ``"identity"``.
        freeze_backbone: the backbone gets no gradients and runs under ``no_grad``.
    """

    def __init__(
        self,
        text_encoder_config: dict,
        out_dim: int,
        pooling: str = "pooler",
        projection: str = "linear",
        freeze_backbone: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"text pooling must be one of {POOLINGS}, got {pooling!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"text projection must be one of {PROJECTIONS}, got {projection!r}")
        self.model = build_text_backbone(text_encoder_config)
        hidden = self.model.config.hidden_size
        if projection == "linear":
            self.proj = nn.Linear(hidden, out_dim)
        elif projection == "mlp":
            self.proj = nn.Sequential(
                nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
            )
        else:
            if hidden != out_dim:
                raise ValueError(
                    f"projection 'identity' needs the text width {hidden} to equal the prompt width {out_dim}"
                )
            self.proj = nn.Identity()
        self.pooling = pooling
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.model.requires_grad_(False)

    def load_backbone(self, path: str) -> None:
        """Load pretrained backbone weights from a local folder (or cached hub id) of the same architecture."""
        from transformers import AutoModel

        pretrained = AutoModel.from_pretrained(path)
        load_converted(self.model, pretrained.state_dict(), strict=False, source=str(path))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, return_tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        if self.pooling == "pooler":
            pooled = out.pooler_output
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        emb = self.proj(pooled)
        return (emb, self.proj(hidden)) if return_tokens else emb


# Text backbones of the published systems and tiny twins (config dicts, no weights).
TEXT_CONFIGS = {
    # SegVol / R1Seg-3D / RefSAM3D: CLIPTextConfig() defaults (openai/clip-vit-base-patch32 text tower).
    "clip_text": {"model_type": "clip_text_model"},
    # Text3DSAM: nlpie/tiny-clinicalbert as its public code builds it (mirthAI/Text3DSAM; 312 wide, 4 layers).
    "tiny_clinicalbert": {
        "model_type": "bert",
        "hidden_size": 312,
        "num_hidden_layers": 4,
        "num_attention_heads": 12,
        "intermediate_size": 1200,
        "vocab_size": 28996,
    },
    # Tiny twins sharing the offline MiniLM WordPiece vocabulary (30522 ids; [SEP] = 102 is the CLIP EOS).
    "clip_text_test": {
        "model_type": "clip_text_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 30522,
        "max_position_embeddings": 64,
        "eos_token_id": 102,
        "pad_token_id": 0,
        "bos_token_id": 101,
    },
    "bert_test": {
        "model_type": "bert",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 30522,
        "max_position_embeddings": 64,
    },
}


def text_config(name_or_dict) -> dict:
    """A text config dict from a name of :data:`TEXT_CONFIGS` or a dict (returned as a copy)."""
    if isinstance(name_or_dict, dict):
        return dict(name_or_dict)
    if name_or_dict not in TEXT_CONFIGS:
        raise KeyError(f"unknown text config {name_or_dict!r}; known: {sorted(TEXT_CONFIGS)} (or pass a dict)")
    return dict(TEXT_CONFIGS[name_or_dict])
