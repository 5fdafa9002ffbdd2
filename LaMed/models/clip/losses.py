"""Contrastive losses of the 3D CLIP models: InfoNCE, SigLIP and HSENet's semantic consistency.

All functions take L2-normalised embeddings ``(B, P)`` of the local batch. With ``gather=True``
the embeddings of every process are all-gathered *with gradient* (M3D-CLIP's ``gather_loss``), so
the loss is the one of the global batch ``N = world_size * B``:

* global (``local_loss=False``, published default): every process builds the full ``N x N``
  logit matrix and computes the same loss;
* local (``local_loss=True``): every process scores its own ``B`` rows against all ``N`` columns
  (open_clip's ``local_loss``), ``B x N`` logits; the mean over processes equals the global loss.

Either way, after DDP averages the gradients over processes, training equals single-process
training on the concatenated batch (``tests/test_clip_losses.py`` checks values and gradients on
two gloo processes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _dist_info() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor) -> torch.Tensor:
    """``(B, P)`` on each process -> ``(world_size * B, P)`` in rank order, gradient kept.

    The backward of ``torch.distributed.nn.functional.all_gather`` sums the gradients that every
    process computes for a slice and hands each process its own slice. All processes must pass
    the same ``B``. Without a process group (or with one process) the input is returned.
    """
    _, world = _dist_info()
    if world == 1:
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features.contiguous()), dim=0)


def effective_scale(logit_scale: torch.Tensor, mode: str = "exp", max_scale: float | None = 100.0) -> torch.Tensor:
    """Inverse temperature applied to the cosine similarities.

    ``"exp"``: ``min(exp(logit_scale), max_scale)`` (CLIP; the clamp stops the gradient above it),
    ``exp(logit_scale)`` with no bound when ``max_scale`` is ``None`` (SigLIP's ``exp(t')``);
    ``"raw"``: ``logit_scale`` itself, unclamped (published M3D-CLIP / HSENet behaviour).
    """
    if mode == "exp":
        return logit_scale.exp() if max_scale is None else logit_scale.exp().clamp(max=max_scale)
    if mode == "raw":
        return logit_scale
    raise ValueError(f"logit_scale_mode must be 'exp' or 'raw', got {mode!r}")


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32 (bf16 / fp16 logits lose the small differences that matter)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _pair(image_emb: torch.Tensor, text_emb: torch.Tensor, gather: bool, local_loss: bool):
    """Rows and columns of the logit matrices and the offset of this process's rows."""
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(
            f"image and text embeddings must both be (B, P), got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    rank, world = _dist_info()
    if not gather or world == 1:
        return image_emb, text_emb, image_emb, text_emb, 0
    all_img, all_txt = gather_features(image_emb), gather_features(text_emb)
    if local_loss:
        return image_emb, text_emb, all_img, all_txt, rank * image_emb.shape[0]
    return all_img, all_txt, all_img, all_txt, 0


def clip_logits(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: torch.Tensor,
    *,
    gather: bool = True,
    local_loss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(logits_per_image (R, N), logits_per_text (R, N), row offset)``.

    Row ``i`` of ``logits_per_image`` scores image ``offset + i`` against every text; its match is
    column ``offset + i``. ``R = N`` (global) or ``R = B`` (local).
    """
    rows_img, rows_txt, cols_img, cols_txt, offset = _pair(image_emb, text_emb, gather, local_loss)
    return scale * rows_img @ cols_txt.t(), scale * rows_txt @ cols_img.t(), offset


def infonce_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: torch.Tensor,
    *,
    gather: bool = True,
    local_loss: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE: ``(CE(logits_per_image) + CE(logits_per_text)) / 2`` with the diagonal as target.

    Args:
        image_emb, text_emb: L2-normalised ``(B, P)`` embeddings, pair ``i`` matching.
        scale: inverse temperature (:func:`effective_scale`), a 0-d tensor.
    Returns:
        ``(loss, logits_per_image, logits_per_text)``.
    """
    lpi, lpt, offset = clip_logits(image_emb, text_emb, scale, gather=gather, local_loss=local_loss)
    target = torch.arange(lpi.shape[0], device=lpi.device) + offset
    loss = (F.cross_entropy(_upcast(lpi), target) + F.cross_entropy(_upcast(lpt), target)) / 2
    return loss, lpi, lpt


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    *,
    gather: bool = True,
    local_loss: bool = False,
    symmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairwise sigmoid loss (SigLIP): ``-sum(log sigmoid(z_ij * (scale * x_i . y_j + bias))) / R``.

    ``z_ij`` is +1 for a matching pair and -1 otherwise; ``R`` is the number of rows (images) the
    process scores, so the value is the per-image sum over all texts, averaged over images.
    ``symmetric=True`` replaces the logits ``L`` by ``(L + L^T) / 2`` first (Med3DVLM; needs the
    square global matrix).

    Returns:
        ``(loss, logits_per_image, logits_per_text)`` (the latter the transpose of the former
        in the global case).
    """
    lpi, _, offset = clip_logits(image_emb, text_emb, scale, gather=gather, local_loss=local_loss)
    lpi = lpi + bias
    if symmetric:
        if lpi.shape[0] != lpi.shape[1]:
            raise ValueError("symmetric SigLIP needs the square global logit matrix (local_loss=False)")
        lpi = (lpi + lpi.t()) / 2
    rows, cols = lpi.shape
    logits = _upcast(lpi)
    labels = -torch.ones(rows, cols, device=lpi.device, dtype=logits.dtype)
    labels[torch.arange(rows, device=lpi.device), torch.arange(rows, device=lpi.device) + offset] = 1.0
    loss = -F.logsigmoid(labels * logits).sum() / rows
    return loss, lpi, lpi.t()


def consistency_weight(step: int, weight: float = 0.1, steps: int = 5000) -> float:
    """HSENet's linearly decaying weight: ``weight * (1 - step / steps)`` for ``step < steps``, else 0."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return weight * (1.0 - step / steps) if step < steps else 0.0


def consistency_loss(
    student_logits: tuple[torch.Tensor, torch.Tensor], teacher_logits: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """HSENet's semantic-consistency ("relation") loss.

    ``(MSE(S2_i2t, S1_i2t) + MSE(S2_t2i, S1_t2i)) / 2`` between the student's logits ``S2`` and
    the (detached) teacher logits ``S1``, both pairs given as ``(logits_per_image, logits_per_text)``.
    """
    (s_i2t, s_t2i), (t_i2t, t_t2i) = student_logits, teacher_logits
    if s_i2t.shape != t_i2t.shape or s_t2i.shape != t_t2i.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(s_i2t.shape)} vs {tuple(t_i2t.shape)}")
    return (
        F.mse_loss(_upcast(s_i2t), _upcast(t_i2t.detach())) + F.mse_loss(_upcast(s_t2i), _upcast(t_t2i.detach()))
    ) / 2


def contrastive_loss(
    loss_type: str,
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    **options,
):
    """Dispatch to :func:`infonce_loss` or :func:`siglip_loss` by name."""
    if loss_type == "infonce":
        options.pop("symmetric", None)
        return infonce_loss(image_emb, text_emb, scale, **options)
    if loss_type == "siglip":
        if bias is None:
            raise ValueError("siglip loss needs a logit bias")
        return siglip_loss(image_emb, text_emb, scale, bias, **options)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected 'infonce' or 'siglip'")
