"""Building blocks shared by the ViT-family 3D encoders (ViT3D, 2E3, SAM3D adapter).

Parameter names follow MONAI 1.3's ``TransformerBlock`` / ``PatchEmbeddingBlock`` (``attn.qkv``,
``attn.out_proj``, ``mlp.linear1`` ...), the layout of the published M3D-CLIP, SegVol and HSENet
checkpoints, so those load with ``strict=True``. The modules are written here rather than taken
from MONAI because MONAI >= 1.4 renamed / added keys and because attention here goes through
:func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels, no ``N x N`` matrix kept
for backward on the flash path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def to_3tuple(value, name: str) -> tuple[int, int, int]:
    """``7 -> (7, 7, 7)``; a 3-sequence passes through; anything else raises naming ``name``."""
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (D, H, W), got {value}")
    return value  # type: ignore[return-value]


def patch_grid(img_size: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int, int]:
    """Token grid ``(d, h, w)`` of a volume ``img_size`` cut into ``patch_size`` patches.

    Raises when a side is not a multiple of the patch side, because the published models
    silently require it (a rearrange would fail deep inside the forward pass otherwise).
    """
    img_size, patch_size = to_3tuple(img_size, "img_size"), to_3tuple(patch_size, "patch_size")
    for axis, (i, p) in zip("DHW", zip(img_size, patch_size)):
        if p <= 0 or i % p:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size} on axis {axis}")
    return tuple(i // p for i, p in zip(img_size, patch_size))  # type: ignore[return-value]


class PatchRearrange3D(nn.Module):
    """``(B, C, D, H, W) -> (B, d*h*w, pd*ph*pw*C)`` without parameters.

    Token order is D-major (index = i_d*h*w + i_h*w + i_w) and each patch vector is ordered
    (pd, ph, pw, C), the order of MONAI's ``b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)``
    that the published linear ("perceptron") patch embeddings were trained with.
    """

    def __init__(self, patch_size: Sequence[int]):
        super().__init__()
        self.patch_size = to_3tuple(patch_size, "patch_size")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        pd, ph, pw = self.patch_size
        x = x.reshape(b, c, d // pd, pd, h // ph, ph, w // pw, pw)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(b, (d // pd) * (h // ph) * (w // pw), pd * ph * pw * c)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"


class PatchEmbedding3D(nn.Module):
    """Patch embedding plus learned absolute position embedding (MONAI 1.3 names).

    ``kind="perceptron"``: ``patch_embeddings = Sequential(PatchRearrange3D, Linear(P, C))`` with
    ``P = prod(patch_size) * in_channels`` (keys ``patch_embeddings.1.*``), as in M3D/SegVol/HSENet.
    ``kind="conv"``: ``patch_embeddings = Conv3d(in_channels, C, patch, stride=patch)``.

    Input ``(B, in_channels, *img_size)``, output ``(B, N, C)`` with ``N = prod(grid)``; the input
    spatial size must equal ``img_size`` (the position table has exactly ``N`` rows).
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int],
        patch_size: Sequence[int],
        hidden_size: int,
        kind: str = "perceptron",
        dropout_rate: float = 0.0,
    ):
        super().__init__()
        self.img_size = to_3tuple(img_size, "img_size")
        self.patch_size = to_3tuple(patch_size, "patch_size")
        self.grid_size = patch_grid(self.img_size, self.patch_size)
        self.kind = kind
        n_tokens = math.prod(self.grid_size)
        if kind == "perceptron":
            patch_dim = in_channels * math.prod(self.patch_size)
            self.patch_embeddings = nn.Sequential(PatchRearrange3D(self.patch_size), nn.Linear(patch_dim, hidden_size))
        elif kind == "conv":
            self.patch_embeddings = nn.Conv3d(in_channels, hidden_size, self.patch_size, stride=self.patch_size)
        else:
            raise ValueError(f"patch embedding kind must be 'perceptron' or 'conv', got {kind!r}")
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_tokens, hidden_size))
        self.dropout = nn.Dropout(dropout_rate)
        nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"input volume has spatial size {tuple(x.shape[2:])} but this encoder was built for img_size "
                f"{self.img_size} (D, H, W); resample the volume or build the encoder with img_size={tuple(x.shape[2:])}"
            )
        if self.kind == "perceptron":
            x = self.patch_embeddings(x)
        else:
            x = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        return self.dropout(x + self.position_embeddings)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (MONAI 1.3 ``SABlock`` names).

    The ``qkv`` output features are ordered (q/k/v, head, head_dim), MONAI's
    ``b n (qkv l d) -> qkv b l n d``. ``(B, N, C) -> (B, N, C)``; scale ``head_dim ** -0.5``.
    """

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool = False, dropout_rate: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.attn_drop = dropout_rate
        self.drop_output = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # (B, N, 3, heads, hd) -> (3, B, heads, N, hd): q/k/v are strided views, no copies.
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.drop_output(self.out_proj(out))


class MLP(nn.Module):
    """``linear1 -> GELU (exact) -> dropout -> linear2 -> dropout`` (MONAI ``MLPBlock`` names)."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout_rate: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)
        self.drop1 = nn.Dropout(dropout_rate)
        self.drop2 = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.linear2(self.drop1(F.gelu(self.linear1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``; ``(B, N, C) -> (B, N, C)``."""

    def __init__(
        self,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        dropout_rate: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=eps)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias=qkv_bias, dropout_rate=dropout_rate)
        self.norm2 = nn.LayerNorm(hidden_size, eps=eps)
        self.mlp = MLP(hidden_size, mlp_dim, dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def tokens_to_grid(tokens: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
    """``(B, d*h*w, C) -> (B, C, d, h, w)`` for D-major token order."""
    b, n, c = tokens.shape
    d, h, w = grid_size
    if n != d * h * w:
        raise ValueError(f"{n} tokens do not fill a grid of {tuple(grid_size)}")
    return tokens.transpose(1, 2).reshape(b, c, d, h, w)


def resolve_indices(indices: Sequence[int] | int | None, depth: int) -> list:
    """Normalise block indices (negative counts from the end; an int ``k`` means the last ``k``)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"asked for the last {indices} blocks of a {depth}-block encoder")
        return list(range(depth - indices, depth))
    out = []
    for i in indices:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise IndexError(f"block index {i} out of range for a {depth}-block encoder")
        out.append(j)
    return out


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, D, H, W)`` at every voxel (SAM's ``LayerNorm2d`` in 3D).

    Computed with reductions over dim 1, so the output keeps the input's contiguous layout (a
    ``movedim`` + ``F.layer_norm`` version returns a channels-last view that makes the following
    transposed convolutions several times slower on CPU).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) * torch.rsqrt(s + self.eps)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)
