"""Ask a reasoning-segmentation model questions: answers and masks, on network-size or scanner volumes.

    model, processor = load_reasoning_model("runs/tiny_r1seg3d")
    answers = answer_and_segment(model, processor, images (B, 1, D, H, W), ["Where is the organ that stores bile? ..."] * B)
    answers[0].text, answers[0].logits (K, D, H, W)        # one mask per [SEG] the answer holds

:func:`predict_question` runs one scanner volume (a ``LaMed.data.io.Volume``): the model's
``preprocess_preset`` gives the network-size volume (zoom-out) on which the answer is generated
once; when the foreground crop is larger than the network input, the answer's ``[SEG]`` prompt
embeddings are decoded again on sliding windows of the native-resolution crop (the R1Seg-3D code
generated text per window, so windows could disagree); the masks are pasted back on the canonical
grid, ready for ``save_volume(..., like=volume)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from LaMed.data.io import load_volume, save_volume
from LaMed.inference.dicom_out import read_series_datasets, write_dicom_seg, write_dicom_sr
from LaMed.inference.generate import decoding_kwargs, load_lamed_model
from LaMed.inference.hub import resolve_model
from LaMed.inference.outputs import DICOM_SEG
from LaMed.inference.preprocessing import model_preset
from LaMed.inference.presence import decide, fit_platt, presence_scores
from LaMed.inference.segment import preprocess
from LaMed.inference.sliding_window import dense_windows, sliding_window_inference
from LaMed.models.reasoning import LaMedSegForCausalLM
from LaMed.models.segmentation.common import upsample_logits
from LaMed.utils.atomic import write_json_atomic


def load_reasoning_model(path: str | Path, device: str = "cpu", dtype=None, **from_pretrained):
    """``(model, processor)`` of a saved reasoning model folder (model + ``lamed_processor.json``) or hub id;
    ``dtype`` and ``from_pretrained`` (``device_map``, ``quantization_config``) as in ``load_lamed_model``."""
    return load_lamed_model(LaMedSegForCausalLM, resolve_model(path), dtype, device, **from_pretrained)


@dataclass
class Answer:
    """One answer: ``text`` (special tokens removed, ``[SEG]`` kept), ``logits`` ``(K, D, H, W)`` (one
    per ``[SEG]``, K may be 0) and ``prompts`` ``(K, C)`` (the projected ``[SEG]`` embeddings).
    With the presence gate (``config.presence_gate``): ``present`` (one bool per ``[SEG]``; an absent
    one's logits are set to :data:`ABSENT_LOGIT`, an empty mask), ``presence`` (the probabilities) and
    ``withdrawn``: the ``[SEG]`` answer first generated, when every structure in it was absent and the
    answer was generated again without ``[SEG]``."""

    text: str
    logits: torch.Tensor
    prompts: torch.Tensor
    present: list[bool] = field(default_factory=list)
    presence: list[float] = field(default_factory=list)
    withdrawn: str | None = None


ABSENT_LOGIT = -30.0  # the logits of a [SEG] the presence gate reports absent: probability ~1e-13


def mark_absent(logits: torch.Tensor, present: Sequence[bool]) -> torch.Tensor:
    """Set the logits ``(K, ...)`` of each ``[SEG]`` the gate reported absent to :data:`ABSENT_LOGIT`
    (in place; e.g. after the prompts were decoded again on sliding windows)."""
    for i, ok in enumerate(present):
        if not ok:
            logits[i] = ABSENT_LOGIT
    return logits


def _gate(model, answer: Answer) -> Answer:
    """Apply the segmentation config's presence rule to each ``[SEG]`` of ``answer`` (in place)."""
    k = answer.logits.shape[0]
    if k == 0:
        return answer
    prob, present = decide(model.seg_module.config, presence_scores(answer.logits))
    answer.presence, answer.present = [float(p) for p in prob], [bool(p) for p in present]
    mark_absent(answer.logits, answer.present)
    return answer


def answer_and_segment(
    model,
    processor,
    images,
    questions: Sequence[str],
    max_new_tokens: int = 64,
    decoding: str = "greedy",
    seed: int = 0,
    batch_size: int = 4,
    presence_gate: bool | None = None,
    **gen_kwargs,
) -> list[Answer]:
    """Answers with masks for ``images[i]`` (``(N, 1, D, H, W)`` at the model's input size) + ``questions[i]``.
    ``presence_gate``: check each ``[SEG]`` (see :class:`Answer`); default ``config.presence_gate``."""

    gate = bool(getattr(model.config, "presence_gate", False)) if presence_gate is None else bool(presence_gate)
    n = len(questions)
    if len(images) != n:
        raise ValueError(f"{len(images)} volume(s) for {n} question(s)")
    kw = decoding_kwargs(decoding, max_new_tokens=max_new_tokens, **gen_kwargs)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype  # inputs follow the weights' dtype
    out: list[Answer] = []
    model.eval()
    for b, start in enumerate(range(0, n, batch_size)):
        stop = min(start + batch_size, n)
        vols = torch.stack([torch.as_tensor(images[i]) for i in range(start, stop)]).to(device, dtype)
        batch = processor(list(questions[start:stop]), padding_side="left")
        if kw.get("do_sample"):
            torch.manual_seed(seed * 100_003 + b)
        res = model.generate_with_masks(
            batch["input_ids"].to(device),
            vols,
            attention_mask=batch["attention_mask"].to(device),
            pad_token_id=processor.pad_token_id,
            eos_token_id=processor.tokenizer.eos_token_id,
            **kw,
        )
        texts = processor.decode(res.sequences)
        for r, text in enumerate(texts):
            sel = (res.seg_index[:, 0] == r).nonzero().squeeze(1)
            sel = sel[torch.argsort(res.seg_index[sel, 1])]
            ans = Answer(text, res.seg_logits[sel, 0].float().cpu(), res.seg_prompts[sel].detach())
            out.append(_gate(model, ans) if gate else ans)
    redo = [i for i, a in enumerate(out) if a.present and not any(a.present)]
    if redo:  # every structure of these answers is absent: ask again, [SEG] forbidden, for the words
        again = answer_and_segment(
            model,
            processor,
            [images[i] for i in redo],
            [questions[i] for i in redo],
            max_new_tokens,
            decoding,
            seed,
            batch_size,
            presence_gate=False,
            **{**gen_kwargs, "suppress_tokens": [int(model.seg_token_id)]},
        )
        for i, a in zip(redo, again):
            a.withdrawn, a.present, a.presence = out[i].text, out[i].present, out[i].presence
            out[i] = a
    return out


@torch.no_grad()
def forced_presence_scores(model, processor, images, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """Presence score (largest logit of the first ``[SEG]``'s mask) of each question with its answer
    teacher-forced (``images[i]`` ``(1, D, H, W)`` at the model's input size): what the presence gate
    would read had the LLM answered ``answers[i]``, whatever it would answer itself."""
    param = next(model.parameters())
    size = tuple(int(n) for n in model.seg_module.config.img_size)
    scores = []
    for image, q, a in zip(images, questions, answers):
        ids = torch.tensor([processor.encode_example(q, a)["input_ids"]], device=param.device)
        x = torch.as_tensor(image, dtype=torch.float32)[None]
        if tuple(x.shape[2:]) != size:  # as the answers are generated: on the volume at the model's size
            x = torch.nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=False)
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            images=x.to(param.device, param.dtype),
            return_seg_logits=True,
        )
        if out.seg_logits.shape[0] == 0:
            raise ValueError(f"answer {a!r} holds no [SEG]: nothing to score")
        scores.append(float(out.seg_logits[0].float().max()))
    return np.asarray(scores, np.float64)


