"""Text3DSAM: DCFormer encoder + text prompt + SAM2-style decoder with high-resolution skips and
iterative refinement (weights MagicXin/Text3DSAM, code mirthAI/Text3DSAM).

Flow on 128x256x256: DCFormer (channels 48..768, attention last stage) gives five maps; s4
``(768, 2, 4, 4)`` is the image embedding, s0 ``(48, 32, 64, 64)`` and s2 ``(192, 8, 16, 16)`` the
skips. The text CLS state goes through ``text_projector`` (Linear, LayerNorm, GELU, Linear) to
``t`` (768). The decoder runs once with the sparse prompt ``[t]`` and ``no_mask_embed``, then
``refine_passes`` times (published ``pass_num`` 2) with ``sigmoid(previous logits)`` through the
decomposed-conv ``mask_downscaling`` as the dense prompt and the previous mask-token output as a
second sparse token. Logits come out at 1/4 resolution and are upsampled trilinearly.
Loss: MONAI DiceFocal (dice + focal, gamma 2).

Published sizes (measured on the public code, mirthAI/Text3DSAM): 59.3 M in all, image encoder 22.91 M, text
encoder 13.87 M (tiny-clinicalbert geometry), text projector 0.83 M, decoder 21.69 M (mask
decoder 18.08 M of which the two-way transformer 16.94 M, prompt encoder 3.61 M).

What is assumed: the order of the dense position-encoding axes (Text3DSAM's code was not read
for it; the SAM/SegVol order is taken when converting published weights, ``pe_axis_order``).
"""

from __future__ import annotations

import torch

from LaMed.models.segmentation.base import ImageFeatures, PromptableSegModel, Prompts
from LaMed.models.segmentation.configuration import Text3DSAMConfig
from LaMed.models.segmentation.mask_decoder import HighResMaskDecoder3D
from LaMed.models.segmentation.prompt_encoder import PromptEncoder3D
from LaMed.models.segmentation.segvol import _num_prompts, build_image_encoder, build_text_encoder


class Text3DSAMModel(PromptableSegModel):
    """Text3DSAM (see module docstring). Parameters: ``image_encoder`` (DCFormer ``encoder.s0..s4``),
    ``text_encoder`` (``model`` + ``proj``), ``prompt_encoder``, ``mask_decoder``."""

    config_class = Text3DSAMConfig

    def __init__(self, config: Text3DSAMConfig):
        super().__init__(config)
        args = config.args
        self.image_encoder = build_image_encoder(args)
        enc = self.image_encoder
        if not hasattr(enc, "stage_grid_size"):
            raise ValueError(f"Text3DSAM needs a hierarchical (DCFormer) encoder, got {args.image_encoder!r}")
        channels = enc.config.channels
        if channels[args.embed_stage] != args.embed_dim:
            raise ValueError(
                f"Text3DSAM: stage {args.embed_stage} of {args.image_encoder!r} has {channels[args.embed_stage]} "
                f"channels but embed_dim is {args.embed_dim}"
            )
        grid = enc.stage_grid_size(args.embed_stage, args.img_size)
        self.prompt_encoder = PromptEncoder3D(
            args.embed_dim,
            grid,
            args.img_size,
            args.mask_in_chans,
            args.mask_downscaling,
            args.point_convention,
            args.pe_axis_order,
            num_point_embeddings=0,
        )
        hr = tuple(args.high_res_stages)
        self.mask_decoder = HighResMaskDecoder3D(
            args.embed_dim,
            (channels[hr[0]], channels[hr[1]]),
            args.num_multimask_outputs,
            args.transformer_depth,
            args.num_heads,
            args.mlp_dim,
            args.attention_downsample_rate,
        )
        self.text_encoder = build_text_encoder(args)
        self.post_init()

    def encode_image(self, volume: torch.Tensor) -> ImageFeatures:
        hr = list(self.config.high_res_stages)
        maps = self.image_encoder.forward_intermediates(volume, hr + [self.config.embed_stage])
        return ImageFeatures(embeddings=maps[-1], high_res=maps[:-1])

    def decode_once(self, features: ImageFeatures, prompts: Prompts, image_index=None, mask=None, extra_token=None):
        emb = features.embeddings
        if prompts.points is not None or prompts.boxes is not None:
            raise ValueError("Text3DSAM takes text prompts only (no points or boxes)")
        n = _num_prompts(prompts, emb.shape[0] if image_index is None else len(image_index))
        pe = self.prompt_encoder.get_dense_pe(emb.shape[2:]).to(emb.dtype)
        sparse, dense = self.prompt_encoder(n, None, None, mask, [prompts.text_embedding, extra_token])
        return self.mask_decoder(
            emb,
            pe,
            sparse.to(emb.dtype),
            dense.to(emb.dtype),
            features.high_res,
            prompts.text_embedding,
            image_index=image_index,
        )
