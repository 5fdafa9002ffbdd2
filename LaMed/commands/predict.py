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
of each ``--prompt`` text. ``--dtype bf16`` loads the weights in bf16. Other model families register modes in
:data:`PREDICT_MODES` (``name -> (accepts(model_type), run(args, model, volume, out_stem))``), so
text and question modes plug in without changing this command's interface.

From Python: :func:`predict_file` and :func:`predict_folder`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from LaMed.data.prompts import CAPTION_TEMPLATES
from LaMed.inference.api import load
from LaMed.inference.checks import check_device, check_overlap, check_prompts, check_threshold, text_position_limit
from LaMed.inference.hub import resolve_model
from LaMed.inference.outputs import (  # noqa: F401
    DICOM_SEG,
    MASK_SUFFIXES,
    VOLUME_SUFFIXES,
    _stem,
    find_inputs,
    predict_file,
    predict_folder,
    write_overlay,
)
from LaMed.inference.preprocessing import model_input  # noqa: F401  (re-exported for existing callers)
from LaMed.inference.reasoning import predict_question_file
from LaMed.inference.segment import SEG_MODEL_TYPES, check_seg_prompts
from LaMed.inference.spatial_prompts import SegPrompt, read_prompts_file
from LaMed.utils.atomic import atomic_path, check_writable_dir, write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or Hugging Face hub id")
    parser.add_argument(
        "--image", required=True, help="volume file, DICOM series folder, or (with --batch) a folder of volumes"
    )
    parser.add_argument("--prompt", action="append", default=[], help="structure name or sentence; repeat for several")
    parser.add_argument("--out", required=True, help="output file (one prompt) or folder")
    parser.add_argument(
        "--box",
        nargs=6,
        type=float,
        default=None,
        metavar=("A0", "B0", "C0", "A1", "B1", "C1"),
        help="segmentation models: a box prompt, two opposite corners in --coords; with one --prompt it "
        "belongs to that text, alone it is a prompt of its own (several prompts: --prompts-file)",
    )
    parser.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        default=[],
        metavar=("A", "B", "C"),
        help="segmentation models: a foreground point in --coords (repeat for several); joins --box / --prompt",
    )
    parser.add_argument(
        "--background-point",
        nargs=3,
        type=float,
        action="append",
        default=[],
        metavar=("A", "B", "C"),
        help="segmentation models: a background point (label 0), as --point",
    )
    parser.add_argument(
        "--coords",
        default="voxel",
        choices=("voxel", "ras", "lps"),
        help="space of --box / --point: the file's voxel index i j k (x first, as ITK-SNAP / nibabel "
        "count; default), or world mm in RAS (NIfTI, 3D Slicer) or LPS (DICOM, ITK)",
    )
    parser.add_argument(
        "--prompts-file",
        default=None,
        help="segmentation models: JSON list of prompts, each with any of text, box, points, point_labels, "
        "name, coords (default --coords); instead of --prompt / --box / --point",
    )
    parser.add_argument(
        "--series-uid",
        default=None,
        help="DICOM folder holding several series: the SeriesInstanceUID to read (the error lists them)",
    )
    parser.add_argument("--batch", action="store_true", help="--image is a folder: predict every volume in it")
    parser.add_argument("--overlay", action="store_true", help="also write a PNG overlay of representative slices")
    parser.add_argument("--no-zoom-in", action="store_true", help="zoom-out only (one pass at network size)")
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="sliding-window overlap of the zoom-in (default 0.5)"
    )
    parser.add_argument("--threshold", type=float, default=None, help="probability threshold (default: the model's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--format",
        default=".nii.gz",
        choices=MASK_SUFFIXES + (DICOM_SEG,),
        help="mask file type in folder outputs; dicom-seg (DICOM series input): one DICOM Segmentation "
        "of all prompts referencing the series, and for report / VQA models the answers as a "
        "DICOM SR document beside the JSON",
    )
    # Text models (report / VQA) and CLIP models; see the "text and embedding modes" section below.
    parser.add_argument(
        "--question",
        action="append",
        default=[],
        help="question for a report / VQA model; repeat for several (default: describe the findings)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="generation length cap (text models)")
    parser.add_argument(
        "--decoding", default="greedy", help="decoding preset: greedy | m3d_demo | med3dvlm | flare_vqa"
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="preprocessing preset (window / normalisation / crop), resized to the model's input; "
        "default: the one stored with the model (a different one is used with a warning; a "
        "prepared .npy in [0, 1] is only resized)",
    )
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="dtype the weights are loaded and computed in (bf16: half the memory of fp32; fp16: GPU only)",
    )
    parser.add_argument(
        "--device-map",
        default=None,
        choices=("auto",),
        help="report / reasoning models: spread the LLM over the visible GPUs, offloading to the CPU (accelerate)",
    )
    parser.add_argument(
        "--load-in",
        default=None,
        choices=("4bit", "8bit"),
        help="report / reasoning models: quantised LLM weights through bitsandbytes (optional, GPU only)",
    )
    parser.add_argument(
        "--classify",
        nargs="?",
        const="ct_rate",
        default=None,
        metavar="SET[:STYLE]",
        help="CLIP models: zero-shot per-finding probabilities with a prompt set (default ct_rate; "
        "a YAML path; styles ct_clip, ct_clip_present, merlin), written into the JSON",
    )


