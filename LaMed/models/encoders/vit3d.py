"""ViT3D: the plain 3D Vision Transformer of M3D-CLIP / M3D-LaMed, SegVol and R1Seg-3D.

Published geometry (BAAI-DCAI/M3D, arXiv 2404.00578): volume ``(B, 1, 32, 256, 256)``, patch ``(4, 16, 16)``,
grid ``8 x 16 x 16 = 2048`` tokens, width 768, 12 pre-norm blocks of 12 heads, MLP 3072 (exact GELU),
no qkv bias, linear ("perceptron") patch embedding, learned position embedding, optional CLS token
concatenated *after* the position embedding (so it has none), final LayerNorm (eps 1e-5).
ViT3D-B has 87,389,184 parameters with the CLS token, 87,388,416 without.

Parameter names equal MONAI 1.3's ViT (138 tensors with CLS, 137 without), so the published
``pretrained_ViT.bin`` (M3D-CLIP), the SegVol encoder and the HSENet towers load with
``strict=True``; ``LaMed.models.convert`` strips their prefixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from LaMed.models.encoders.base import VisionEncoder
from LaMed.models.encoders.layers import (
    PatchEmbedding3D,
    TransformerBlock,
    patch_grid,
    resolve_indices,
    to_3tuple,
    tokens_to_grid,
)
from LaMed.models.encoders.registry import register_encoder

FEATURE_SELECTS = ("patch", "cls_patch", "cls")


@dataclass
class ViT3DConfig:
    """Hyperparameters of :class:`ViT3D` (defaults: the published M3D-CLIP vision encoder)."""

    img_size: tuple[int, int, int] = (32, 256, 256)  # input volume (D, H, W) in voxels
    patch_size: tuple[int, int, int] = (4, 16, 16)  # patch (D, H, W) in voxels
    in_channels: int = 1
    hidden_size: int = 768  # token width C
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    qkv_bias: bool = False  # published towers have no qkv bias
    dropout_rate: float = 0.0  # embeddings, attention probabilities, attention output, MLP
    patch_embed: str = "perceptron"  # "perceptron" (rearrange + Linear, published) or "conv"
    cls_token: bool = True  # M3D-CLIP / HSENet: True; SegVol / R1Seg-3D: False
    layer_norm_eps: float = 1e-5
    # Tower output of forward() (M3D ``vision_select_feature`` / ``vision_select_layer``):
    feature_select: str = "patch"  # "patch": grid tokens; "cls_patch": CLS + grid; "cls": (B, C) CLS vector
    feature_layer: int = -1  # -1: last block + final norm; k: output of block k (no final norm)

    def __post_init__(self):
        self.img_size = to_3tuple(self.img_size, "img_size")
        self.patch_size = to_3tuple(self.patch_size, "patch_size")
        patch_grid(self.img_size, self.patch_size)  # raises on a non-divisible geometry
        if self.feature_select not in FEATURE_SELECTS:
            raise ValueError(f"feature_select must be one of {FEATURE_SELECTS}, got {self.feature_select!r}")
        if self.feature_select != "patch" and not self.cls_token:
            raise ValueError(f"feature_select={self.feature_select!r} needs cls_token=True")
        if not -self.num_layers <= self.feature_layer < self.num_layers:
            raise ValueError(f"feature_layer {self.feature_layer} out of range for num_layers={self.num_layers}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")

    def to_dict(self) -> dict:
        return asdict(self)


def build_config(cls, defaults: dict, overrides: dict):
    """``cls(**{**defaults, **overrides})`` with a clear error naming unknown override fields."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
    return cls(**{**defaults, **overrides})


