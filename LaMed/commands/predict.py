"""``lamed predict``: run a model on a volume (or a folder of volumes).

    lamed predict --model PATH_OR_HUB_ID --image ct.nii.gz --prompt liver --out liver.nii.gz
    lamed predict --model runs/segvol --image ct.nii.gz --prompt liver --prompt spleen --out preds/ --overlay
    lamed predict --model runs/segvol --image scans/ --batch --prompt liver --out preds/
    lamed predict --model runs/tiny_lamed --image ct.nii.gz --question "Is there a liver lesion?" --out answer.json
    lamed predict --model runs/tiny_clip --image ct.nii.gz --prompt "hepatomegaly" --prompt "normal liver" --out clip.json
    lamed predict --model runs/tiny_r1seg3d --image ct.nii.gz --question "Where is the organ that stores bile? Please segment it." --out preds/

Masks are written in the source image's geometry (``LaMed.data.io.save_volume(..., like=...)``):
one prompt -> a binary mask; several -> a label map plus ``<name>_labels.json`` (label -> prompt).
``--overlay`` adds a PNG of representative slices. The output mode follows the model: the
segmentation models give masks; report / VQA models (``model_type`` ``lamed``) answer ``--question``
(default: a findings report) into JSON; reasoning-segmentation models (``lamed_seg``) answer ``--question``
into JSON plus one mask file per ``[SEG]`` of the answer (source geometry); CLIP models write the volume's embedding and the similarity
of each ``--prompt`` text. ``--dtype bf16`` runs under autocast. Other model families register modes in
:data:`PREDICT_MODES` (``name -> (accepts(model_type), run(args, model, volume, out_stem))``), so
text and question modes plug in without changing this command's interface.

From Python: :func:`predict_file` and :func:`predict_folder`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from LaMed.inference.segment import SEG_MODEL_TYPES
from LaMed.utils.atomic import atomic_path, write_json_atomic

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".npz")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hugging Face hub id")
    parser.add_argument("--image", required=True, help="volume file, DICOM series folder, or (with --batch) a folder of volumes")
    parser.add_argument("--prompt", action="append", default=[], help="structure name or sentence; repeat for several")
    parser.add_argument("--out", required=True, help="output file (one prompt) or folder")
    parser.add_argument("--batch", action="store_true", help="--image is a folder: predict every volume in it")
    parser.add_argument("--overlay", action="store_true", help="also write a PNG overlay of representative slices")
    parser.add_argument("--no-zoom-in", action="store_true", help="zoom-out only (one pass at network size)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap of the zoom-in (default 0.5)")
    parser.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the model's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--format", default=".nii.gz", choices=MASK_SUFFIXES, help="mask file type in folder outputs")
    # Text models (report / VQA) and CLIP models; see the "text and embedding modes" section below.
    parser.add_argument("--question", action="append", default=[],
                        help="question for a report / VQA model; repeat for several (default: describe the findings)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation length cap (text models)")
    parser.add_argument("--decoding", default="greedy", help="decoding preset: greedy | m3d_demo | med3dvlm | flare_vqa")
    parser.add_argument("--preset", default="m3d",
                        help="intensity / crop preprocessing of text and CLIP models, resized to the model's input "
                             "(default m3d; a prepared .npy in [0, 1] is only resized)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="compute precision (bf16: autocast)")
    parser.add_argument("--classify", nargs="?", const="ct_rate", default=None, metavar="SET[:STYLE]",
                        help="CLIP models: zero-shot per-finding probabilities with a prompt set (default ct_rate; "
                             "a YAML path; styles ct_clip, ct_clip_present, merlin), written into the JSON")


def _stem(path: Path) -> str:
    name = path.name
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip()).strip("_")[:60] or "prompt"


def write_overlay(volume_array, label_map, legend: Dict[int, str], path: Path, n_slices: int = 3) -> Path:
    """PNG of the ``n_slices`` axial slices with the most labelled voxels, labels drawn over the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = (label_map > 0).reshape(label_map.shape[0], -1).sum(1)
    order = np.argsort(-counts)[:n_slices] if counts.any() else np.linspace(0, label_map.shape[0] - 1, n_slices).astype(int)
    lo, hi = np.percentile(volume_array, [1, 99])
    fig, axes = plt.subplots(1, len(order), figsize=(4 * len(order), 4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, k in zip(axes[0], sorted(order)):
        ax.imshow(volume_array[k], cmap="gray", vmin=lo, vmax=hi)
        lab = np.ma.masked_equal(label_map[k], 0)
        ax.imshow(lab, cmap=cmap, vmin=0.5, vmax=10.5, alpha=0.45, interpolation="nearest")
        ax.set_title(f"axial slice {k}")
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap((i - 1) % 10)) for i in legend]
    fig.legend(handles, list(legend.values()), loc="lower center", ncol=min(len(legend), 5))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def predict_file(model, image: str | Path, prompts: Sequence[str], out: str | Path, overlay: bool = False,
                 zoom_in: bool = True, overlap: float = 0.5, threshold: Optional[float] = None,
                 fmt: str = ".nii.gz", progress: bool = False) -> Dict[str, Path]:
    """Segment one volume and write the results; returns ``{"mask" | "labels", "legend", "overlay": path}``.

    ``out`` ending in a mask suffix is the file itself (one prompt: binary mask; several: label
    map with the legend beside it); otherwise it is a folder receiving ``<case>_<prompt><fmt>``
    or ``<case>_labels<fmt>`` + ``<case>_labels.json``.
    """
    from LaMed.data.io import load_volume, save_volume
    from LaMed.inference.segment import predict_volume

    image = Path(image)
    vol = load_volume(image)
    pred = predict_volume(model, vol, prompts, zoom_in=zoom_in, overlap=overlap, threshold=threshold,
                          progress=progress)
    out = Path(out)
    as_file = out.name.lower().endswith(MASK_SUFFIXES)
    stem = _stem(image)
    written: Dict[str, Path] = {}
    if len(prompts) == 1:
        target = out if as_file else out / f"{stem}_{_safe(prompts[0])}{fmt}"
        written["mask"] = save_volume(pred.masks[prompts[0]].astype("uint8"), target, like=vol)
    else:
        target = out if as_file else out / f"{stem}_labels{fmt}"
        written["labels"] = save_volume(pred.label_map, target, like=vol)
    legend_path = target.parent / f"{_stem(target)}.json"
    write_json_atomic(legend_path, {"source": str(image), "labels": {str(k): v for k, v in pred.legend.items()},
                                    "zoom_in_skipped": pred.fallback})
    written["legend"] = legend_path
    if overlay:
        written["overlay"] = write_overlay(vol.array, pred.label_map, pred.legend, target.parent / f"{_stem(target)}.png")
    return written


