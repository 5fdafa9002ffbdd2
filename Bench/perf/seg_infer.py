"""Segmentation inference and training-step benchmark (prints its figures; no assertions).

    python -m Bench.perf.seg_infer                  # SegVol size, 512x512x300 CT, on cuda if available else cpu
    python -m Bench.perf.seg_infer --quick          # tiny model, 128x256x256 CT (CPU smoke run)

1. Inference, seconds per volume: zoom-out only, and zoom-out + zoom-in (sliding windows of the
   model's input size, overlap 0.5, over the liver region of a synthetic CT phantom upsampled to
   512x512x300 voxels); random weights, so the zoom-in ROI is forced to the phantom's liver box
   instead of the (meaningless) zoom-out prediction. Peak memory: process RSS (CPU) or
   ``torch.cuda.max_memory_allocated`` (GPU).
2. Training step (forward + backward) on a batch of 1 volume x 8 classes x SegVol's 6 prompt
   types: one image encoding per volume (LaMed) against the published re-encoding per class;
   the ratio is measured in the same run.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def make_ct(shape):
    """A phantom CT of ``shape`` (D, H, W): drawn at a third of the size and repeated (fast to make)."""
    from LaMed.data.io import Volume
    from LaMed.data.phantom import make_phantom

    small = tuple(max(s // 3, 8) for s in shape)
    ph = make_phantom(0, shape=small)
    reps = [s // m for s, m in zip(shape, small)]
    img = ph.image
    liver = ph.masks["liver"]
    for ax, r in enumerate(reps):
        img, liver = np.repeat(img, r, axis=ax), np.repeat(liver, r, axis=ax)
    spacing = tuple(s / r for s, r in zip(ph.spacing, reps))
    return Volume.from_array(img, spacing=spacing), liver


def bench_inference(model, vol, liver, device, repeats: int):
    import torch

    from LaMed.inference.preprocessing import model_preset
    from LaMed.inference.segment import _roi, preprocess, zoom_in_region, zoom_out_zoom_in
    from LaMed.models.segmentation.base import Prompts

    img_size = tuple(model.config.img_size)
    times = {"zoom_out": [], "zoom_in": []}
    for _ in range(repeats):
        t = time.perf_counter()
        pre = preprocess(vol, img_size, model_preset(model), native=True)
        with torch.no_grad():
            logits, _ = zoom_out_zoom_in(model, pre, ["liver"], zoom_in=False)
        _sync(device)
        times["zoom_out"].append(time.perf_counter() - t)
        # zoom-in over the liver box (in crop coordinates), as SegVol would after a good zoom-out
        box = tuple(slice(a, b) for a, b in zip(pre.crop[:3], pre.crop[3:]))
        roi = _roi(torch.from_numpy(liver[box]), img_size)
        emb = torch.zeros(1, model.config.embed_dim, device=device)
        t = time.perf_counter()
        with torch.no_grad():
            zoom_in_region(model, pre.native.to(device), roi, Prompts(text_embedding=emb), overlap=0.5)
        _sync(device)
        times["zoom_in"].append(time.perf_counter() - t + times["zoom_out"][-1])
    return {k: float(np.median(v)) for k, v in times.items()}, roi


def bench_training(model, device, n_classes: int = 8, repeats: int = 2):
    import torch

    d, h, w = model.config.img_size
    g = torch.Generator().manual_seed(0)
    batch = dict(
        volume=torch.rand(1, 1, d, h, w, generator=g),
        labels=(torch.rand(1, n_classes, d, h, w, generator=g) > 0.8).float(),
        label_mask=torch.ones(1, n_classes, dtype=torch.bool),
        input_ids=torch.randint(1000, 2000, (1, n_classes, 8), generator=g),
        points=torch.rand(1, n_classes, 21, 3, generator=g) * torch.tensor([d, h, w]),
        point_labels=torch.randint(-1, 2, (1, n_classes, 21), generator=g),
        boxes=torch.tensor([2.0, 10.0, 10.0, d - 3.0, h - 10.0, w - 10.0]).expand(1, n_classes, 6),
    )
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    model.train()
    out = {}
    for once in (True, False):
        model.config.encode_once = once
        ts = []
        for _ in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            model(**batch).loss.backward()
            _sync(device)
            ts.append(time.perf_counter() - t)
        out["encode_once" if once else "reencode_per_class"] = float(np.median(ts[1:]))
    model.config.encode_once = True
    return out


def main(argv=None):
    import torch

    import LaMed  # noqa: F401
    from LaMed.models.segmentation import create_seg_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and a 128x256x256 CT")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-training", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    variant, shape = ("segvol_tiny", (128, 256, 256)) if a.quick else ("segvol", (300, 512, 512))
    torch.manual_seed(0)
    model = create_seg_model(variant).to(device).eval()
    from LaMed.models.checkpoint_files import resolve_tokenizer

    model.tokenizer = resolve_tokenizer("minilm")
    print(f"device {device}, model {variant} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M), CT {shape}")
    vol, liver = make_ct(shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, roi = bench_inference(model, vol, liver, device, a.repeats)
    mem = torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else _rss_gb()
    print(
        f"inference s/volume: zoom-out {times['zoom_out']:.2f}, zoom-out + zoom-in {times['zoom_in']:.2f} "
        f"(zoom-in ROI {tuple(s.stop - s.start for s in roi)}); peak {'GPU' if device.type == 'cuda' else 'RSS'} {mem:.2f} GB"
    )
    if not a.skip_training:
        tr = bench_training(model, device)
        print(
            f"training step, 1 volume x 8 classes x 6 prompt types: encode once {tr['encode_once']:.2f} s, "
            f"re-encode per class {tr['reencode_per_class']:.2f} s, speed-up x{tr['reencode_per_class'] / tr['encode_once']:.2f}"
        )


if __name__ == "__main__":
    main()
