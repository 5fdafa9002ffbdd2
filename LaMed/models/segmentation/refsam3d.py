"""RefSAM3D: SAM with 3D adapters and cross-modal reference prompts (arXiv 2412.05605).

No code was released; this follows the paper's description (RefSAM3D, arXiv 2412.05605)
and states what is inferred.

From the paper:
  * image encoder: SAM's ViT made volumetric with a conv 3D patch embedding and 3D adapters
    (``LaMed.models.encoders.sam3d``), mostly frozen;
  * text: CLIP's text encoder gives L word embeddings, pooled into a sentence embedding;
  * a cross-modal MLP ("inspired by ViLBERT") projects text into the visual space;
  * hierarchical cross-attention: text features attend to the adapted features of N = 4 encoder
    stages, from low-level detail to high-level semantics, giving the "cross-modal reference
    prompt" for the decoder;
  * a 3D mask decoder that aggregates the multi-level encoder features.

Inferred here (each a visible design choice):
  * the cross-modal MLP is ``text_encoder.proj`` (Linear, LayerNorm, GELU, Linear) applied to the
    pooled sentence and to every word embedding;
  * the hierarchical cross-attention is one pre-norm block per level (attention text -> level
    tokens projected 768 -> C with the dense position encoding added, then an MLP), run on
    ``[sentence; words]`` from the shallowest to the deepest level; the sparse prompt is the
    refined sentence token plus the masked mean of the refined word tokens, and the dense prompt is
    a linear map of that mean broadcast over the grid (RefSAM's sparse + dense text prompts);
  * the decoder is SAM's two-way decoder in 3D (``MaskDecoder3D``, channel LayerNorm, x4
    upscaling, text-similarity branch) whose upscaled map receives the four stage maps, each
    reduced by a 1x1 conv to ``level_dim`` channels, concatenated, fused by a 3x3x3 conv and
    upsampled (3DSAM-adapter style multi-layer aggregation);
  * loss Dice + BCE, as SegVol.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from LaMed.models.segmentation.base import ImageFeatures, PromptableSegModel, Prompts
from LaMed.models.segmentation.common import LayerNorm3d
from LaMed.models.segmentation.configuration import RefSAM3DConfig
from LaMed.models.segmentation.mask_decoder import MaskDecoder3D, select_images
from LaMed.models.segmentation.prompt_encoder import PromptEncoder3D
from LaMed.models.segmentation.segvol import build_image_encoder, build_text_encoder


class LevelCrossAttention(nn.Module):
    """Text tokens ``(N, T, C)`` attend to one level's voxel tokens ``(N, V, C)``; pre-norm, residual."""

    def __init__(self, dim: int, level_in: int, num_heads: int):
        super().__init__()
        self.level_proj = nn.Linear(level_in, dim)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, text: torch.Tensor, level: torch.Tensor, level_pe: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(self.level_proj(level.flatten(2).transpose(1, 2)))
        k = kv + level_pe.flatten(2).transpose(1, 2)
        text = text + self.attn(self.norm_q(text), k, kv, need_weights=False)[0]
        return text + self.mlp(self.norm_mlp(text))


