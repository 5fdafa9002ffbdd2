"""Small pieces shared by the 3D promptable decoders: channel LayerNorm, SAM-style MLP, random
Fourier position encoding.

Parameter names follow Segment Anything / SegVol (``layers.{i}``, ``positional_encoding_gaussian_matrix``)
so the published SegVol, R1Seg-3D and Text3DSAM decoders load with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from LaMed.models.encoders.layers import LayerNorm3d

__all__ = ["LayerNorm3d", "MLP", "PositionEmbeddingRandom3D", "PE_AXIS_ORDERS"]

# Order in which the three normalised grid coordinates of a dense position encoding are fed to the
# Fourier matrix. "segvol": (dim1, dim0, dim2), SAM's (x, y) convention carried into 3D by SegVol
# (BAAI-DCAI/SegVol, arXiv 2311.13385); "dhw": (dim0, dim1, dim2), the consistent order for new models.
PE_AXIS_ORDERS = {"segvol": (1, 0, 2), "dhw": (0, 1, 2)}


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (SAM's ``MLP``; keys ``layers.{i}``).

    ``(..., in_dim) -> (..., out_dim)``; used for the hypernetworks and the IoU head.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, sigmoid_output: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of 3D coordinates (SAM's ``PositionEmbeddingRandom`` in 3D).

    A fixed Gaussian matrix ``G`` (3, F) maps a coordinate ``c`` in [0, 1]^3 to
    ``[sin(2 pi (2c - 1) G), cos(2 pi (2c - 1) G)]`` (2F channels). ``G`` is a *persistent buffer*
    drawn at construction, so a published decoder only reproduces its outputs with its own ``G``.

    Args:
        num_pos_feats: F (half the output channels).
        scale: standard deviation of ``G`` (SAM: 1.0).
        axis_order: key of :data:`PE_AXIS_ORDERS` for the dense grid.
    """

    def __init__(self, num_pos_feats: int, scale: float | None = None, axis_order: str = "dhw"):
        super().__init__()
        if axis_order not in PE_AXIS_ORDERS:
            raise ValueError(f"axis_order must be one of {sorted(PE_AXIS_ORDERS)}, got {axis_order!r}")
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(3, num_pos_feats))
        self.axis_order = axis_order

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 3)`` coordinates in [0, 1] -> ``(..., 2F)``."""
        g = self.positional_encoding_gaussian_matrix
        coords = (2.0 * coords.to(g.dtype) - 1.0) @ g
        coords = 2.0 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: Sequence[int]) -> torch.Tensor:
        """Dense encoding of a ``(d, h, w)`` grid of voxel centres: ``(2F, d, h, w)``."""
        g = self.positional_encoding_gaussian_matrix
        axes = [(torch.arange(n, device=g.device, dtype=g.dtype) + 0.5) / n for n in size]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (d, h, w, 3) in (dim0, dim1, dim2)
        grid = grid[..., list(PE_AXIS_ORDERS[self.axis_order])]
        return self.encode(grid).permute(3, 0, 1, 2)

    def forward_with_coords(
        self, coords: torch.Tensor, image_size: Sequence[int], convention: str = "dhw"
    ) -> torch.Tensor:
        """Encode voxel coordinates ``(B, N, 3)`` given in ``(dim0, dim1, dim2)`` index units.

        ``convention="segvol"`` reproduces SegVol's normalisation ``(c0 / S1, c1 / S0, c2 / S2)``
        (S = ``image_size``), which is not the axis order of its own dense grid (kept for weight
        compatibility; BAAI-DCAI/SegVol, arXiv 2311.13385); ``"dhw"`` normalises each coordinate by
        its own axis and then orders them like the dense grid, so a point and the grid voxel it
        sits on get the same encoding.
        """
        c = coords.clone().to(self.positional_encoding_gaussian_matrix.dtype)
        s = [float(v) for v in image_size]
        if convention == "segvol":
            c[..., 0] = c[..., 0] / s[1]
            c[..., 1] = c[..., 1] / s[0]
            c[..., 2] = c[..., 2] / s[2]
        elif convention == "dhw":
            c = c / c.new_tensor(s)
            c = c[..., list(PE_AXIS_ORDERS[self.axis_order])]
        else:
            raise ValueError(f"point convention must be 'segvol' or 'dhw', got {convention!r}")
        return self.encode(c)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear upsampling of ``(B, C, d, h, w)`` logits to ``size`` (align_corners False)."""
    if tuple(logits.shape[-3:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="trilinear", align_corners=False)