class ViT3D(VisionEncoder):
    """Plain 3D ViT with MONAI-1.3 parameter names.

    ``forward_features(x)``: ``(B, 1, D, H, W) -> (B, num_tokens, C)``, final-normed, CLS first when
    configured. ``forward(x)``: the tower output selected by ``feature_select`` / ``feature_layer``
    (published LaMed default: ``(B, 2048, 768)`` patch tokens of the last layer).
    """

    config_class = ViT3DConfig

    def __init__(self, config: ViT3DConfig | None = None, **overrides):
        super().__init__()
        config = build_config(ViT3DConfig, asdict(config) if config is not None else {}, overrides)
        self.config = config
        self.hidden_size = config.hidden_size
        self.grid_size = patch_grid(config.img_size, config.patch_size)
        self.num_prefix_tokens = 1 if config.cls_token else 0
        self.patch_embedding = PatchEmbedding3D(
            config.in_channels,
            config.img_size,
            config.patch_size,
            config.hidden_size,
            kind=config.patch_embed,
            dropout_rate=config.dropout_rate,
        )
        if config.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.blocks = nn.ModuleList(
            TransformerBlock(
                config.hidden_size,
                config.mlp_dim,
                config.num_heads,
                qkv_bias=config.qkv_bias,
                dropout_rate=config.dropout_rate,
                eps=config.layer_norm_eps,
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # MONAI's ViT init: trunc-normal(0.02) Linear weights, zero biases, unit LayerNorms.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- pieces -------------------------------------------------------------------------------
    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W) -> (B, N, C)`` patch tokens with position embedding (no CLS)."""
        return self.patch_embedding(x)

    def add_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the CLS token (after the position embedding, as published) when configured."""
        if not self.num_prefix_tokens:
            return tokens
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W) -> (B, num_tokens, C)``: the input of block 0."""
        return self.add_prefix(self.embed_patches(x))

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        block = self.blocks[i]
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def run_blocks(
        self, x: torch.Tensor, stop: int | None = None, collect: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run blocks ``0..stop`` (default all); return the last output and those listed in ``collect``."""
        stop = len(self.blocks) - 1 if stop is None else stop
        wanted, kept = set(collect), []
        for i in range(stop + 1):
            x = self.run_block(i, x)
            if i in wanted:
                kept.append(x)
        return x, kept

    # ---- VisionEncoder interface --------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, **embed_kwargs) -> torch.Tensor:
        """``(B, C_in, D, H, W) -> (B, num_tokens, hidden_size)`` after the final LayerNorm."""
        x, _ = self.run_blocks(self.embed(x, **embed_kwargs))
        return self.norm(x)

    def forward_hidden_states(self, x: torch.Tensor, **embed_kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """MONAI-style ``(final-normed tokens, [output of every block, un-normed])``."""
        x, hidden = self.run_blocks(self.embed(x, **embed_kwargs), collect=range(len(self.blocks)))
        return self.norm(x), hidden

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int] | int | None = None, norm: bool = False, **embed_kwargs
    ) -> list[torch.Tensor]:
        """Grid maps ``(B, C, d, h, w)`` of the blocks in ``indices`` (default: every block).

        Prefix (CLS) tokens are dropped. With ``norm=True`` the final LayerNorm is applied to each.
        Blocks after the deepest requested one are not run.
        """
        idx = resolve_indices(indices, len(self.blocks))
        _, kept = self.run_blocks(self.embed(x, **embed_kwargs), stop=max(idx), collect=idx)
        by_index = dict(zip(sorted(set(idx)), kept))
        out = []
        for i in idx:
            t = by_index[i]
            t = self.norm(t) if norm else t
            out.append(tokens_to_grid(t[:, self.num_prefix_tokens :], self.grid_size))
        return out

    def forward(self, x: torch.Tensor, **embed_kwargs) -> torch.Tensor:
        """Tower output per ``feature_select`` / ``feature_layer`` (see :class:`ViT3DConfig`).

        ``"patch"``: ``(B, prod(grid), C)``; ``"cls_patch"``: ``(B, 1 + prod(grid), C)``; ``"cls"``: ``(B, C)``.
        """
        layer = self.config.feature_layer % len(self.blocks)
        tokens, _ = self.run_blocks(self.embed(x, **embed_kwargs), stop=layer)
        if self.config.feature_layer == -1:
            tokens = self.norm(tokens)
        select = self.config.feature_select
        if select == "patch":
            return tokens[:, self.num_prefix_tokens :]
        if select == "cls":
            return tokens[:, 0]
        return tokens

    @property
    def num_output_tokens(self) -> int:
        """Tokens of :meth:`forward` (what a projector sees)."""
        return {"patch": math.prod(self.grid_size), "cls_patch": self.num_tokens, "cls": 1}[self.config.feature_select]


# ---- registered variants (data) ---------------------------------------------------------------
VIT3D_VARIANTS = {
    # M3D-CLIP vision encoder / M3D-LaMed vision tower / HSENet stage-1 tower (138 tensors).
    "vit3d_base": dict(),
    # SegVol image encoder and R1Seg-3D unified encoder: same geometry, no CLS (137 tensors).
    "vit3d_base_segvol": dict(cls_token=False),
    # Tiny test variant: 96 wide, 2 blocks, 4x4x4 = 64 patch tokens (+ CLS) on 16x64x64.
    "vit3d_test": dict(
        img_size=(16, 64, 64), patch_size=(4, 16, 16), hidden_size=96, mlp_dim=192, num_layers=2, num_heads=4
    ),
}


def _register(name: str, defaults: dict) -> None:
    def factory(**overrides) -> ViT3D:
        return ViT3D(build_config(ViT3DConfig, defaults, overrides))

    factory.__doc__ = f"ViT3D variant {name!r}: {defaults or 'published M3D-CLIP geometry'}"
    register_encoder(name, factory)


for _name, _defaults in VIT3D_VARIANTS.items():
    _register(_name, _defaults)
