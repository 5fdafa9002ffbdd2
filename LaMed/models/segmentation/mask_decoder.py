"""Two-way-transformer 3D mask decoders with hypernetwork mask heads and a text-similarity branch.

:class:`MaskDecoder3D` is SegVol's decoder (also R1Seg-3D's and M3D-LaMed's seg module):
transposed-conv upscaling x4 of the embedding grid, one hypernetwork MLP per mask token, and the
text branch that adds ``text_proj(t) . upscaled`` to every mask. :class:`HighResMaskDecoder3D` is
Text3DSAM's SAM2-style decoder: interpolation upscaling fused with two high-resolution encoder
features. Both take the prompt embedding ``t`` from any source (text encoder, LLM ``[SEG]`` state).

Both accept ``image_index``: a ``(B_prompts,)`` long tensor naming the image embedding each prompt
decodes against, so one encoded volume serves many prompts (classes, prompt types) in one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from LaMed.models.segmentation.common import MLP, LayerNorm3d
from LaMed.models.segmentation.transformer import TwoWayTransformer

UPSCALE_NORMS = ("channel", "full")


def select_images(x: torch.Tensor, n_prompts: int, image_index: torch.Tensor | None) -> torch.Tensor:
    """Per-prompt view of per-image tensors ``(B_img, ...)`` -> ``(B_prompts, ...)``."""
    if image_index is not None:
        return x.index_select(0, image_index.to(x.device))
    if x.shape[0] == n_prompts:
        return x
    if x.shape[0] == 1:
        return x.expand(n_prompts, *x.shape[1:])
    raise ValueError(f"{x.shape[0]} image embeddings for {n_prompts} prompts: pass image_index")


class MaskDecoder3D(nn.Module):
    """SegVol mask decoder.

    Args:
        transformer_dim: C (768 published).
        image_embedding_size: ``(d, h, w)``; only needed by ``upscale_norm="full"``.
        upscale_norm: ``"channel"`` (LayerNorm over channels at each voxel; default, any input
            size) or ``"full"`` (SegVol's LayerNorm over the whole ``(C/4, 2d, 2h, 2w)`` map, which
            ties the weights to one input size; used only to load published weights).
        text_align: build the text-similarity branch ``txt_align_upscaled_embedding``.

    ``forward`` returns low-resolution logits ``(B, M, 4d, 4h, 4w)`` (M = 1, or 3 with
    ``multimask_output``), IoU predictions ``(B, M)`` and the chosen mask-token outputs ``(B, M, C)``.
    """

    def __init__(
        self,
        transformer_dim: int = 768,
        image_embedding_size: Sequence[int] = (8, 16, 16),
        num_multimask_outputs: int = 3,
        transformer_depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        upscale_norm: str = "channel",
        text_align: bool = True,
    ):
        super().__init__()
        if upscale_norm not in UPSCALE_NORMS:
            raise ValueError(f"upscale_norm must be one of {UPSCALE_NORMS}, got {upscale_norm!r}")
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = TwoWayTransformer(transformer_depth, c, num_heads, mlp_dim, attention_downsample_rate)
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        if upscale_norm == "full":
            norm = nn.LayerNorm((c // 4, *(2 * s for s in image_embedding_size)))
        else:
            norm = LayerNorm3d(c // 4)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(c, c // 4, 2, stride=2),
            norm,
            nn.GELU(),
            nn.ConvTranspose3d(c // 4, c // 8, 2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        if text_align:
            self.txt_align_upscaled_embedding = nn.Linear(c, c // 8)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        text_embedding: torch.Tensor | None = None,
        multimask_output: bool = False,
        image_index: torch.Tensor | None = None,
        upscaled_residual: torch.Tensor | None = None,
    ):
        """``upscaled_residual`` ``(B_img or B, C/8, 4d, 4h, 4w)`` is added to the upscaled embedding
        before the hypernetwork product (RefSAM3D's multi-level aggregation)."""
        b = sparse_prompt_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [out_tokens.unsqueeze(0).expand(b, -1, -1).to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings],
            dim=1,
        )
        src = select_images(image_embeddings, b, image_index) + dense_prompt_embeddings
        pos = image_pe.expand(b, *image_pe.shape[1:]) if image_pe.shape[0] == 1 else image_pe
        grid = src.shape[2:]
        hs, src = self.transformer(src, pos, tokens)
        iou_token_out, mask_tokens_out = hs[:, 0], hs[:, 1 : 1 + self.num_mask_tokens]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, -1, *grid))
        if upscaled_residual is not None:
            upscaled = upscaled + select_images(upscaled_residual, b, image_index)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        bu, cu = upscaled.shape[:2]
        flat = upscaled.flatten(2)  # (B, C/8, N)
        masks = hyper_in @ flat  # (B, M_tokens, N)
        if text_embedding is not None and hasattr(self, "txt_align_upscaled_embedding"):
            t = self.txt_align_upscaled_embedding(text_embedding.to(flat.dtype)).unsqueeze(1)  # (B, 1, C/8)
            masks = masks + t @ flat  # the similarity map is added to every mask channel
        masks = masks.view(bu, -1, *upscaled.shape[2:])
        iou_pred = self.iou_prediction_head(iou_token_out)
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel], mask_tokens_out[:, sel]


