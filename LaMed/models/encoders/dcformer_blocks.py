"""Building blocks of DCFormer (decomposed 3D convolution encoder; Med3DVLM, Text3DSAM).

Attribute names follow the published checkpoints (``c1``/``c2``/``c3``, ``dwconv``, ``mlp.mlp``,
``scale``, ``proj``, ``spatial_attention.{cpe,attn,layer_norm1,layer_norm2,mlp1}``) so that the
released state dicts load with ``strict=True``. Every module works on ``(B, C, X, Y, Z)`` maps whose
three spatial axes are whatever layout the encoder chose (see ``DCFormerConfig.input_layout``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTN_SCALES = ("standard", "legacy_mul")


class DecompConv3D(nn.Module):
    """Sum of three 1-D convolutions, one along each spatial axis, each with its own norm.

    ``(B, C_in, X, Y, Z) -> (B, C_out, X', Y', Z')``. Branch ``c1`` has kernel ``(k, 1, 1)``,
    ``c2`` ``(1, k, 1)``, ``c3`` ``(1, 1, k)``; each is ``Sequential(Conv3d, BatchNorm3d or
    Identity)``. The same (integer) stride applies to every axis of every branch, so with stride > 1
    each branch subsamples the two axes it does not convolve (as published). ``act`` is applied to
    the sum.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        norm: bool = True,
        act: nn.Module | None = None,
    ):
        super().__init__()
        pad = kernel_size // 2
        for i, (kernel, padding) in enumerate(
            [
                ((kernel_size, 1, 1), (pad, 0, 0)),
                ((1, kernel_size, 1), (0, pad, 0)),
                ((1, 1, kernel_size), (0, 0, pad)),
            ],
            start=1,
        ):
            conv = nn.Conv3d(in_dim, out_dim, kernel, stride=stride, padding=padding, groups=groups)
            self.add_module(f"c{i}", nn.Sequential(conv, nn.BatchNorm3d(out_dim) if norm else nn.Identity()))
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.c1(x) + self.c2(x) + self.c3(x))


class Mlp(nn.Module):
    """Channels-last MLP ``(..., C) -> (..., C)``: Linear(C, hidden), GELU, Dropout, Linear, Dropout.

    Kept as one ``Sequential`` named ``mlp`` so the keys read ``mlp.0.*`` / ``mlp.3.*`` as published.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def _stage_entry(block: nn.Module, in_dim: int, out_dim: int, downsample: bool) -> None:
    """Give ``block`` the published stage entry: ``pool`` = MaxPool3d(3, 2, 1), ``proj`` = bias-free 1x1x1 conv."""
    block.downsample = downsample
    if downsample:
        block.pool = nn.MaxPool3d(3, 2, 1)
        block.proj = nn.Conv3d(in_dim, out_dim, 1, bias=False)
    elif in_dim != out_dim:
        raise ValueError(f"a block without downsampling keeps its width, got {in_dim} -> {out_dim}")


class ConvBlock(nn.Module):
    """DCFormer "C" block: ``x + scale * MLP(DecompConv3D_depthwise(x))`` (no LayerNorm).

    ``(B, C_in, X, Y, Z) -> (B, C_out, X', Y', Z')``; with ``downsample`` the input first goes through
    ``MaxPool3d(3, 2, 1)`` and a bias-free 1x1x1 ``proj`` (each spatial size ``n -> (n - 1) // 2 + 1``).
    The only normalisation is the BatchNorm inside each depthwise branch; the layer scale ``scale``
    starts at ``layer_scale_init`` (1e-6 as published) so each block starts close to identity.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int,
        downsample: bool = False,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1e-6,
        drop_path: float = 0.0,
    ):
        super().__init__()
        _stage_entry(self, in_dim, out_dim, downsample)
        self.dwconv = DecompConv3D(out_dim, out_dim, kernel_size, groups=out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio))
        self.scale = nn.Parameter(torch.full((out_dim,), float(layer_scale_init)))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = self.proj(self.pool(x))
        y = self.dwconv(x).permute(0, 2, 3, 4, 1)  # channels-last for the Linear layers
        y = (self.scale * self.mlp(y)).permute(0, 4, 1, 2, 3)
        return x + drop_path(y, self.drop_path, self.training)


