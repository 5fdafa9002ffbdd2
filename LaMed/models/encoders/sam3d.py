"""RefSAM3D image encoder: a SAM-style ViT with 3D patch embedding and 3D bottleneck adapters.

What the paper states (RefSAM3D, arXiv 2412.05605; no code released):
SAM's ViT image encoder made volumetric with a *convolution-based 3D patch embedding* followed by a
positional embedding (both trained from scratch); *adapters* inside the ViT blocks, built from
"multi-head attention, depth-wise 3D convolution and up/down projection", with the bottleneck
residual ``Adapter(X) = X + Act(X W_down) W_up``; the backbone stays frozen and only the adapters
train; features of ``N = 4`` stages feed a hierarchical text-to-vision cross-attention.

What is inferred here (each is a config field so it can be changed):
  * backbone = SAM ViT-B sizes (768 wide, 12 blocks, 12 heads, MLP 3072, qkv bias, LayerNorm eps
    1e-6) with global attention and a learned absolute position embedding (SAM's windowed attention
    and relative positions are 2D-specific and not described for the 3D version);
  * the adapter is applied after each block's MLP residual (sequential placement, as in
    3DSAM-adapter); inside it: ``h = GELU(down(x))``, ``h = h + MHA(LN(h))``,
    ``h = h + DWConv3d(h)`` on the token grid, ``out = x + up(h)``; ``up`` starts at zero so an
    untrained adapter is the identity and the frozen backbone's features are preserved;
  * bottleneck width 64 with 4 heads;
  * the four stages are blocks 2, 5, 8, 11 (every third block, SAM ViT-B's global-attention blocks);
  * SAM's neck (1x1 conv -> LayerNorm -> 3x3 conv -> LayerNorm, 256 channels) made 3D, giving the
    output of :meth:`forward_features`;
  * input size 32x256x256 with patch 4x16x16 (the size the rest of LaMed uses); the paper's is unknown.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from LaMed.models.encoders.base import VisionEncoder
from LaMed.models.encoders.layers import (
    LayerNorm3d,
    PatchEmbedding3D,
    SelfAttention,
    TransformerBlock,
    patch_grid,
    resolve_indices,
    to_3tuple,
    tokens_to_grid,
)
from LaMed.models.encoders.registry import register_encoder
from LaMed.models.encoders.vit3d import build_config


@dataclass
class SAM3DConfig:
    """Hyperparameters of :class:`SAM3DAdapterEncoder` (defaults: SAM ViT-B made 3D)."""

    img_size: tuple[int, int, int] = (32, 256, 256)  # (D, H, W) voxels
    patch_size: tuple[int, int, int] = (4, 16, 16)
    in_channels: int = 1
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    qkv_bias: bool = True  # SAM's blocks have a qkv bias
    layer_norm_eps: float = 1e-6  # SAM's LayerNorm eps
    adapter_dim: int = 64  # bottleneck width N'
    adapter_heads: int = 4  # heads of the bottleneck attention
    adapter_kernel: int = 3  # depth-wise conv kernel (odd)
    stage_indices: tuple[int, ...] = (2, 5, 8, 11)  # blocks whose outputs are the four feature levels
    out_chans: int = 256  # neck width = hidden size of forward_features

    def __post_init__(self):
        self.img_size = to_3tuple(self.img_size, "img_size")
        self.patch_size = to_3tuple(self.patch_size, "patch_size")
        self.stage_indices = tuple(int(i) for i in self.stage_indices)
        patch_grid(self.img_size, self.patch_size)
        resolve_indices(self.stage_indices, self.num_layers)  # range check
        if self.adapter_dim % self.adapter_heads:
            raise ValueError(f"adapter_dim {self.adapter_dim} must be divisible by adapter_heads {self.adapter_heads}")
        if self.adapter_kernel % 2 == 0:
            raise ValueError(f"adapter_kernel must be odd (same-size depth-wise conv), got {self.adapter_kernel}")

    def to_dict(self) -> dict:
        return asdict(self)


class Adapter3D(nn.Module):
    """Bottleneck adapter on a token grid: ``(B, N, C) -> (B, N, C)`` with ``N = prod(grid_size)``.

    ``h = GELU(down(x)); h += attn(norm(h)); h += dwconv(h as (B, N', d, h, w)); return x + up(h)``.
    """

    def __init__(
        self,
        hidden_size: int,
        adapter_dim: int,
        num_heads: int,
        grid_size: Sequence[int],
        kernel: int = 3,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.down = nn.Linear(hidden_size, adapter_dim)
        self.norm = nn.LayerNorm(adapter_dim, eps=eps)
        self.attn = SelfAttention(adapter_dim, num_heads, qkv_bias=True)
        self.dwconv = nn.Conv3d(adapter_dim, adapter_dim, kernel, padding=kernel // 2, groups=adapter_dim)
        self.up = nn.Linear(adapter_dim, hidden_size)
        nn.init.zeros_(self.up.weight)  # identity at initialisation: the frozen backbone is untouched
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.down(x))
        h = h + self.attn(self.norm(h))
        h = h + self.dwconv(tokens_to_grid(h, self.grid_size)).flatten(2).transpose(1, 2)
        return x + self.up(h)


class AdapterBlock(TransformerBlock):
    """Pre-norm ViT block (MONAI names) followed by an :class:`Adapter3D` (keys ``adapter.*``)."""

    def __init__(self, config: SAM3DConfig, grid_size: Sequence[int]):
        super().__init__(
            config.hidden_size, config.mlp_dim, config.num_heads, qkv_bias=config.qkv_bias, eps=config.layer_norm_eps
        )
        self.adapter = Adapter3D(
            config.hidden_size,
            config.adapter_dim,
            config.adapter_heads,
            grid_size,
            config.adapter_kernel,
            config.layer_norm_eps,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(super().forward(x))


class SAM3DAdapterEncoder(VisionEncoder):
    """RefSAM3D-style encoder. ``(B, 1, D, H, W)`` ->

    * :meth:`forward_features`: neck tokens ``(B, prod(grid), out_chans)``;
    * :meth:`forward_intermediates`: the four stage maps ``(B, hidden, d, h, w)`` (default indices
      ``stage_indices``) for hierarchical cross-attention;
    * :meth:`forward`: ``(neck map (B, out_chans, d, h, w), [four stage maps])``.

    :meth:`freeze_backbone` leaves only the adapters (plus any named extras) trainable.
    """

    config_class = SAM3DConfig

    def __init__(self, config: SAM3DConfig | None = None, **overrides):
        super().__init__()
        config = build_config(SAM3DConfig, asdict(config) if config is not None else {}, overrides)
        self.config = config
        self.grid_size = patch_grid(config.img_size, config.patch_size)
        self.hidden_size = config.out_chans
        self.num_prefix_tokens = 0
        self.patch_embedding = PatchEmbedding3D(
            config.in_channels, config.img_size, config.patch_size, config.hidden_size, kind="conv"
        )
        self.blocks = nn.ModuleList(AdapterBlock(config, self.grid_size) for _ in range(config.num_layers))
        c, o = config.hidden_size, config.out_chans
        self.neck = nn.Sequential(
            nn.Conv3d(c, o, 1, bias=False),
            LayerNorm3d(o, config.layer_norm_eps),
            nn.Conv3d(o, o, 3, padding=1, bias=False),
            LayerNorm3d(o, config.layer_norm_eps),
        )
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.endswith("adapter.up"):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _run(self, x: torch.Tensor, stop: int, collect: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embedding(x)
        wanted, kept = set(collect), []
        for i in range(stop + 1):
            blk = self.blocks[i]
            x = (
                checkpoint(blk, x, use_reentrant=False)
                if self.grad_checkpointing and torch.is_grad_enabled()
                else blk(x)
            )
            if i in wanted:
                kept.append(x)
        return x, kept

    def _neck(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.neck(tokens_to_grid(tokens, self.grid_size))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W) -> (B, prod(grid), out_chans)`` neck output as tokens."""
        x, _ = self._run(x, len(self.blocks) - 1, ())
        return self._neck(x).flatten(2).transpose(1, 2)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | int | None = None) -> list[torch.Tensor]:
        """Block outputs as maps ``(B, hidden, d, h, w)``; default: the four ``stage_indices``."""
        idx = resolve_indices(self.config.stage_indices if indices is None else indices, len(self.blocks))
        _, kept = self._run(x, max(idx), idx)
        by_index = dict(zip(sorted(set(idx)), kept))
        return [tokens_to_grid(by_index[i], self.grid_size) for i in idx]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        idx = resolve_indices(self.config.stage_indices, len(self.blocks))
        last, kept = self._run(x, len(self.blocks) - 1, idx)
        by_index = dict(zip(sorted(set(idx)), kept))
        return self._neck(last), [tokens_to_grid(by_index[i], self.grid_size) for i in idx]

    # ---- parameter-efficient training -------------------------------------------------------------
    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of every block's adapter."""
        for blk in self.blocks:
            yield from blk.adapter.parameters()

    def freeze_backbone(self, also_train: Sequence[str] = ()) -> int:
        """Freeze every parameter except the adapters and names starting with one of ``also_train``
        (e.g. ``("patch_embedding", "neck")`` for the parts RefSAM3D trains from scratch).
        Returns the number of trainable parameters left."""
        prefixes = tuple(also_train)
        trainable = 0
        for name, p in self.named_parameters():
            p.requires_grad_(".adapter." in name or (bool(prefixes) and name.startswith(prefixes)))
            trainable += p.numel() if p.requires_grad else 0
        return trainable


SAM3D_VARIANTS = {
    "sam3d_adapter_base": dict(),
    # Tiny: 96 wide, 4 blocks (stages 0..3), adapters of 16 with 2 heads, neck 32.
    "sam3d_adapter_test": dict(
        img_size=(16, 64, 64),
        patch_size=(4, 16, 16),
        hidden_size=96,
        mlp_dim=192,
        num_layers=4,
        num_heads=4,
        adapter_dim=16,
        adapter_heads=2,
        stage_indices=(0, 1, 2, 3),
        out_chans=32,
    ),
}


def _register(name: str, defaults: dict) -> None:
    def factory(**overrides) -> SAM3DAdapterEncoder:
        return SAM3DAdapterEncoder(build_config(SAM3DConfig, defaults, overrides))

    factory.__doc__ = f"SAM3D adapter encoder variant {name!r}"
    register_encoder(name, factory)


for _name, _defaults in SAM3D_VARIANTS.items():
    _register(_name, _defaults)