def find_inputs(folder: str | Path) -> List[Path]:
    """Volume files and DICOM series folders directly inside ``folder`` (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: --batch needs a folder of volumes")
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES):
            found.append(p)
        elif p.is_dir() and any(q.suffix.lower() == ".dcm" for q in p.iterdir()):
            found.append(p)
    if not found:
        raise FileNotFoundError(f"{folder}: no volume files ({', '.join(VOLUME_SUFFIXES)}) or DICOM folders in it")
    return found


def predict_folder(model, folder: str | Path, prompts: Sequence[str], out: str | Path, progress: bool = True,
                   **kwargs) -> Dict[str, Dict[str, Path] | str]:
    """:func:`predict_file` for every volume of ``folder`` into the folder ``out``; a failing case is
    reported (``{case: "error: ..."}``) and the others go on."""
    from tqdm.auto import tqdm

    results: Dict[str, Dict[str, Path] | str] = {}
    inputs = find_inputs(folder)
    for path in tqdm(inputs, desc="predict", disable=not progress):
        try:
            results[path.name] = predict_file(model, path, prompts, out, **kwargs)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            results[path.name] = f"error: {exc}"
    return results


def _model_type(path_or_id: str) -> str:
    from transformers import AutoConfig

    from LaMed.inference.hub import resolve_model

    import LaMed.models.clip  # noqa: F401  (each import registers its model_type with AutoConfig)
    import LaMed.models.mllm  # noqa: F401
    import LaMed.models.reasoning  # noqa: F401
    import LaMed.models.segmentation  # noqa: F401

    return AutoConfig.from_pretrained(resolve_model(path_or_id)).model_type


def _check_questions(processor, questions: Sequence[str], limit, max_new_tokens: int) -> None:
    """Refuse a question whose prompt (image tokens and template included) plus the answer's
    ``max_new_tokens`` does not fit the language model's positions (it would be cut off silently)."""
    if limit is None:
        return
    for i, q in enumerate(questions):
        n = len(processor.encode_prompt(q))
        if n + max_new_tokens > limit:
            raise ValueError(f"--question: entry {i + 1} makes a prompt of {n} tokens (image tokens included); with "
                             f"--max-new-tokens {max_new_tokens} that exceeds the language model's "
                             f"{limit} positions. Shorten the question or lower --max-new-tokens.")