def calibrate_reasoning_presence(model, processor, cases: Sequence[tuple], l2: float = 1e-2) -> dict:
    """Fit the presence gate's calibration (Platt scaling of :func:`forced_presence_scores`) on
    ``cases`` = ``(image, question, answer with [SEG], present?)`` of a validation split with present
    and absent structures, and store it in the segmentation config (saved with the model, in
    ``config.seg_overrides``). Returns ``{"a", "b", "n", "n_present"}``."""
    if not cases:
        raise ValueError("calibrate_reasoning_presence: no cases")
    images, questions, answers, present = zip(*cases)
    cal = fit_platt(forced_presence_scores(model, processor, images, questions, answers), present, l2=l2)
    model.seg_module.config.presence_calibration = dict(cal)
    model.config.seg_overrides = {**(model.config.seg_overrides or {}), "presence_calibration": dict(cal)}
    return {**cal, "n": len(present), "n_present": int(sum(bool(x) for x in present))}


@dataclass
class QuestionPrediction:
    """Result of :func:`predict_question` on the canonical grid of the input volume: the answer,
    ``probabilities`` ``(K, D, H, W)`` float16 (one per ``[SEG]``), ``masks`` bool ``(K, D, H, W)``;
    ``present`` / ``withdrawn``: the presence gate's decisions (see :class:`Answer`)."""

    question: str
    answer: str
    probabilities: np.ndarray
    masks: np.ndarray
    windows: int = 1
    crop: tuple = field(default_factory=tuple)
    present: list[bool] = field(default_factory=list)
    withdrawn: str | None = None