class HierarchicalCrossAttention(nn.Module):
    """One :class:`LevelCrossAttention` per encoder level, shallow to deep."""

    def __init__(self, dim: int, level_in: int, num_levels: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(LevelCrossAttention(dim, level_in, num_heads) for _ in range(num_levels))

    def forward(self, text: torch.Tensor, levels: list[torch.Tensor], level_pe: torch.Tensor) -> torch.Tensor:
        for block, level in zip(self.blocks, levels):
            text = block(text, level, level_pe)
        return text


class MultiLevelAggregation(nn.Module):
    """Stage maps ``[(B, level_in, d, h, w)] * L`` -> ``(B, out_dim, scale*d, scale*h, scale*w)``."""

    def __init__(self, level_in: int, num_levels: int, level_dim: int, out_dim: int, scale: int = 4):
        super().__init__()
        self.reduce = nn.ModuleList(nn.Conv3d(level_in, level_dim, 1) for _ in range(num_levels))
        self.fuse = nn.Sequential(
            nn.Conv3d(num_levels * level_dim, out_dim, 3, padding=1), LayerNorm3d(out_dim), nn.GELU()
        )
        self.scale = scale

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        x = self.fuse(torch.cat([r(level) for r, level in zip(self.reduce, levels)], dim=1))
        return F.interpolate(x, scale_factor=self.scale, mode="trilinear", align_corners=False)


class RefSAM3DModel(PromptableSegModel):
    """RefSAM3D (see module docstring)."""

    config_class = RefSAM3DConfig

    def __init__(self, config: RefSAM3DConfig):
        super().__init__(config)
        args = config.args
        self.image_encoder = build_image_encoder(args)
        enc = self.image_encoder
        if enc.hidden_size != args.embed_dim:
            raise ValueError(f"RefSAM3D: encoder neck width {enc.hidden_size} must equal embed_dim {args.embed_dim}")
        grid, c = enc.grid_size, args.embed_dim
        level_in, n_levels = enc.config.hidden_size, len(enc.config.stage_indices)
        self.prompt_encoder = PromptEncoder3D(
            c, grid, args.img_size, args.mask_in_chans, args.mask_downscaling, args.point_convention, args.pe_axis_order
        )
        self.cross_attention = HierarchicalCrossAttention(c, level_in, n_levels, args.cross_attn_heads)
        self.dense_proj = nn.Linear(c, c)
        self.aggregation = MultiLevelAggregation(level_in, n_levels, args.level_dim, c // 8)
        self.mask_decoder = MaskDecoder3D(
            c,
            grid,
            args.num_multimask_outputs,
            args.transformer_depth,
            args.num_heads,
            args.mlp_dim,
            args.attention_downsample_rate,
            upscale_norm="channel",
            text_align=True,
        )
        self.text_encoder = build_text_encoder(args)
        self.post_init()

    def encode_image(self, volume: torch.Tensor) -> ImageFeatures:
        neck, levels = self.image_encoder(volume)
        return ImageFeatures(embeddings=neck, levels=list(levels))

    def decode_once(self, features: ImageFeatures, prompts: Prompts, image_index=None, mask=None, extra_token=None):
        emb = features.embeddings
        if prompts.text_embedding is None:
            raise ValueError("RefSAM3D needs a text prompt (text_embedding or input_ids)")
        n = prompts.text_embedding.shape[0]
        pe = self.prompt_encoder.get_dense_pe(emb.shape[2:]).to(emb.dtype)
        text = prompts.text_embedding.unsqueeze(1)
        if prompts.text_tokens is not None:
            text = torch.cat([text, prompts.text_tokens], dim=1)
        levels = [select_images(level, n, image_index) for level in features.levels]
        text = self.cross_attention(text, levels, pe.expand(n, *pe.shape[1:]))
        sentence = text[:, 0]
        if prompts.text_tokens is not None:
            m = (
                prompts.text_mask.unsqueeze(-1).to(text.dtype)
                if prompts.text_mask is not None
                else torch.ones_like(text[:, 1:, :1])
            )
            words = (text[:, 1:] * m).sum(1) / m.sum(1).clamp(min=1.0)
        else:
            words = sentence
        points = (prompts.points, prompts.point_labels) if prompts.points is not None else None
        sparse, dense = self.prompt_encoder(n, points, prompts.boxes, mask, [sentence, words, extra_token])
        dense = dense + self.dense_proj(words)[:, :, None, None, None]
        residual = self.aggregation(features.levels)
        low, _, token = self.mask_decoder(
            emb, pe, sparse, dense, sentence, image_index=image_index, upscaled_residual=residual
        )
        return low, token