def _model_type(path_or_id: str) -> str:
    from transformers import AutoConfig

    import LaMed.models.clip  # noqa: F401  (each import registers its model_type with AutoConfig)
    import LaMed.models.mllm  # noqa: F401
    import LaMed.models.reasoning  # noqa: F401
    import LaMed.models.segmentation  # noqa: F401

    return AutoConfig.from_pretrained(resolve_model(path_or_id)).model_type


def _load(args: argparse.Namespace):
    """The model of ``--model`` through the Python API (``LaMed.load``), with the dtype / device options."""

    return load(
        args.model,
        device=args.device,
        dtype=args.dtype,
        preset=args.preset,
        device_map=args.device_map,
        load_in=args.load_in,
    )


def _check_questions(processor, questions: Sequence[str], limit, max_new_tokens: int) -> None:
    """Refuse a question whose prompt (image tokens and template included) plus the answer's
    ``max_new_tokens`` does not fit the language model's positions (it would be cut off silently)."""
    if limit is None:
        return
    for i, q in enumerate(questions):
        n = len(processor.encode_prompt(q))
        if n + max_new_tokens > limit:
            raise ValueError(
                f"--question: entry {i + 1} makes a prompt of {n} tokens (image tokens included); with "
                f"--max-new-tokens {max_new_tokens} that exceeds the language model's "
                f"{limit} positions. Shorten the question or lower --max-new-tokens."
            )


def _spatial_given(args: argparse.Namespace) -> bool:
    return bool(args.box or args.point or args.background_point or args.prompts_file)


def _seg_prompts(args: argparse.Namespace) -> list:
    """The prompts of a segmentation call: the ``--prompt`` texts, one prompt built from ``--box`` /
    ``--point`` (joined to the single ``--prompt`` when there is one), or ``--prompts-file``."""

    if args.prompts_file:
        if args.prompt or args.box or args.point or args.background_point:
            raise ValueError("--prompts-file: give the prompts either in the file or as --prompt / --box / --point")
        return read_prompts_file(args.prompts_file, args.coords)
    if not (args.box or args.point or args.background_point):
        if not args.prompt:
            raise ValueError("--prompt: give at least one structure name or sentence for a segmentation model")
        return list(args.prompt)
    if len(args.prompt) > 1:
        raise ValueError(
            "--box / --point: they join one --prompt at most; for several prompts with boxes or points "
            "use --prompts-file"
        )
    points = [tuple(p) for p in args.point] + [tuple(p) for p in args.background_point]
    labels = (1,) * len(args.point) + (0,) * len(args.background_point)
    text = args.prompt[0] if args.prompt else None
    return [
        SegPrompt(
            text=text,
            box=None if args.box is None else tuple(args.box),
            points=tuple(points),
            point_labels=labels,
            space=args.coords,
            origin=f"--box / --point (--coords {args.coords})",
        )
    ]


