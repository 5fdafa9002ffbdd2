"""3D prompt encoder: a prompt embedding (text, LLM ``[SEG]`` state, ...), points, boxes and a
previous mask become sparse tokens and a dense map for a two-way mask decoder.

* sparse tokens ``(B, T, C)``, in the published order: points (+ a padding point when no box is
  given), the two box corners, then each prompt embedding as one token;
* dense map ``(B, C, d, h, w)``: ``no_mask_embed`` everywhere, or a previous mask passed through
  ``mask_downscaling`` (iterative refinement);
* ``get_dense_pe()``: the position encoding of the image-embedding grid ``(1, C, d, h, w)``.

Coordinates of points and boxes are voxel indices of the decoder's input volume in
``(dim0, dim1, dim2)`` = (D, H, W) order; boxes are ``(d0, h0, w0, d1, h1, w1)``. Point labels:
1 positive, 0 negative, -1 padding (ignored).

``mask_downscaling`` kinds (all reduce a mask at ``mask_scale`` times the embedding grid to it):
  * ``"none"``: no mask input;
  * ``"segvol_2d"``: SegVol's 2D convolutions, never run in 3D but part of its state dict
    (kept so the published weights load strictly; passing a mask raises);
  * ``"conv3d"``: R1Seg-3D's ``mask3D_downscaling`` (Conv3d k2 s2, LayerNorm3d, GELU, twice, then
    a 1x1 conv), input 4x the grid;
  * ``"decomp"``: Text3DSAM's decomposed convolutions (k7 s4, k5 s2, k3 s2, k3; BatchNorm),
    input 16x the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from LaMed.models.segmentation.common import LayerNorm3d, PositionEmbeddingRandom3D

MASK_DOWNSCALING = ("none", "segvol_2d", "conv3d", "decomp")
MASK_SCALE = {"none": 1, "segvol_2d": 4, "conv3d": 4, "decomp": 16}


def _mask_downscaling(kind: str, embed_dim: int, mask_in_chans: int) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "segvol_2d":
        return nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, 2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, 1),
        )
    if kind == "conv3d":
        return nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, 2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, 2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, 1),
        )
    if kind == "decomp":
        from LaMed.models.encoders.dcformer_blocks import DecompConv3D

        e = embed_dim
        return nn.Sequential(
            DecompConv3D(1, e // 8, 7, stride=4),
            nn.GELU(),
            DecompConv3D(e // 8, e // 4, 5, stride=2),
            nn.GELU(),
            DecompConv3D(e // 4, e // 2, 3, stride=2),
            nn.GELU(),
            DecompConv3D(e // 2, e, 3),
        )
    raise ValueError(f"mask_downscaling must be one of {MASK_DOWNSCALING}, got {kind!r}")


class PromptEncoder3D(nn.Module):
    """Embeds 3D prompts for a SAM-style decoder.

    Args:
        embed_dim: token width C.
        image_embedding_size: ``(d, h, w)`` grid of the image embedding.
        input_image_size: ``(D, H, W)`` voxel size of the decoder input (normalises coordinates).
        mask_in_chans: hidden width of the 2D/3D conv mask path.
        mask_downscaling: one of :data:`MASK_DOWNSCALING`.
        point_convention: ``"segvol"`` (published, axis-swapped) or ``"dhw"`` (consistent); see
            :meth:`PositionEmbeddingRandom3D.forward_with_coords`.
        pe_axis_order: dense PE order, ``"segvol"`` or ``"dhw"``.
        num_point_embeddings: 4 (positive, negative, box corner 1, box corner 2); 0 for
            text-only decoders (Text3DSAM), which then have no point / box inputs.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Sequence[int],
        input_image_size: Sequence[int],
        mask_in_chans: int = 16,
        mask_downscaling: str = "segvol_2d",
        point_convention: str = "dhw",
        pe_axis_order: str = "dhw",
        num_point_embeddings: int = 4,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(int(s) for s in image_embedding_size)
        self.input_image_size = tuple(int(s) for s in input_image_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 2, axis_order=pe_axis_order)
        self.point_convention = point_convention
        self.num_point_embeddings = num_point_embeddings
        if num_point_embeddings:
            self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(num_point_embeddings))
            self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_kind = mask_downscaling
        self.mask_scale = MASK_SCALE.get(mask_downscaling)
        md = _mask_downscaling(mask_downscaling, embed_dim, mask_in_chans)
        if md is not None:
            self.mask_downscaling = md
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, int, int]:
        """Size of the mask that ``mask_downscaling`` expects (``mask_scale`` x the grid)."""
        return tuple(s * (self.mask_scale or 1) for s in self.image_embedding_size)

    def get_dense_pe(self, size: Sequence[int] | None = None) -> torch.Tensor:
        """``(1, C, d, h, w)`` position encoding of the image-embedding grid."""
        return self.pe_layer(tuple(size or self.image_embedding_size)).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # voxel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size, self.point_convention)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.to(emb.dtype).expand_as(emb), emb)
        emb = emb + (lab == 0).to(emb.dtype) * self.point_embeddings[0].weight.to(emb.dtype)
        emb = emb + (lab == 1).to(emb.dtype) * self.point_embeddings[1].weight.to(emb.dtype)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        corners = boxes.reshape(-1, 2, 3) + 0.5
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size, self.point_convention)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight]).to(emb.dtype)
        return emb + corner_types

    def forward(
        self,
        batch_size: int,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        prompt_embeddings: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(sparse (B, T, C), dense (B, C, d, h, w))``.

        Args:
            points: ``(coords (B, N, 3), labels (B, N))``.
            boxes: ``(B, 6)`` or ``(B, 1, 6)``.
            masks: ``(B, 1, *mask_input_size)`` previous mask (logits or probabilities, as the
                model decides) for refinement.
            prompt_embeddings: tensors ``(B, C)`` (one token each) or ``(B, T_i, C)``.
        """
        g = self.pe_layer.positional_encoding_gaussian_matrix
        sparse = [g.new_zeros(batch_size, 0, self.embed_dim)]
        if (points is not None or boxes is not None) and not self.num_point_embeddings:
            raise ValueError("this prompt encoder has no point/box embeddings (text-only decoder)")
        if points is not None:
            coords, labels = points
            sparse.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        for e in prompt_embeddings:
            if e is not None:
                sparse.append((e.unsqueeze(1) if e.ndim == 2 else e).to(g.dtype))
        sparse = torch.cat(sparse, dim=1)
        if masks is not None:
            if self.mask_kind in ("none", "segvol_2d"):
                raise ValueError(f"mask_downscaling={self.mask_kind!r} takes no mask prompt")
            dense = self.mask_downscaling(masks.to(g.dtype))
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch_size, -1, *self.image_embedding_size)
        return sparse, dense
