"""All prompts of a volume in one pass against one call per prompt (prints its figures; no assertions).

    python -m Bench.perf.multi_prompt            # SegVol size, 300x512x512 CT, cuda if available else cpu
    python -m Bench.perf.multi_prompt --quick    # tiny model, 96x160x160 CT (CPU run)
    python -m Bench.perf.multi_prompt --quick --kind mixed   # text, box, point and text + box prompts

For 1, 4, 12 and 24 prompts (``--kind``: text, box, point or mixed) on one phantom CT: zoom-out + zoom-in
(:func:`LaMed.inference.segment.zoom_out_zoom_in`) called once per prompt ("sequential") against one
call with all prompts ("batched": the volume and each zoom-in window encoded once, all prompts
decoded as one batch). Both get the same preprocessed volume, so the ratio is the inference's alone.
Each timing is the fastest of ``--repeats`` runs (other processes only ever slow a run down), and the
volumes the encoder saw are counted too: a figure no machine load can move.
Random weights: the model's threshold is set to the 80th percentile of the zoom-out probabilities so
that every prompt gets a zoom-in region, as a trained model would. Printed per prompt count: seconds
both ways, their ratio, the largest |difference| of the probabilities, and the 1-minute load average
(other processes on the machine slow both runs alike, but a loaded machine widens the noise).
"""

from __future__ import annotations

import argparse
import os
import time

ORGANS = [
    "liver",
    "spleen",
    "left kidney",
    "right kidney",
    "stomach",
    "pancreas",
    "gallbladder",
    "aorta",
    "inferior vena cava",
    "esophagus",
    "duodenum",
    "colon",
    "small bowel",
    "urinary bladder",
    "prostate",
    "left adrenal gland",
    "right adrenal gland",
    "portal vein",
    "heart",
    "left lung",
    "right lung",
    "trachea",
    "vertebrae",
    "sacrum",
]


def make_prompts(kind: str, n: int, crop) -> list:
    """``n`` prompts of ``kind``: organ names, or boxes / points spread over the foreground crop
    (canonical voxels; a deterministic grid), or the four kinds in turn (``mixed``)."""
    from LaMed.inference.spatial_prompts import SegPrompt

    lo, hi = crop[:3], crop[3:]

    def at(i: int, frac: float) -> list[float]:
        # a point of the crop that moves with i (golden-ratio steps fill the box evenly)
        return [
            a + (b - a) * (0.2 + 0.6 * ((i * 0.618 + k * 0.29 + frac) % 1.0)) for k, (a, b) in enumerate(zip(lo, hi))
        ]

    out = []
    for i in range(n):
        k = {"text": 0, "box": 1, "point": 2}.get(kind, i % 4)
        c = at(i, 0.0)
        half = [(b - a) * 0.12 for a, b in zip(lo, hi)]
        box = tuple(
            [max(a, v - h) for a, v, h in zip(lo, c, half)] + [min(b - 1, v + h) for b, v, h in zip(hi, c, half)]
        )
        if k == 0:
            out.append(SegPrompt(text=ORGANS[i]))
        elif k == 1:
            out.append(SegPrompt(box=box, name=f"box {i}"))
        elif k == 2:
            out.append(SegPrompt(points=(tuple(c), tuple(at(i, 0.5))), point_labels=(1, 0), name=f"points {i}"))
        else:
            out.append(SegPrompt(text=ORGANS[i], box=box, name=f"{ORGANS[i]} in box {i}"))
    return out


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    import torch

    import LaMed  # noqa: F401
    from Bench.perf.seg_infer import make_ct
    from LaMed.inference.preprocessing import model_preset
    from LaMed.inference.segment import preprocess, zoom_out_zoom_in
    from LaMed.models.checkpoint_files import resolve_tokenizer
    from LaMed.models.segmentation import create_seg_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model and a 96x160x160 CT")
    p.add_argument("--device", default="auto")
    p.add_argument("--counts", default="1,4,12,24", help="prompt counts (comma-separated, at most 24)")
    p.add_argument("--repeats", type=int, default=1, help="runs per timing; the fastest is kept")
    p.add_argument("--variant", default=None, help="model variant (default: segvol, or segvol_tiny with --quick)")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="CT size D H W (default by --quick)")
    p.add_argument("--kind", default="text", choices=("text", "box", "point", "mixed"), help="prompt kind")
    a = p.parse_args(argv)
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    variant, shape = ("segvol_tiny", (96, 160, 160)) if a.quick else ("segvol", (300, 512, 512))
    variant, shape = a.variant or variant, tuple(a.shape) if a.shape else shape
    torch.manual_seed(0)
    model = create_seg_model(variant).to(device).eval()
    model.tokenizer = resolve_tokenizer("minilm")
    vol, _ = make_ct(shape)
    pre = preprocess(vol, model.config.img_size, model_preset(model), native=True)
    counts = [int(c) for c in a.counts.split(",")]
    if not counts or min(counts) < 1 or max(counts) > len(ORGANS):
        p.error(f"--counts: each count between 1 and {len(ORGANS)}, got {a.counts}")
    every = make_prompts(a.kind, max(counts), pre.crop)
    with torch.no_grad():
        zo, _ = zoom_out_zoom_in(model, pre, every, zoom_in=False)
    model.config.threshold = float(torch.sigmoid(torch.quantile(zo.flatten()[::97].float(), 0.8)))
    print(
        f"device {device}, model {variant}, CT {shape}, crop {pre.crop}, prompts {a.kind}, "
        f"threshold {model.config.threshold:.4f}"
    )
    encoded = {"n": 0}
    encode = model.encode_image

    def counting(x):
        encoded["n"] += x.shape[0]
        return encode(x)

    model.encode_image = counting

    def timed(fn):
        best, out = float("inf"), None
        encoded["n"] = 0
        for _ in range(max(a.repeats, 1)):
            t = time.perf_counter()
            with torch.no_grad():
                out = fn()
            _sync(device)
            best = min(best, time.perf_counter() - t)
        return best, out, encoded["n"] // max(a.repeats, 1)

    for n in counts:
        prompts = every[:n]
        load_before = os.getloadavg()[0]
        t_seq, seq, e_seq = timed(lambda prompts=prompts: [zoom_out_zoom_in(model, pre, [q])[0] for q in prompts])
        t_bat, (bat, skipped), e_bat = timed(lambda prompts=prompts: zoom_out_zoom_in(model, pre, prompts))
        diff = float((torch.sigmoid(torch.cat(seq)) - torch.sigmoid(bat)).abs().max())
        print(
            f"{n:2d} prompts: sequential {t_seq:7.2f} s, batched {t_bat:6.2f} s, ratio x{t_seq / t_bat:5.2f}, "
            f"volumes encoded {e_seq} vs {e_bat}, max |diff| {diff:.2e}, zoom-in skipped {len(skipped)}, "
            f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