def _run_masks(args: argparse.Namespace) -> int:
    from LaMed.inference.segment import check_seg_prompts, load_seg_model

    if not args.prompt:
        raise ValueError("--prompt: give at least one structure name or sentence for a segmentation model")
    model = load_seg_model(args.model, device=args.device)
    check_seg_prompts(model, args.prompt)
    # progress: a bar over the zoom-in's sliding windows (on stderr; a large CT can take minutes on a CPU)
    common = dict(overlay=args.overlay, zoom_in=not args.no_zoom_in, overlap=args.overlap, threshold=args.threshold,
                  fmt=args.format, progress=True)
    if args.batch:
        with _autocast(args):
            results = predict_folder(model, args.image, args.prompt, args.out, **common)
        failed = {k: v for k, v in results.items() if isinstance(v, str)}
        for name, msg in failed.items():
            print(f"{name}: {msg}")
        print(f"{len(results) - len(failed)} of {len(results)} volumes written to {args.out}")
        return 1 if failed else 0
    with _autocast(args):
        written = predict_file(model, args.image, args.prompt, args.out, **common)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


# ---- text and embedding modes (report / VQA models, CLIP) -----------------------------------------

def _autocast(args: argparse.Namespace):
    import contextlib

    import torch

    if getattr(args, "dtype", "fp32") == "bf16":
        return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_input(volume, size: Sequence[int], preset: str = "m3d"):
    """``(1, 1, *size)`` float32 tensor in [0, 1] for a text / CLIP model from a loaded ``Volume``.

    A prepared ``.npy`` (already in [0, 1]) is only resized; anything else goes through ``preset``
    (window / normalisation, foreground crop) at ``size``.
    """
    import dataclasses

    import numpy as np
    import torch

    from LaMed.data.presets import apply_preset, get_preset

    arr = np.asarray(volume.array, np.float32)
    size = tuple(int(s) for s in size)
    if volume.meta.get("format") == "npy" and arr.size and 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0:
        x = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
        return x if tuple(x.shape[2:]) == size else torch.nn.functional.interpolate(x, size=size, mode="trilinear")
    out = apply_preset(dataclasses.replace(get_preset(preset), size=size), arr, volume.spacing)
    return torch.from_numpy(np.ascontiguousarray(out["image"], dtype=np.float32))[None]


def _tower_size(tower) -> Tuple[int, int, int]:
    size = getattr(getattr(tower, "config", None), "img_size", None)
    if size is None:
        raise ValueError(f"{type(tower).__name__}: cannot tell the model's input size (no config.img_size)")
    return tuple(int(s) for s in size)


def _text_out(out: Path, image: Path, batch: bool, suffix: str) -> Path:
    if not batch and out.suffix.lower() == suffix:
        return out
    return out / f"{_stem(image)}{suffix}"


def _each_input(args: argparse.Namespace) -> List[Path]:
    return find_inputs(args.image) if args.batch else [Path(args.image)]


