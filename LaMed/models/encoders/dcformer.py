"""DCFormer: a hierarchical 3D encoder of decomposed depthwise 1-D convolutions (arXiv 2502.05091).

Used by Med3DVLM (``decomp_small`` on 128x256x256, stages 3 and 4 feed the MLP-Mixer projector)
and Text3DSAM (channels 48..768 with a global-attention last stage). One generic
:class:`DCFormer` is built from a :class:`DCFormerConfig`; the published sizes are registered data.

Layout: a stem (total stride 4) and four stages, each starting with MaxPool(3, 2, 1) + 1x1x1 conv,
so stage ``i`` has stride ``4 * 2**i`` (4, 8, 16, 32, 64). On 128x256x256 the five maps are
32x64x64, 16x32x32, 8x16x16, 4x8x8 and 2x4x4 (D x H x W).

Published quirks, reproduced behind flags (the clean behaviour is the default):
  * ``stem_activation=False``: the released stems have no GELU (it was passed as the norm flag);
  * ``attn_scale="legacy_mul"``: Text3DSAM's attention multiplies q by sqrt(head_dim);
  * ``input_layout="HWD"``: Med3DVLM / DCFormer permute the volume to (H, W, D) before the stem,
    which changes which axis each 1-D branch convolves (and so what its weights mean).
Outputs are always given back in the canonical (D, H, W) layout, tokens depth-major.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from LaMed.models.encoders.base import VisionEncoder
from LaMed.models.encoders.dcformer_blocks import ATTN_SCALES, AttentionBlock, ConvBlock, decomposed_stem
from LaMed.models.encoders.registry import register_encoder

INPUT_LAYOUTS = ("DHW", "HWD")


@dataclass
class DCFormerConfig:
    """Hyper-parameters of :class:`DCFormer`.

    ``num_blocks`` and ``channels`` have one entry per stage s0..s4 (s0 = the stem, always one
    block, as in every published variant); ``kernel_sizes`` and ``block_types`` one per stage s1..s4
    ("C" = convolution block, "T" = attention block). ``img_size`` (D, H, W) voxels only fixes
    ``grid_size``; the network itself accepts any size.
    """

    num_blocks: tuple[int, ...] = (1, 2, 3, 6, 2)
    channels: tuple[int, ...] = (64, 96, 192, 384, 768)
    kernel_sizes: tuple[int, ...] = (13, 11, 9, 7)
    block_types: tuple[str, ...] = ("C", "C", "C", "C")
    in_channels: int = 1
    img_size: tuple[int, int, int] = (128, 256, 256)
    stem_kernel_size: int = 7
    stem_stride: int = 4
    stem_depth: int = 4
    mlp_ratio: float = 4.0
    layer_scale_init: float = 1e-6
    num_heads: int = 8
    cpe_kernel_size: int = 3
    drop_path_rate: float = 0.0
    stem_activation: bool = True
    attn_scale: str = "standard"
    input_layout: str = "DHW"
    out_indices: tuple[int, ...] = field(default=(0, 1, 2, 3, 4))

    def __post_init__(self):
        for name in ("num_blocks", "channels", "kernel_sizes", "block_types", "img_size", "out_indices"):
            setattr(self, name, tuple(getattr(self, name)))
        if len(self.num_blocks) != 5 or len(self.channels) != 5:
            raise ValueError(
                f"DCFormerConfig.num_blocks and .channels need 5 entries (stem s0 + stages s1..s4), "
                f"got {self.num_blocks} and {self.channels}"
            )
        if self.num_blocks[0] != 1:
            raise ValueError(f"DCFormerConfig.num_blocks[0] is the stem and must be 1, got {self.num_blocks[0]}")
        if len(self.kernel_sizes) != 4 or len(self.block_types) != 4:
            raise ValueError(
                f"DCFormerConfig.kernel_sizes and .block_types need 4 entries (stages s1..s4), "
                f"got {self.kernel_sizes} and {self.block_types}"
            )
        if any(t not in ("C", "T") for t in self.block_types):
            raise ValueError(f"DCFormerConfig.block_types entries must be 'C' or 'T', got {self.block_types}")
        if self.attn_scale not in ATTN_SCALES:
            raise ValueError(f"DCFormerConfig.attn_scale must be one of {ATTN_SCALES}, got {self.attn_scale!r}")
        if self.input_layout not in INPUT_LAYOUTS:
            raise ValueError(f"DCFormerConfig.input_layout must be one of {INPUT_LAYOUTS}, got {self.input_layout!r}")
        if len(self.img_size) != 3:
            raise ValueError(f"DCFormerConfig.img_size must be (D, H, W), got {self.img_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class _KeepBatchNormStats:
    """During a checkpoint's recomputation, keep BatchNorm running statistics as they are.

    The recomputed forward sees the same batch again; without this the running mean / var (and
    ``num_batches_tracked``) would be updated twice per step, so checkpointing would change the
    eval-mode model. Momentum 0 leaves the statistics bit-identical; the counter is restored.
    """

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [
            (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in self.norms
        ]
        for m in self.norms:
            m.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for m, (momentum, count) in zip(self.norms, self.saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)
        return False


def _checkpoint_contexts(block: nn.Module):
    return contextlib.nullcontext(), _KeepBatchNormStats(block)


def _stage_size(n: int, stage: int, stem_stride: int) -> int:
    """Spatial size after stage ``stage`` for input size ``n`` (stem conv, then MaxPool(3, 2, 1)s)."""
    n = (n - 1) // stem_stride + 1
    for _ in range(stage):
        n = (n - 1) // 2 + 1
    return n


class DCFormer(VisionEncoder):
    """Decomposed-convolution 3D encoder.

    Input ``(B, in_channels, D, H, W)``. :meth:`forward_features` gives the last-stage tokens
    ``(B, d4*h4*w4, channels[-1])`` (depth-major, as Med3DVLM flattens them);
    :meth:`forward_intermediates` the per-stage maps ``(B, channels[i], d_i, h_i, w_i)``;
    :meth:`forward_tokens` the per-stage token sequences (what Med3DVLM's projector consumes).
    Parameters live under ``encoder.s0 .. encoder.s4`` with the published names and shapes.
    """

    def __init__(self, config: DCFormerConfig | None = None, **overrides):
        super().__init__()
        config = replace(config or DCFormerConfig(), **overrides) if overrides else (config or DCFormerConfig())
        self.config = config
        c = config
        blocks_total = sum(c.num_blocks[1:])
        # Stochastic depth grows linearly with block index (plain floats: the model may be built on meta).
        rates = [c.drop_path_rate * i / max(blocks_total - 1, 1) for i in range(blocks_total)]
        self.encoder = nn.Module()
        self.encoder.s0 = nn.Sequential(
            decomposed_stem(
                c.in_channels, c.channels[0], c.stem_kernel_size, c.stem_stride, c.stem_depth, c.stem_activation
            )
        )
        k = 0
        for s in range(1, 5):
            blocks = []
            for j in range(c.num_blocks[s]):
                in_dim = c.channels[s - 1] if j == 0 else c.channels[s]
                common = dict(downsample=j == 0, mlp_ratio=c.mlp_ratio, drop_path=rates[k])
                if c.block_types[s - 1] == "C":
                    blocks.append(
                        ConvBlock(
                            in_dim, c.channels[s], c.kernel_sizes[s - 1], layer_scale_init=c.layer_scale_init, **common
                        )
                    )
                else:
                    blocks.append(
                        AttentionBlock(
                            in_dim,
                            c.channels[s],
                            c.kernel_sizes[s - 1],
                            num_heads=c.num_heads,
                            attn_scale=c.attn_scale,
                            cpe_kernel=c.cpe_kernel_size,
                            **common,
                        )
                    )
                k += 1
            setattr(self.encoder, f"s{s}", nn.Sequential(*blocks))
        self.hidden_size = c.channels[-1]
        self.grid_size = self.stage_grid_size(4)
        self.num_prefix_tokens = 0

    # ---- geometry -----------------------------------------------------------------------------
    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.config.channels

    def stage_grid_size(self, stage: int, img_size: Sequence[int] | None = None) -> tuple[int, int, int]:
        """Grid ``(d, h, w)`` of stage ``stage`` (negative counts from the end) for ``img_size`` (D, H, W)."""
        stage = self._stage_index(stage)
        return tuple(_stage_size(n, stage, self.config.stem_stride) for n in (img_size or self.config.img_size))

    @property
    def feature_info(self) -> list[dict]:
        """Per stage: ``channels``, ``reduction`` (stride w.r.t. the input) and ``grid_size`` at ``img_size``."""
        return [
            dict(
                stage=i,
                channels=self.config.channels[i],
                reduction=self.config.stem_stride * 2**i,
                grid_size=self.stage_grid_size(i),
            )
            for i in range(5)
        ]

    def _stage_index(self, i: int) -> int:
        j = i + 5 if i < 0 else i
        if not 0 <= j < 5:
            raise IndexError(f"DCFormer has stages 0..4, got index {i}")
        return j

    # ---- forward ------------------------------------------------------------------------------
    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in stage:
                ctx = functools.partial(_checkpoint_contexts, block)
                x = checkpoint(block, x, use_reentrant=False, context_fn=ctx)
            return x
        return stage(x)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Stage maps ``(B, channels[i], d_i, h_i, w_i)`` (canonical D, H, W order) for ``indices``.

        ``indices`` are stage numbers 0..4 (negative counts from the end; default
        ``config.out_indices``); stages after the last requested one are not computed.
        """
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"DCFormer expects (B, {self.config.in_channels}, D, H, W), got {tuple(x.shape)}")
        wanted = [self._stage_index(i) for i in (self.config.out_indices if indices is None else indices)]
        hwd = self.config.input_layout == "HWD"
        if hwd:  # (B, C, D, H, W) -> (B, C, H, W, D), as Med3DVLM feeds its encoder
            x = x.permute(0, 1, 3, 4, 2)
        maps = {}
        for s in range(max(wanted) + 1):
            x = self._run_stage(getattr(self.encoder, f"s{s}"), x)
            if s in wanted:
                maps[s] = x.permute(0, 1, 4, 2, 3) if hwd else x
        return [maps[s] for s in wanted]

    def forward_tokens(self, x: torch.Tensor, indices: Sequence[int] = (-2, -1)) -> list[torch.Tensor]:
        """Per-stage tokens ``(B, d_i*h_i*w_i, channels[i])``, depth-major; default stages 3 and 4."""
        return [m.flatten(2).transpose(1, 2) for m in self.forward_intermediates(x, indices)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, D, H, W) -> (B, d4*h4*w4, channels[-1])`` last-stage tokens."""
        return self.forward_tokens(x, (-1,))[0]


def _variant(name: str, doc: str, **fixed):
    """Register ``name`` as a DCFormer variant; call-time overrides replace config fields."""

    def factory(**overrides) -> DCFormer:
        unknown = set(overrides) - {f.name for f in fields(DCFormerConfig)}
        if unknown:
            raise TypeError(f"unknown DCFormer config field(s) for '{name}': {sorted(unknown)}")
        return DCFormer(DCFormerConfig(**{**fixed, **overrides}))

    factory.__name__ = name
    factory.__doc__ = doc
    register_encoder(name, factory)
    return factory


# Published sizes (mirthAI/DCFormer, mirthAI/Med3DVLM); parameter counts measured on that public code.
_SIZES = {
    "nano": dict(num_blocks=(1, 1, 1, 1, 1), channels=(32, 32, 64, 128, 256)),
    "naive": dict(num_blocks=(1, 2, 2, 2, 2), channels=(32, 64, 128, 256, 512)),
    "tiny": dict(num_blocks=(1, 2, 3, 3, 2), channels=(64, 96, 192, 384, 768)),
    "small": dict(num_blocks=(1, 2, 3, 6, 2), channels=(64, 96, 192, 384, 768)),
    "base": dict(num_blocks=(1, 2, 6, 6, 2), channels=(64, 128, 256, 512, 1024)),
    "large": dict(num_blocks=(1, 2, 6, 12, 2), channels=(64, 256, 512, 1024, 2048)),
}
for _size, _arch in _SIZES.items():
    _variant(f"dcformer_{_size}", f"DCFormer-{_size} (clean: stem GELU, D-H-W layout).", **_arch)

# Exactly the released encoders (legacy flags on), so their checkpoints reproduce their outputs.
MED3DVLM_FLAGS = dict(stem_activation=False, input_layout="HWD")
TEXT3DSAM_FLAGS = dict(stem_activation=False, attn_scale="legacy_mul", input_layout="DHW")
_variant(
    "dcformer_small_med3dvlm",
    "Med3DVLM / DCFormer_SigLIP vision encoder (decomp_small, legacy flags).",
    **_SIZES["small"],
    **MED3DVLM_FLAGS,
)
_variant(
    "dcformer_text3dsam",
    "Text3DSAM image encoder: channels 48..768, attention last stage, legacy flags (22.9 M params).",
    num_blocks=(1, 2, 3, 6, 2),
    channels=(48, 96, 192, 384, 768),
    block_types=("C", "C", "C", "T"),
    **TEXT3DSAM_FLAGS,
)
# Tiny variant for tests: both block types, 25 k parameters; stem stride 2 so that 32x64x64 still
# leaves a 1x2x2 last stage (4 tokens for the attention block to mix).
_variant(
    "dcformer_test",
    "Tiny DCFormer for tests (channels 8..32, attention last stage, stem stride 2, input 32x64x64).",
    num_blocks=(1, 1, 1, 2, 1),
    channels=(8, 8, 16, 16, 32),
    kernel_sizes=(5, 5, 3, 3),
    block_types=("C", "C", "C", "T"),
    num_heads=2,
    stem_stride=2,
    img_size=(32, 64, 64),
)

__all__ = ["DCFormer", "DCFormerConfig", "MED3DVLM_FLAGS", "TEXT3DSAM_FLAGS"]