class ConvPosEnc(nn.Module):
    """Convolutional position encoding on tokens: ``x + DecompConv3D_depthwise(x)`` (no norm).

    ``x`` is ``(B, N, C)`` with ``N = X * Y * Z`` in row-major order of ``size = (X, Y, Z)``.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.proj = DecompConv3D(dim, dim, kernel_size, groups=dim, norm=False)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        b, n, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, *size)
        return x + self.proj(grid).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """Global multi-head self-attention ``(B, N, C) -> (B, N, C)``, bias-free ``qkv`` and ``proj``.

    ``scale_mode="standard"`` scales the logits by ``1/sqrt(head_dim)``. ``"legacy_mul"``
    reproduces Text3DSAM, whose attention *multiplies* q by ``sqrt(head_dim)`` (logits ``head_dim``
    times larger than standard, 96x at C=768 with 8 heads); its published weights depend on it.
    """

    def __init__(self, dim: int, num_heads: int = 8, scale_mode: str = "standard", attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        if scale_mode not in ATTN_SCALES:
            raise ValueError(f"attn_scale must be one of {ATTN_SCALES}, got {scale_mode!r}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**0.5 if scale_mode == "legacy_mul" else head_dim**-0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class SpatialBlock(nn.Module):
    """Pre-norm transformer block with convolutional position encodings, on tokens ``(B, N, C)``.

    ``x = cpe0(x); x = x + attn(ln1(x)); x = cpe1(x); x = x + mlp1(ln2(x))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, scale_mode: str, cpe_kernel: int, drop_path: float):
        super().__init__()
        self.cpe = nn.ModuleList([ConvPosEnc(dim, cpe_kernel), ConvPosEnc(dim, cpe_kernel)])
        self.attn = SelfAttention(dim, num_heads, scale_mode)
        self.layer_norm1 = nn.LayerNorm(dim)
        self.mlp1 = Mlp(dim, int(dim * mlp_ratio))
        self.layer_norm2 = nn.LayerNorm(dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        x = self.cpe[0](x, size)
        x = x + drop_path(self.attn(self.layer_norm1(x)), self.drop_path, self.training)
        x = self.cpe[1](x, size)
        return x + drop_path(self.mlp1(self.layer_norm2(x)), self.drop_path, self.training)


class AttentionBlock(nn.Module):
    """DCFormer "T" block (Text3DSAM's last stage): optional downsampling, then a :class:`SpatialBlock`.

    ``(B, C_in, X, Y, Z) -> (B, C_out, X', Y', Z')``; attention is global over the ``X'*Y'*Z'`` tokens.
    ``kernel_size`` is accepted for symmetry with :class:`ConvBlock` and unused, as published.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int = 0,
        downsample: bool = False,
        mlp_ratio: float = 4.0,
        num_heads: int = 8,
        attn_scale: str = "standard",
        cpe_kernel: int = 3,
        drop_path: float = 0.0,
    ):
        super().__init__()
        _stage_entry(self, in_dim, out_dim, downsample)
        self.spatial_attention = SpatialBlock(out_dim, num_heads, mlp_ratio, attn_scale, cpe_kernel, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = self.proj(self.pool(x))
        b, c, *size = x.shape
        y = self.spatial_attention(x.flatten(2).transpose(1, 2), size)
        return y.transpose(1, 2).reshape(b, c, *size)


def decomposed_stem(
    in_dim: int, out_dim: int, kernel_size: int = 7, stride: int = 4, depth: int = 4, activation: bool = True
) -> nn.Sequential:
    """Stem ``(B, C_in, X, Y, Z) -> (B, C0, X', Y', Z')`` with each size ``n -> (n - 1) // stride + 1``.

    One ``DecompConv3D(C_in, C0, kernel_size, stride)`` then ``depth - 1`` ``DecompConv3D(C0, C0, 3)``,
    all full (not depthwise) with BatchNorm. ``activation=True`` puts a GELU after each; the
    published code passed its GELU into the ``norm`` slot, so its stem has no non-linearity at all
    (``activation=False`` reproduces that for the released weights).
    """
    layers = []
    for i in range(depth):
        act = nn.GELU() if activation else None
        if i == 0:
            layers.append(DecompConv3D(in_dim, out_dim, kernel_size, stride=stride, act=act))
        else:
            layers.append(DecompConv3D(out_dim, out_dim, 3, act=act))
    return nn.Sequential(*layers)