def _over_inputs(args: argparse.Namespace, work: Callable[[Path], None]) -> int:
    """``work(image)`` for every input; exit code 1 if any failed.

    One file raises as usual; in ``--batch`` mode an unreadable or invalid file is reported by name
    and skipped, so one bad case does not lose the others.
    """
    failed = 0
    for image in _each_input(args):
        try:
            work(image)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            if not args.batch:
                raise
            failed += 1
            print(f"{image.name}: error: {exc}")
    return 1 if failed else 0


def _run_text(args: argparse.Namespace) -> int:
    """Report / VQA model: answers to ``--question`` (default: a report) as JSON (``--out x.json`` or a folder)."""
    from LaMed.data.io import load_volume
    from LaMed.data.prompts import CAPTION_TEMPLATES
    from LaMed.inference.checks import text_position_limit
    from LaMed.inference.generate import generate_texts, load_mllm
    from LaMed.inference.hub import resolve_model

    import torch

    if args.prompt:
        raise ValueError("--prompt is for segmentation and CLIP models; ask a report / VQA model with --question")
    model, processor = load_mllm(resolve_model(args.model), device=args.device)
    questions = args.question or [CAPTION_TEMPLATES[0]]
    _check_questions(processor, questions, text_position_limit(model), args.max_new_tokens)
    size = _tower_size(model.towers[0])

    def answer(image: Path) -> None:
        x = model_input(load_volume(image), size, args.preset)
        with _autocast(args), torch.no_grad():
            answers = generate_texts(model, processor, x.expand(len(questions), -1, -1, -1, -1), questions,
                                     max_new_tokens=args.max_new_tokens, decoding=args.decoding)
        target = _text_out(Path(args.out), image, args.batch, ".json")
        record = {"source": str(image), "model": str(args.model),
                  "answers": [{"question": q, "answer": a} for q, a in zip(questions, answers)]}
        write_json_atomic(target, record)
        for q, a in zip(questions, answers):
            print(f"{image.name}: {q}\n{a}\n")
        print(f"written: {target}")

    return _over_inputs(args, answer)


def _run_embed(args: argparse.Namespace) -> int:
    """CLIP model: the volume's embedding (``.npz``) and, with ``--prompt``, the cosine similarity of
    each prompt text (JSON, best first): zero-shot classification / retrieval of one volume."""
    import numpy as np
    import torch

    from LaMed.data.io import load_volume
    from LaMed.inference.hub import resolve_model
    from LaMed.inference.retrieval import load_clip

    model, tokenizer = load_clip(resolve_model(args.model), device=args.device)
    model.eval()
    size = _tower_size(model.vision_model)
    text_emb = None
    if args.prompt:
        from LaMed.inference.checks import check_text_length, text_position_limit

        check_text_length(tokenizer, args.prompt, text_position_limit(model.text_model, tokenizer), "--prompt",
                          what="the CLIP text tower")
        enc = tokenizer(list(args.prompt), padding=True, return_tensors="pt")
        with _autocast(args), torch.no_grad():
            text_emb = model.encode_text(enc["input_ids"].to(args.device), enc["attention_mask"].to(args.device)).float()
    for image in _each_input(args):
        x = model_input(load_volume(image), size, args.preset).to(args.device)
        with _autocast(args), torch.no_grad():
            emb = model.encode_image(x).float()
        target = _text_out(Path(args.out), image, args.batch, ".json")
        npz = target.with_suffix(".npz")
        with atomic_path(npz, suffix=".npz") as tmp:
            np.savez(tmp, image=emb.cpu().numpy()[0])
        record = {"source": str(image), "model": str(args.model), "embedding": str(npz)}
        if getattr(args, "classify", None):
            from LaMed.inference.classify import classify_from_spec

            record["classification"] = classify_from_spec(model, tokenizer, x, args.classify, device=args.device)
        if text_emb is not None:
            sims = torch.nn.functional.cosine_similarity(emb, text_emb).cpu().tolist()
            record["prompts"] = sorted(({"prompt": p, "similarity": s} for p, s in zip(args.prompt, sims)),
                                       key=lambda r: -r["similarity"])
            for r in record["prompts"]:
                print(f"{image.name}: {r['similarity']:+.3f}  {r['prompt']}")
        write_json_atomic(target, record)
        print(f"written: {target}")
    return 0


