"""The 2D slice branch of HSENet's 2E3 encoder: 32-slice stacks and their open_clip features.

HSENet feeds its 2E3 encoder with one feature vector per slice for 32 evenly spaced axial slices,
computed by BiomedCLIP's image trunk (``(32, 768)`` per volume). The published pipeline writes
32 JPEGs per case and runs a separate script over them; no script merges the features back into
the training JSON. Here:

* :func:`slice_stack` (in the preparer's worker): the ``hsenet_slices`` preset (its own window
  [-1000, 1000] HU, 1.5/0.75/0.75 mm, 32 ``linspace`` slices, min-max per slice) on the same
  canonical volume as the 3D image, resized in-plane to ``size`` and stored as uint8
  ``(32, size, size)`` in ``slices/<id>.npy``. The slices keep the canonical radiological
  orientation of the 3D image (the published CT-RATE and BIMCV-R exports rotate by -90 and +90
  degrees respectively, so their 2D and 3D branches disagree);
* :class:`SliceEncoder` (in the main process, once per run): the image tower of an open_clip
  model, loaded from ``hf-hub:org/name`` (through the local Hugging Face cache, so
  ``HF_HUB_OFFLINE=1`` works once it is cached), from a local folder holding
  ``open_clip_config.json`` plus ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors``
  (the layout BiomedCLIP is published in), or from an open_clip built-in config name with random
  weights (tests). Only the ``visual.*`` weights are read: no text tower (and no BERT download)
  is needed. Features go to ``slice_features/<id>.npy`` (``(32, C)`` float32), the manifest key
  ``slice_features`` that the 2E3 datasets read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["slice_stack", "SliceEncoder", "load_slice_encoder", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin")


def slice_stack(
    image: np.ndarray, spacing: Sequence[float], size: int = 224, preset: str = "hsenet_slices"
) -> np.ndarray:
    """``(32, size, size)`` uint8 slices of a canonical ``(D, H, W)`` HU volume (HSENet 2D branch)."""
    import torch

    from LaMed.data.transforms import apply_preset

    res = apply_preset(preset, image, spacing)
    stack = torch.from_numpy(np.ascontiguousarray(res["image"][0], dtype=np.float32))[:, None]
    if tuple(stack.shape[-2:]) != (size, size):
        stack = torch.nn.functional.interpolate(
            stack, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return np.rint(stack[:, 0].clamp_(0.0, 1.0).numpy() * 255.0).astype(np.uint8)


class SliceEncoder:
    """An open_clip image tower that maps uint8 slice stacks ``(S, H, W)`` to features ``(S, C)``.

    Attributes: ``name`` (what was loaded), ``image_size`` (pixels), ``mean`` / ``std``
    (normalisation of the model's preprocessing), ``dim`` (feature size, known after the first call).
    """

    def __init__(self, visual, name: str, image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD, random_weights=False):
        self.visual = visual.eval()
        self.name = name
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.random_weights = random_weights
        self.dim: int | None = None

    def __call__(self, slices: np.ndarray, batch: int = 32) -> np.ndarray:
        import torch

        arr = np.asarray(slices)
        if arr.ndim != 3:
            raise ValueError(f"slice stack must be (S, H, W), got shape {arr.shape}")
        x = torch.from_numpy(arr.astype(np.float32) / 255.0)[:, None]
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size,) * 2, mode="bicubic", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        x = x.expand(-1, 3, -1, -1)  # grey slices as RGB, as the published JPEG export does
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        x = (x - mean) / std
        feats = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], batch):
                feats.append(self._forward(x[i : i + batch]))
        out = torch.cat(feats).float().numpy()
        self.dim = int(out.shape[1])
        return out

    def _forward(self, x):
        # BiomedCLIP (timm tower): HSENet takes the trunk output, i.e. the ViT features before
        # open_clip's projection head; a token sequence is reduced to its class token.
        trunk = getattr(self.visual, "trunk", None)
        y = trunk(x) if trunk is not None else self.visual(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        if y.ndim == 3:
            y = y[:, 0]
        return y


def _build_visual(model_cfg: dict):
    import open_clip.model as ocm

    vision_cfg = dict(model_cfg["vision_cfg"])
    return ocm._build_vision_tower(
        int(model_cfg["embed_dim"]), vision_cfg, quick_gelu=bool(model_cfg.get("quick_gelu", False))
    )


def _load_state(folder: Path) -> dict:
    for name in _WEIGHT_FILES:
        p = folder / name
        if p.is_file():
            from LaMed.models.checkpoint_files import read_state_dict

            return read_state_dict(p, unwrap=("state_dict",))
    raise FileNotFoundError(f"{folder}: no open_clip weights ({', '.join(_WEIGHT_FILES)})")


def _from_folder(folder: Path, name: str) -> SliceEncoder:
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no open_clip_config.json (an open_clip model folder, e.g. BiomedCLIP)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        model_cfg = cfg["model_cfg"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{cfg_path}: expected {{'model_cfg': {{...}}, 'preprocess_cfg': {{...}}}} ({exc})") from None
    visual = _build_visual(model_cfg)
    sd = _load_state(folder)
    vis = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    if not vis:
        raise ValueError(f"{folder}: the weights hold no 'visual.*' keys")
    missing, unexpected = visual.load_state_dict(vis, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder}: image tower weights do not match its config: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
    pre = cfg.get("preprocess_cfg", {})
    size = model_cfg["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return SliceEncoder(visual, name, size, pre.get("mean", OPENAI_MEAN), pre.get("std", OPENAI_STD))


def load_slice_encoder(spec: str, cache_dir: str | None = None) -> SliceEncoder:
    """Load the slice encoder named by ``spec``: ``hf-hub:org/name``, a local folder, or an
    open_clip built-in config name (random weights; for tests and dry runs only)."""
    spec = str(spec)
    if spec.startswith("hf-hub:"):
        from LaMed.data.download import hub_snapshot

        folder = hub_snapshot(
            spec[len("hf-hub:") :],
            repo_type="model",
            cache_dir=cache_dir,
            allow_patterns=["open_clip_config.json", *_WEIGHT_FILES],
        )
        return _from_folder(Path(folder), spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        return _from_folder(p, str(p))
    import open_clip

    cfg = open_clip.get_model_config(spec)
    if cfg is None:
        raise ValueError(
            f"slice model {spec!r} is neither 'hf-hub:org/name', an existing folder, nor an open_clip model config name"
        )
    size = cfg["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return SliceEncoder(_build_visual(cfg), f"{spec} (random weights)", size, random_weights=True)
