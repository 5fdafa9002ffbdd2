"""HSENet's 2E3 ("2D-enhanced 3D") encoder: a ViT3D whose patch tokens are scored by 2D slices.

Published mechanism (YanzhaoShi/HSENet, arXiv 2506.09634, ``ViT_stage2``):

1. patch-embed the volume: ``(B, N, C)`` tokens with position embedding (N = 2048, C = 768);
2. ``slice_guided_attention``: single-head attention, query = patch tokens, key = value = the
   ``S = 32`` slice features ``(B, S, C_2d)`` (BiomedCLIP ViT-B/16 trunk CLS vectors, 768-d);
   separate ``Wq``/``Wk``/``Wv`` (with bias), scale ``C ** -0.5``, dropout 0.1 on the probabilities,
   ``output_linear``, dropout 0.1, residual added to ``Wq(query)`` (not the raw query), LayerNorm;
3. ``patch_score_proj`` (Linear C -> 1) + sigmoid: one score in (0, 1) per patch, ``(B, N)``;
4. soft re-weighting: every patch token is multiplied by its score; then CLS, 12 blocks, final norm.

The exploratory top-k variant (HSENet's masked ``ViT``) keeps the ``int(N * (1 - mask_ratio))``
highest-scoring patches in their original order, runs them through the same blocks and normalises
them with a separate ``norm_masked``; ``mask_ratio`` follows :func:`mask_ratio_schedule`.
Whether the published top-k path multiplied the kept tokens by their scores is not stated; here
it does (inferred), so that the scorer receives gradients through the selected tokens.

The 2D features are an extra input (precomputed, as in the released code) or come from an
injected 2D module (:class:`SliceEncoder2D`, the online variant). Parameter names equal the
published stage-2 tower (150 tensors: the 138 of ViT3D + 12), so it loads with ``strict=True``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from LaMed.models.encoders.registry import register_encoder
from LaMed.models.encoders.vit3d import ViT3D, ViT3DConfig, build_config

SELECTIONS = ("soft", "topk")


def mask_ratio_schedule(step: int, start: float = 0.08, end: float = 0.4, rate: float = 1e-4) -> float:
    """Published top-k mask-ratio ramp: ``start + (end - start) * (1 - exp(-(step * rate) ** 2))``."""
    return start + (end - start) * (1.0 - math.exp(-((step * rate) ** 2)))


@dataclass
class E2E3Config(ViT3DConfig):
    """:class:`ViT3DConfig` plus the slice-guided scoring head (defaults: HSENet stage-2 tower)."""

    slice_dim: int = 768  # width C_2d of the 2D slice features
    num_slices: int = 32  # S slices per volume (checked against the input)
    score_dropout: float = 0.1  # published dropout on attention probabilities and on its output
    selection: str = "soft"  # "soft": re-weight every patch (released); "topk": forward() keeps the top patches
    mask_ratio: float = 0.08  # top-k: fraction of patches dropped (published start of the ramp)

    def __post_init__(self):
        super().__post_init__()
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {self.mask_ratio}")


class SliceGuidedAttention(nn.Module):
    """Single-head cross-attention from 3D patch tokens to 2D slice features (published names).

    ``query (B, N, C)``, ``slices (B, S, C_2d)`` -> ``(B, N, C)``:
    ``norm(drop(output_linear(softmax(Wq q (Wk s)^T / sqrt(C)) Wv s)) + Wq q)``.
    """

    def __init__(self, hidden_size: int, slice_dim: int, dropout: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.Wq = nn.Linear(hidden_size, hidden_size)
        self.Wk = nn.Linear(slice_dim, hidden_size)
        self.Wv = nn.Linear(slice_dim, hidden_size)
        self.output_linear = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = dropout
        self.drop_output = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, slices: torch.Tensor) -> torch.Tensor:
        q = self.Wq(query)
        k, v = self.Wk(slices), self.Wv(slices)
        # One head of width C: SDPA's default scale 1/sqrt(C) is the published sqrt(768) divisor.
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.norm(self.drop_output(self.output_linear(out)) + q)


class SliceEncoder2D(nn.Module):
    """Online 2D branch: a 2D image model applied to ``S`` axial slices of the volume.

    ``(B, 1, D, H, W) -> (B, S, C_2d)``. The volume is resized trilinearly to ``(S, size, size)``,
    repeated to 3 channels and optionally normalised with ``mean``/``std`` (per channel), as the
    online HSENet variant does (it skipped the normalisation). ``model`` maps ``(B*S, 3, size, size)``
    to ``(B*S, C_2d)``; a token output ``(B*S, T, C_2d)`` is reduced to its first (CLS) token.
    """

    def __init__(self, model: nn.Module, num_slices: int = 32, size: int = 224, mean=None, std=None):
        super().__init__()
        self.model, self.num_slices, self.size = model, num_slices, size
        norm = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) if norm else None, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) if norm else None, persistent=False)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        b = volume.shape[0]
        x = F.interpolate(
            volume[:, :1].float(), size=(self.num_slices, self.size, self.size), mode="trilinear", align_corners=False
        )
        x = x.transpose(1, 2).reshape(b * self.num_slices, 1, self.size, self.size).expand(-1, 3, -1, -1)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        feats = self.model(x)
        if feats.dim() == 3:
            feats = feats[:, 0]
        return feats.reshape(b, self.num_slices, -1)


class E2E3Encoder(ViT3D):
    """HSENet 2E3 encoder. Every forward takes ``slice_features (B, S, C_2d)`` unless a
    ``slice_encoder`` (e.g. :class:`SliceEncoder2D`) was injected; shapes otherwise as :class:`ViT3D`.

    An injected ``slice_encoder`` becomes a submodule, so its parameters add ``slice_encoder.*``
    keys to the state dict; without one the state dict is exactly the published 150 tensors.
    """

    config_class = E2E3Config

    def __init__(self, config: E2E3Config | None = None, slice_encoder: nn.Module | None = None, **overrides):
        config = build_config(E2E3Config, asdict(config) if config is not None else {}, overrides)
        base = {k: v for k, v in asdict(config).items() if k in ViT3DConfig.__dataclass_fields__}
        super().__init__(ViT3DConfig(**base))
        self.config = config
        self.slice_guided_attention = SliceGuidedAttention(
            config.hidden_size, config.slice_dim, config.score_dropout, eps=config.layer_norm_eps
        )
        self.patch_score_proj = nn.Linear(config.hidden_size, 1)
        if config.selection == "topk":
            self.norm_masked = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.slice_encoder = slice_encoder
        for m in (self.slice_guided_attention, self.patch_score_proj, getattr(self, "norm_masked", None)):
            if m is not None:
                m.apply(self._init_weights)

    # ---- scoring ------------------------------------------------------------------------------
    def _slices(self, x: torch.Tensor, slice_features: torch.Tensor | None) -> torch.Tensor:
        if slice_features is None:
            if self.slice_encoder is None:
                raise ValueError(
                    "2E3 encoder needs slice_features of shape (B, S, slice_dim) = "
                    f"(B, {self.config.num_slices}, {self.config.slice_dim}) or an injected slice_encoder"
                )
            slice_features = self.slice_encoder(x)
        expected = (x.shape[0], self.config.num_slices, self.config.slice_dim)
        if tuple(slice_features.shape) != expected:
            raise ValueError(
                f"slice_features has shape {tuple(slice_features.shape)}, expected {expected} (B, S, slice_dim)"
            )
        return slice_features.to(self.slice_guided_attention.Wk.weight.dtype)

    def patch_scores(self, patches: torch.Tensor, slices: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` patch tokens and ``(B, S, C_2d)`` slices -> ``(B, N)`` scores in (0, 1)."""
        return torch.sigmoid(self.patch_score_proj(self.slice_guided_attention(patches, slices)).squeeze(-1))

    def embed(self, x: torch.Tensor, slice_features: torch.Tensor | None = None) -> torch.Tensor:
        """Re-weighted patch tokens with CLS: ``(B, num_tokens, C)``."""
        patches = self.embed_patches(x)
        scores = self.patch_scores(patches, self._slices(x, slice_features))
        return self.add_prefix(patches * scores.unsqueeze(-1).to(patches.dtype))

    # ---- top-k path ---------------------------------------------------------------------------
    def num_kept(self, mask_ratio: float | None = None) -> int:
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        return max(1, int(math.prod(self.grid_size) * (1.0 - ratio)))

    def forward_topk(
        self, x: torch.Tensor, slice_features: torch.Tensor | None = None, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k path: ``(tokens (B, prefix + K, C) normed by norm_masked, kept patch indices (B, K))``.

        ``K = int(N * (1 - mask_ratio))``; indices are ascending (original token order), so the
        position embedding each token carries stays meaningful.
        """
        if self.config.selection != "topk":
            raise RuntimeError("forward_topk needs an encoder built with selection='topk' (it owns norm_masked)")
        patches = self.embed_patches(x)
        scores = self.patch_scores(patches, self._slices(x, slice_features))
        k = self.num_kept(mask_ratio)
        keep = scores.topk(k, dim=1).indices.sort(dim=1).values
        weighted = patches * scores.unsqueeze(-1).to(patches.dtype)
        kept = weighted.gather(1, keep.unsqueeze(-1).expand(-1, -1, weighted.shape[-1]))
        tokens, _ = self.run_blocks(self.add_prefix(kept))
        return self.norm_masked(tokens), keep

    def forward(
        self, x: torch.Tensor, slice_features: torch.Tensor | None = None, mask_ratio: float | None = None
    ) -> torch.Tensor:
        """Tower output: the soft path as :meth:`ViT3D.forward`; with ``selection="topk"`` the kept
        tokens of :meth:`forward_topk` (``feature_select`` applies; ``feature_layer`` must be -1)."""
        if self.config.selection == "soft":
            return super().forward(x, slice_features=slice_features)
        if self.config.feature_layer != -1:
            raise ValueError("selection='topk' supports feature_layer=-1 only")
        tokens, _ = self.forward_topk(x, slice_features, mask_ratio)
        select = self.config.feature_select
        return (
            tokens[:, self.num_prefix_tokens :] if select == "patch" else (tokens[:, 0] if select == "cls" else tokens)
        )


E2E3_VARIANTS = {
    # HSENet stage-2 ("2E3") tower, HF Yanzhaoshi/HSENet-2E3-CLIP vision_encoder (150 tensors).
    "vit3d_2e3_base": dict(),
    # Tiny: 96 wide, 2 blocks, 4x4x4 patches, 8 slices of 48-d features.
    "vit3d_2e3_test": dict(
        img_size=(16, 64, 64),
        patch_size=(4, 16, 16),
        hidden_size=96,
        mlp_dim=192,
        num_layers=2,
        num_heads=4,
        slice_dim=48,
        num_slices=8,
    ),
}


def _register(name: str, defaults: dict) -> None:
    def factory(slice_encoder: nn.Module | None = None, **overrides) -> E2E3Encoder:
        return E2E3Encoder(build_config(E2E3Config, defaults, overrides), slice_encoder=slice_encoder)

    factory.__doc__ = f"2E3 encoder variant {name!r}"
    register_encoder(name, factory)


for _name, _defaults in E2E3_VARIANTS.items():
    _register(_name, _defaults)