@torch.no_grad()
def predict_question(
    model,
    processor,
    volume,
    question: str,
    zoom_in: bool = True,
    overlap: float = 0.5,
    threshold: float = 0.5,
    max_new_tokens: int = 64,
    decoding: str = "greedy",
    preset=None,
) -> QuestionPrediction:
    """Answer ``question`` about ``volume`` (a ``LaMed.data.io.Volume``) and segment every ``[SEG]`` of the answer.

    ``preset``: the preprocessing; default: the one the model stores."""

    img_size = tuple(int(s) for s in model.seg_module.config.img_size)
    pre = preprocess(volume, img_size, model_preset(model, preset, size=img_size), native=zoom_in)
    ans = answer_and_segment(
        model, processor, pre.zoom_out, [question], max_new_tokens=max_new_tokens, decoding=decoding
    )[0]
    crop_shape = tuple(b - a for a, b in zip(pre.crop[:3], pre.crop[3:]))
    k = ans.logits.shape[0]
    logits = upsample_logits(ans.logits[None].float(), crop_shape)[0] if k else torch.zeros((0,) + crop_shape)
    windows = 1
    if k and zoom_in and pre.native is not None and tuple(pre.native.shape[2:]) != img_size:
        # Reuse the answer's [SEG] prompts on every window of the native-resolution crop: no text is
        # generated again, so all windows segment what the one answer referred to.
        native = pre.native.to(next(model.parameters()).device)
        prompts = ans.prompts

        def predictor(batch, origins):
            return torch.cat([model.segment_with_prompts(w[None], prompts)[:, 0][None] for w in batch])

        windows = len(dense_windows([max(n, r) for n, r in zip(native.shape[2:], img_size)], img_size, overlap))
        logits = sliding_window_inference(native, img_size, predictor, overlap=overlap)[0].cpu()
        mark_absent(logits, ans.present)
    probs = np.zeros((k,) + tuple(volume.shape), np.float16)
    box = tuple(slice(a, b) for a, b in zip(pre.crop[:3], pre.crop[3:]))
    if k:
        probs[(slice(None),) + box] = torch.sigmoid(logits.float()).numpy().astype(np.float16)
    return QuestionPrediction(
        question, ans.text, probs, probs > threshold, windows, tuple(pre.crop), list(ans.present), ans.withdrawn
    )


_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz")


def _case_name(path: Path) -> str:
    name = path.name
    for suf in _VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def predict_question_file(
    model,
    processor,
    image: str | Path,
    questions: Sequence[str],
    out: str | Path,
    fmt: str = ".nii.gz",
    in_folder: bool = False,
    **kwargs,
) -> dict:
    """Answer ``questions`` about one volume file / DICOM folder and write the results.

    ``out``: a ``.json`` file (masks beside it, ``<json stem>_q<i>_mask<k><fmt>``) or, with
    ``in_folder`` or any other name, a folder receiving ``<case>.json`` and ``<case>_q<i>_mask<k><fmt>``.
    Masks are binary, in the source file's own geometry (``save_volume(..., like=volume)``).
    ``fmt="dicom-seg"`` (a DICOM series input): the masks of every answer as one DICOM Segmentation
    ``<stem>_seg.dcm`` (segment ``Q<i> [SEG] <k>``; none when no answer has a ``[SEG]``) and the
    question-answer pairs as a DICOM SR ``<stem>_sr.dcm``, both referencing the source series
    (:mod:`LaMed.inference.dicom_out`); a non-DICOM input is refused before the model runs.
    ``kwargs`` go to :func:`predict_question`. Returns the JSON record.
    """

    image, out = Path(image), Path(out)
    if not questions:
        raise ValueError("give at least one question, e.g. 'Where is the liver? Please segment it.'")
    series_uid = kwargs.pop("series_uid", None)
    volume = load_volume(image, series_uid=series_uid)
    dicom = fmt == DICOM_SEG
    # the source instances first: a non-DICOM input is refused before the model runs
    datasets = read_series_datasets(image, series_uid) if dicom else None
    if not in_folder and out.suffix.lower() == ".json":
        json_path, stem = out, out.stem
    else:
        json_path, stem = out / f"{_case_name(image)}.json", _case_name(image)
    answers, segments = [], {}
    for i, q in enumerate(questions):
        pred = predict_question(model, processor, volume, q, **kwargs)
        if dicom:
            names = [f"Q{i + 1} [SEG] {k + 1}" for k in range(len(pred.masks))]
            segments.update(zip(names, pred.masks))
        else:
            names = [
                str(save_volume(m.astype(np.uint8), json_path.parent / f"{stem}_q{i}_mask{k}{fmt}", like=volume))
                for k, m in enumerate(pred.masks)
            ]
        entry = {"question": q, "answer": pred.answer, "masks": names, "windows": pred.windows}
        if pred.present:  # the presence gate ran: which [SEG] it found absent (empty mask)
            entry["present"] = pred.present
        if pred.withdrawn is not None:
            entry["withdrawn_answer"] = pred.withdrawn
        answers.append(entry)
    record = {"source": str(image), "answers": answers}
    if dicom:
        name = getattr(model.config, "_name_or_path", "") or model.config.model_type
        record["dicom_seg"] = None
        if segments:  # a Segmentation needs at least one segment
            masks = SimpleNamespace(prompts=list(segments), masks=segments)
            seg_path = json_path.parent / f"{stem}_seg.dcm"
            record["dicom_seg"] = str(write_dicom_seg(masks, volume, datasets, seg_path, model_name=name))
        pairs = [(a["question"], a["answer"]) for a in answers]
        sr_path = json_path.parent / f"{stem}_sr.dcm"
        record["dicom_sr"] = str(write_dicom_sr(pairs, datasets, sr_path, model_name=name))
    write_json_atomic(json_path, record)
    record["json"] = str(json_path)
    return record


__all__ = [
    "load_reasoning_model",
    "answer_and_segment",
    "predict_question",
    "predict_question_file",
    "Answer",
    "QuestionPrediction",
    "forced_presence_scores",
    "calibrate_reasoning_presence",
]