def _run_reasoning(args: argparse.Namespace) -> int:
    """Reasoning-segmentation model: the answer to each ``--question`` (JSON) and one mask per ``[SEG]``."""
    from LaMed.inference.checks import text_position_limit
    from LaMed.models.reasoning.inference import load_reasoning_model, predict_question_file

    if args.prompt:
        raise ValueError("--prompt is for segmentation and CLIP models; ask a reasoning-segmentation model with --question")
    if not args.question:
        raise ValueError("--question: ask the model something, e.g. --question 'Where is the liver? Please segment it.'")
    model, processor = load_reasoning_model(args.model, device=args.device)
    _check_questions(processor, args.question, text_position_limit(model), args.max_new_tokens)
    kw = dict(zoom_in=not args.no_zoom_in, overlap=args.overlap, threshold=0.5 if args.threshold is None else args.threshold,
              max_new_tokens=args.max_new_tokens, decoding=args.decoding, fmt=args.format, in_folder=args.batch)

    def answer(image: Path) -> None:
        with _autocast(args):
            record = predict_question_file(model, processor, image, args.question, args.out, **kw)
        for a in record["answers"]:
            print(f"{image.name}: {a['question']}\n{a['answer']}\nmasks: {', '.join(a['masks']) or 'none'}\n")
        print(f"written: {record['json']}")

    return _over_inputs(args, answer)


# mode name -> (accepts(model_type) -> bool, run(args) -> exit code).
PREDICT_MODES: Dict[str, Tuple[Callable[[str], bool], Callable[[argparse.Namespace], int]]] = {
    "masks": (lambda model_type: model_type in SEG_MODEL_TYPES, _run_masks),
    "text": (lambda model_type: model_type == "lamed", _run_text),
    "embed": (lambda model_type: model_type == "lamed_clip", _run_embed),
    "reasoning": (lambda model_type: model_type == "lamed_seg", _run_reasoning),
}


def _out_folder(args: argparse.Namespace) -> Path:
    """The folder that will receive the outputs (``--out`` itself, or its parent for a file name)."""
    out = Path(args.out)
    is_file = not args.batch and out.name.lower().endswith(MASK_SUFFIXES + (".json",))
    return out.parent if is_file else out


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options before a model is loaded or a volume read (each message names the option)."""
    from LaMed.inference.checks import check_device, check_overlap, check_prompts, check_threshold
    from LaMed.utils.atomic import check_writable_dir

    args.prompt = check_prompts(args.prompt, "--prompt")
    args.question = check_prompts(args.question, "--question")
    args.threshold = check_threshold(args.threshold)
    args.overlap = check_overlap(args.overlap)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: must be at least 1, got {args.max_new_tokens}")
    check_device(args.device)
    image = Path(args.image)
    if not image.exists():
        raise FileNotFoundError(f"--image {image}: no such file or folder")
    if args.batch and not image.is_dir():
        raise ValueError(f"--image {image}: --batch needs a folder of volumes")
    out = Path(args.out)
    if out.is_dir() and not args.batch and out.name.lower().endswith(MASK_SUFFIXES + (".json",)):
        raise ValueError(f"--out {out}: is a folder, but its name reads as a file")
    # A read-only or impossible output place is found now, not after minutes of prediction.
    check_writable_dir(_out_folder(args), what="--out")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    model_type = _model_type(args.model)
    for name, (accepts, runner) in PREDICT_MODES.items():
        if accepts(model_type):
            return runner(args)
    raise ValueError(f"--model {args.model}: no predict mode handles model_type {model_type!r} "
                     f"(modes: {', '.join(PREDICT_MODES)})")