def _run_masks(args: argparse.Namespace) -> int:

    prompts = _seg_prompts(args)  # a bad prompts file is refused before the model is loaded
    model = _load(args).model
    check_seg_prompts(model, [p for p in prompts if isinstance(p, str)])
    # progress: a bar over the zoom-in's sliding windows (on stderr; a large CT can take minutes on a CPU)
    common = dict(
        overlay=args.overlay,
        zoom_in=not args.no_zoom_in,
        overlap=args.overlap,
        threshold=args.threshold,
        fmt=args.format,
        progress=True,
        series_uid=args.series_uid,
        preset=args.preset,
    )
    if args.batch:
        results = predict_folder(model, args.image, prompts, args.out, **common)
        failed = {k: v for k, v in results.items() if isinstance(v, str)}
        for name, msg in failed.items():
            print(f"{name}: {msg}")
        print(f"{len(results) - len(failed)} of {len(results)} volumes written to {args.out}")
        return 1 if failed else 0
    written = predict_file(model, args.image, prompts, args.out, **common)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


# ---- text and embedding modes (report / VQA models, CLIP) -----------------------------------------


def _text_out(out: Path, image: Path, batch: bool, suffix: str) -> Path:
    if not batch and out.suffix.lower() == suffix:
        return out
    return out / f"{_stem(image)}{suffix}"


def _each_input(args: argparse.Namespace) -> list[Path]:
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

    import torch

    if args.prompt:
        raise ValueError("--prompt is for segmentation and CLIP models; ask a report / VQA model with --question")
    vlm = _load(args)
    questions = args.question or [CAPTION_TEMPLATES[0]]
    _check_questions(vlm.processor, questions, text_position_limit(vlm.model), args.max_new_tokens)
    vlm.preprocessing  # noqa: B018  (warns once, up front, when --preset differs from the stored one)

    def answer(image: Path) -> None:
        with torch.no_grad():
            answers = vlm.generate(
                image, questions, max_new_tokens=args.max_new_tokens, decoding=args.decoding, series_uid=args.series_uid
            )
        target = _text_out(Path(args.out), image, args.batch, ".json")
        record = {
            "source": str(image),
            "model": str(args.model),
            "answers": [{"question": q, "answer": a} for q, a in zip(questions, answers)],
        }
        if args.format == DICOM_SEG:
            from LaMed.inference.dicom_out import read_series_datasets, write_dicom_sr

            sr = write_dicom_sr(
                list(zip(questions, answers)),
                read_series_datasets(image, args.series_uid),
                target.with_suffix(".dcm"),
                model_name=Path(str(args.model)).name,
            )
            record["dicom_sr"] = str(sr)
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

    clip = _load(args)
    clip.preprocessing  # noqa: B018  (warns once, up front, when --preset differs from the stored one)
    text_emb = None
    if args.prompt:
        try:
            text_emb = torch.from_numpy(clip.embed_text(args.prompt))
        except ValueError as exc:
            raise ValueError(str(exc).replace("texts:", "--prompt:", 1)) from None
    # the prompt set is read and embedded once, before any volume (a bad set is refused up front)
    classifier = clip.classifier(args.classify) if args.classify else None
    for image in _each_input(args):
        emb = torch.from_numpy(clip.embed(image, series_uid=args.series_uid))[None]
        target = _text_out(Path(args.out), image, args.batch, ".json")
        npz = target.with_suffix(".npz")
        with atomic_path(npz, suffix=".npz") as tmp:
            np.savez(tmp, image=emb.cpu().numpy()[0])
        record = {"source": str(image), "model": str(args.model), "embedding": str(npz)}
        if classifier is not None:
            record["classification"] = classifier.score(emb.cpu().numpy()[0])
        if text_emb is not None:
            sims = torch.nn.functional.cosine_similarity(emb, text_emb).cpu().tolist()
            record["prompts"] = sorted(
                ({"prompt": p, "similarity": s} for p, s in zip(args.prompt, sims)), key=lambda r: -r["similarity"]
            )
            for r in record["prompts"]:
                print(f"{image.name}: {r['similarity']:+.3f}  {r['prompt']}")
        write_json_atomic(target, record)
        print(f"written: {target}")
    return 0


