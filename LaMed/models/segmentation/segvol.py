"""SegVol: volumetric SAM with text, box and point prompts (BAAI/SegVol, NeurIPS 2024).

``image_encoder`` (ViT3D without CLS, 32x256x256 -> 768 x 8x16x16) -> ``prompt_encoder`` ->
``mask_decoder`` (two-way transformer, x4 upscaling, hypernetworks, text-similarity branch) ->
low-resolution logits ``(B, 1, 32, 64, 64)`` -> trilinear to the input size. The text prompt
``"A computerized tomography of a {name}."`` goes through a frozen CLIP text model, its
``pooler_output`` and ``dim_align`` (here ``text_encoder.proj``).

Published numbers (BAAI-DCAI/SegVol, arXiv 2311.13385): image encoder 87.39 M parameters, mask decoder
29.92 M with the full-shape LayerNorm (23.63 M with the channel LayerNorm used for new models),
prompt encoder 18 K; with the CLIP text model and ``dim_align`` 181.0 M.

The decoder is prompt-source agnostic: ``decode_once`` takes any ``(N, 768)`` prompt embedding, so
M3D-LaMed / R1Seg-3D drive it with a projected LLM ``[SEG]`` hidden state instead of CLIP text.
"""

from __future__ import annotations

import torch

from LaMed.models.encoders import create_encoder
from LaMed.models.encoders.layers import tokens_to_grid
from LaMed.models.segmentation.base import ImageFeatures, PromptableSegModel, Prompts
from LaMed.models.segmentation.configuration import SegVolConfig
from LaMed.models.segmentation.mask_decoder import MaskDecoder3D
from LaMed.models.segmentation.prompt_encoder import PromptEncoder3D
from LaMed.models.segmentation.text_encoder import TextPromptEncoder, text_config


def build_image_encoder(args):
    """The registered encoder ``args.image_encoder`` built for ``args.img_size``."""
    return create_encoder(
        args.image_encoder, **{"img_size": tuple(args.img_size), **dict(args.image_encoder_overrides)}
    )


def build_text_encoder(args) -> TextPromptEncoder | None:
    if args.text_encoder_config is None:
        return None
    return TextPromptEncoder(
        text_config(args.text_encoder_config),
        args.embed_dim,
        args.text_pooling,
        args.text_projection,
        args.freeze_text_backbone,
    )


class SegVolModel(PromptableSegModel):
    """SegVol (see module docstring). Parameters: ``image_encoder``, ``prompt_encoder``,
    ``mask_decoder``, ``text_encoder`` (``model`` + ``proj``)."""

    config_class = SegVolConfig

    def __init__(self, config: SegVolConfig):
        super().__init__(config)
        args = config.args
        self.image_encoder = build_image_encoder(args)
        if self.image_encoder.hidden_size != args.embed_dim:
            raise ValueError(
                f"SegVol: image encoder {args.image_encoder!r} is {self.image_encoder.hidden_size} wide "
                f"but embed_dim is {args.embed_dim}; they must match"
            )
        grid = self.image_encoder.grid_size
        self.prompt_encoder = PromptEncoder3D(
            args.embed_dim,
            grid,
            args.img_size,
            args.mask_in_chans,
            args.mask_downscaling,
            args.point_convention,
            args.pe_axis_order,
            num_point_embeddings=4 if args.point_prompts else 0,
        )
        self.mask_decoder = MaskDecoder3D(
            args.embed_dim,
            grid,
            args.num_multimask_outputs,
            args.transformer_depth,
            args.num_heads,
            args.mlp_dim,
            args.attention_downsample_rate,
            args.iou_head_depth,
            args.iou_head_hidden_dim,
            args.upscale_norm,
            args.text_align,
        )
        self.text_encoder = build_text_encoder(args)
        self.post_init()

    def encode_image(self, volume: torch.Tensor) -> ImageFeatures:
        """``(B, 1, D, H, W)`` -> embeddings ``(B, C, d, h, w)`` (final-normed patch tokens)."""
        enc = self.image_encoder
        tokens = enc.forward_features(volume)[:, enc.num_prefix_tokens :]
        return ImageFeatures(embeddings=tokens_to_grid(tokens, enc.grid_size))

    def decode_once(self, features: ImageFeatures, prompts: Prompts, image_index=None, mask=None, extra_token=None):
        emb = features.embeddings
        n = _num_prompts(prompts, emb.shape[0] if image_index is None else len(image_index))
        pe = self.prompt_encoder.get_dense_pe(emb.shape[2:]).to(emb.dtype)
        points = (prompts.points, prompts.point_labels) if prompts.points is not None else None
        sparse, dense = self.prompt_encoder(n, points, prompts.boxes, mask, [prompts.text_embedding, extra_token])
        low, _, token = self.mask_decoder(
            emb, pe, sparse.to(emb.dtype), dense.to(emb.dtype), prompts.text_embedding, image_index=image_index
        )
        return low, token


def _num_prompts(p: Prompts, default: int) -> int:
    for x in (p.text_embedding, p.points, p.boxes):
        if x is not None:
            return x.shape[0]
    return default