class HighResMaskDecoder3D(nn.Module):
    """Text3DSAM's SAM2-style decoder with high-resolution skips (mirthAI/Text3DSAM).

    Upscaling: interpolate to the grid of ``high_res[1]`` -> 1x1 conv C -> C/4 -> add
    ``feat_conv1(high_res[1])`` -> LayerNorm3d -> GELU; interpolate to the grid of ``high_res[0]``
    -> 1x1 conv C/4 -> C/16 -> LayerNorm3d -> add ``feat_conv0(high_res[0])`` -> GELU (the
    published order of norm and add differs between the two steps). Hypernetworks C -> C/4 -> C/16;
    text branch Linear, LayerNorm, GELU, Linear to C/16. No IoU token. Returns logits at the
    ``high_res[0]`` grid ``(B, 1, ...)`` and mask-token output 0 ``(B, 1, C)`` (the extra sparse
    token of the next refinement pass).

    Args:
        high_res_channels: channels of ``(high_res[0], high_res[1])`` (published 48 and 192).
    """

    def __init__(
        self,
        transformer_dim: int = 768,
        high_res_channels: tuple[int, int] = (48, 192),
        num_multimask_outputs: int = 3,
        transformer_depth: int = 2,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
    ):
        super().__init__()
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = TwoWayTransformer(transformer_depth, c, num_heads, mlp_dim, attention_downsample_rate)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        # Indices 1, 2, 5, 6 carry weights (published keys); 0 / 4 are the upsampling steps.
        self.output_upscaling = nn.Sequential(
            nn.Identity(),
            nn.Conv3d(c, c // 4, 1),
            LayerNorm3d(c // 4),
            nn.GELU(),
            nn.Identity(),
            nn.Conv3d(c // 4, c // 16, 1),
            LayerNorm3d(c // 16),
            nn.GELU(),
        )
        self.feat_conv0 = nn.Conv3d(high_res_channels[0], c // 16, 1)
        self.feat_conv1 = nn.Conv3d(high_res_channels[1], c // 4, 1)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(c, c // 4, c // 16, 3) for _ in range(self.num_mask_tokens))
        self.txt_align_upscaled_embedding = nn.Sequential(
            nn.Linear(c, c // 4), nn.LayerNorm(c // 4), nn.GELU(), nn.Linear(c // 4, c // 16)
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: Sequence[torch.Tensor],
        text_embedding: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ):
        b = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat(
            [
                self.mask_tokens.weight.unsqueeze(0).expand(b, -1, -1).to(sparse_prompt_embeddings.dtype),
                sparse_prompt_embeddings,
            ],
            dim=1,
        )
        src = select_images(image_embeddings, b, image_index) + dense_prompt_embeddings
        pos = image_pe.expand(b, *image_pe.shape[1:]) if image_pe.shape[0] == 1 else image_pe
        grid = src.shape[2:]
        hs, src = self.transformer(src, pos, tokens)
        mask_tokens_out = hs[:, : self.num_mask_tokens]
        f0 = select_images(high_res_features[0], b, image_index)
        f1 = select_images(high_res_features[1], b, image_index)
        up = self.output_upscaling
        x = src.transpose(1, 2).reshape(b, -1, *grid)
        x = F.interpolate(x, size=f1.shape[2:], mode="trilinear", align_corners=False)
        x = up[3](up[2](up[1](x) + self.feat_conv1(f1)))
        x = F.interpolate(x, size=f0.shape[2:], mode="trilinear", align_corners=False)
        x = up[7](up[6](up[5](x)) + self.feat_conv0(f0))
        flat = x.flatten(2)
        # Every hypernetwork runs (all parameters take part, as published); only mask 0 is returned.
        hyper = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ flat)[:, :1]
        if text_embedding is not None:
            masks = masks + self.txt_align_upscaled_embedding(text_embedding.to(flat.dtype)).unsqueeze(1) @ flat
        return masks.view(b, 1, *x.shape[2:]), mask_tokens_out[:, :1]