def _run_reasoning(args: argparse.Namespace) -> int:
    """Reasoning-segmentation model: the answer to each ``--question`` (JSON) and one mask per ``[SEG]``."""

    if args.prompt:
        raise ValueError(
            "--prompt is for segmentation and CLIP models; ask a reasoning-segmentation model with --question"
        )
    if not args.question:
        raise ValueError(
            "--question: ask the model something, e.g. --question 'Where is the liver? Please segment it.'"
        )
    loaded = _load(args)
    model, processor = loaded.model, loaded.processor
    _check_questions(processor, args.question, text_position_limit(model), args.max_new_tokens)
    kw = dict(
        zoom_in=not args.no_zoom_in,
        overlap=args.overlap,
        threshold=0.5 if args.threshold is None else args.threshold,
        max_new_tokens=args.max_new_tokens,
        decoding=args.decoding,
        fmt=args.format,
        in_folder=args.batch,
        series_uid=args.series_uid,
        preset=args.preset,
    )

    def answer(image: Path) -> None:
        record = predict_question_file(model, processor, image, args.question, args.out, **kw)
        for a in record["answers"]:
            print(f"{image.name}: {a['question']}\n{a['answer']}\nmasks: {', '.join(a['masks']) or 'none'}\n")
        print(f"written: {record['json']}")

    return _over_inputs(args, answer)


# mode name -> (accepts(model_type) -> bool, run(args) -> exit code).
PREDICT_MODES: dict[str, tuple[Callable[[str], bool], Callable[[argparse.Namespace], int]]] = {
    "masks": (lambda model_type: model_type in SEG_MODEL_TYPES, _run_masks),
    "text": (lambda model_type: model_type == "lamed", _run_text),
    "embed": (lambda model_type: model_type == "lamed_clip", _run_embed),
    "reasoning": (lambda model_type: model_type == "lamed_seg", _run_reasoning),
}


def _out_folder(args: argparse.Namespace) -> Path:
    """The folder that will receive the outputs (``--out`` itself, or its parent for a file name)."""
    out = Path(args.out)
    is_file = not args.batch and out.name.lower().endswith(MASK_SUFFIXES + (".json", ".dcm"))
    return out.parent if is_file else out


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options before a model is loaded or a volume read (each message names the option)."""

    args.prompt = check_prompts(args.prompt, "--prompt")
    args.question = check_prompts(args.question, "--question")
    args.threshold = check_threshold(args.threshold)
    args.overlap = check_overlap(args.overlap)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: must be at least 1, got {args.max_new_tokens}")
    check_device(args.device)

    resolve_model(args.model)  # the model folder / hub id first: it is what every other check depends on
    image = Path(args.image)
    if not image.exists():
        raise FileNotFoundError(f"--image {image}: no such file or folder")
    if args.batch and not image.is_dir():
        raise ValueError(f"--image {image}: --batch needs a folder of volumes")
    if args.batch and _spatial_given(args):
        raise ValueError("--box / --point / --prompts-file: their coordinates belong to one volume, not with --batch")
    if args.prompts_file and not Path(args.prompts_file).is_file():
        raise FileNotFoundError(f"--prompts-file {args.prompts_file}: no such file")
    if args.format == DICOM_SEG and not image.is_dir():
        raise ValueError(
            f"--format {DICOM_SEG}: --image {image} is not a DICOM series folder (DICOM out references "
            "the source series; use a NIfTI --format for other inputs)"
        )
    out = Path(args.out)
    if out.is_dir() and not args.batch and out.name.lower().endswith(MASK_SUFFIXES + (".json",)):
        raise ValueError(f"--out {out}: is a folder, but its name reads as a file")
    # A read-only or impossible output place is found now, not after minutes of prediction.
    check_writable_dir(_out_folder(args), what="--out")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    model_type = _model_type(args.model)
    for mode, (accepts, runner) in PREDICT_MODES.items():
        if accepts(model_type):
            if _spatial_given(args) and mode != "masks":
                raise ValueError(
                    f"--box / --point / --prompts-file: spatial prompts need a segmentation model; --model "
                    f"{args.model} is a {model_type!r} model ({mode} mode)"
                )
            if args.classify and mode != "embed":
                raise ValueError(
                    f"--classify: zero-shot classification needs a CLIP model; --model {args.model} is a "
                    f"{model_type!r} model ({mode} mode)"
                )
            return runner(args)
    raise ValueError(
        f"--model {args.model}: no predict mode handles model_type {model_type!r} (modes: {', '.join(PREDICT_MODES)})"
    )
