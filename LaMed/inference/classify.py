"""Zero-shot findings classification with any LaMed CLIP (M3D-CLIP, Med3DVLM SigLIP, HSENet stage 1 / 2).

    ps = load_prompt_set("ct_rate", style="ct_clip")          # or a YAML path; styles: ct_clip, ct_clip_present, merlin
    model, tok = load_clip("runs/m3d_clip")
    res = classify_split(model, tok, "data/ct_rate/test.json", ps)   # ZeroShotResult: ids, names, probability, ...
    one = classify_volume(model, tok, image, ps)              # image (1, 1, D, H, W) in [0, 1] -> {finding: {...}}

Per finding the prompt set holds a positive and a negative prompt ensemble. Each side is embedded
as the mean of its L2-normalised prompt embeddings, so ``image . mean`` is the mean cosine
similarity over the prompts (Merlin's averaging, StanfordMIMI/Merlin issue #7). Two scores:

* ``probability`` -- softmax over the pair of scaled similarities, ``sigmoid(scale * (s_pos - s_neg))``
  with the model's own inverse temperature (CT-CLIP's released evaluation, scripts/zero_shot.py;
  a SigLIP bias cancels in the pair);
* ``similarity`` -- the plain cosine similarity with the positive ensemble.

Thresholds are chosen on a validation split (:func:`LaMed.metrics.classification.select_thresholds`)
and applied to the test split; AUROC needs none. Prompt sets are data
(``LaMed/data/prompt_sets/*.yaml``; the styles in ``styles.yaml``); a finding is positive for a
manifest item when one of its ``labels`` is among the item's ``labels``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LaMed.data.prepared import load_image, load_manifest, manifest_dir
from LaMed.inference.checks import check_text_length, text_position_limit
from LaMed.metrics.classification import bootstrap_ci, multilabel_report, select_thresholds

logger = logging.getLogger("LaMed.inference")

PROMPT_SETS_DIR = Path(__file__).resolve().parents[1] / "data" / "prompt_sets"
SCORES = ("probability", "similarity")


class PromptSetError(ValueError):
    """A prompt set is malformed or does not fit the data; the message names the file and the problem."""


@dataclass(frozen=True)
class FindingPrompts:
    """One finding: its name, the manifest labels that make it positive, and its two prompt ensembles."""

    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]
    labels: tuple[str, ...] = ()
    group: str = ""

    def is_positive(self, item_labels: Sequence[str]) -> bool:
        wanted = {lab.lower() for lab in (self.labels or (self.name,))}
        return any(str(lab).lower() in wanted for lab in item_labels)


@dataclass(frozen=True)
class PromptSet:
    """A named list of findings with their prompts, built from a YAML file and a style."""

    name: str
    style: str
    findings: tuple[FindingPrompts, ...]
    source: str = ""

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.findings]

    def select(self, names: Sequence[str]) -> PromptSet:
        """The subset ``names`` (in that order); an unknown name is refused, listing the known ones."""
        by = {f.name.lower(): f for f in self.findings}
        unknown = [n for n in names if n.lower() not in by]
        if unknown:
            raise PromptSetError(f"{self.source or self.name}: unknown finding(s) {unknown}; known: {self.names}")
        if not names:
            raise PromptSetError(f"{self.source or self.name}: selecting no finding leaves an empty set")
        return PromptSet(self.name, self.style, tuple(by[n.lower()] for n in names), self.source)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "style": self.style,
            "source": self.source,
            "findings": {
                f.name: {
                    "positive": list(f.positive),
                    "negative": list(f.negative),
                    "labels": list(f.labels or (f.name,)),
                    "group": f.group,
                }
                for f in self.findings
            },
        }


def _read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptSetError(f"{path}: prompt set not found") from None
    except yaml.YAMLError as exc:
        raise PromptSetError(f"{path}: not valid YAML ({exc})") from None


def load_styles(path: str | Path | None = None) -> dict[str, dict]:
    """``{style: {"positive": [...], "negative": [...], "description": str}}`` from ``styles.yaml``."""
    path = Path(path) if path else PROMPT_SETS_DIR / "styles.yaml"
    data = _read_yaml(path)
    if not isinstance(data, dict) or not data:
        raise PromptSetError(f"{path}: expected a mapping of style name -> positive / negative templates")
    for name, st in data.items():
        for side in ("positive", "negative"):
            t = st.get(side) if isinstance(st, dict) else None
            if not isinstance(t, list) or not t or not all(isinstance(x, str) and "{finding}" in x for x in t):
                raise PromptSetError(
                    f"{path}: style {name!r}: '{side}' must be a non-empty list of templates containing {{finding}}"
                )
    return data


def list_prompt_sets() -> list[str]:
    """Names of the bundled prompt sets (``LaMed/data/prompt_sets/<name>.yaml``)."""
    return sorted(p.stem for p in PROMPT_SETS_DIR.glob("*.yaml") if p.stem != "styles")


def _strings(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise PromptSetError(f"{where}: expected a non-empty string or list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def load_prompt_set(
    name_or_path: str | Path, style: str | None = None, findings: Sequence[str] | None = None
) -> PromptSet:
    """A bundled prompt set by name (``ct_rate``, ``phantom``) or a YAML file, with ``style``'s
    templates for the findings that have no prompts of their own (default: the file's
    ``default_style``); ``findings`` keeps a subset (unknown names are refused).

    YAML: ``{name, description, default_style, findings: [{name, text?, labels?, group?, positive?, negative?}]}``.
    """
    p = Path(name_or_path)
    if not p.suffix:
        p = PROMPT_SETS_DIR / f"{name_or_path}.yaml"
        if not p.is_file():
            raise PromptSetError(
                f"prompt set {str(name_or_path)!r} not found; bundled: {list_prompt_sets()} (or give a YAML path)"
            )
    data = _read_yaml(p)
    if not isinstance(data, dict):
        raise PromptSetError(f"{p}: expected a mapping with 'findings'")
    raw = data.get("findings")
    if not isinstance(raw, list) or not raw:
        raise PromptSetError(f"{p}: 'findings' must be a non-empty list (the set is empty)")
    styles = load_styles()
    style = style or data.get("default_style") or "ct_clip"
    if style not in styles:
        raise PromptSetError(f"{p}: unknown prompt style {style!r}; known: {sorted(styles)}")
    templates = styles[style]
    out, seen = [], set()
    for i, f in enumerate(raw):
        where = f"{p}: findings[{i}]"
        if isinstance(f, str):
            f = {"name": f}
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"].strip():
            raise PromptSetError(f"{where}: each finding needs a non-empty 'name'")
        name = f["name"].strip()
        if name.lower() in seen:
            raise PromptSetError(f"{where}: finding {name!r} appears twice")
        seen.add(name.lower())
        unknown_keys = set(f) - {"name", "text", "labels", "positive", "negative", "group"}
        if unknown_keys:
            raise PromptSetError(f"{where} ({name}): unknown key(s) {sorted(unknown_keys)}")
        text = f.get("text", name)
        sides = {}
        for side in ("positive", "negative"):
            if side in f:
                sides[side] = _strings(f[side], f"{where} ({name}).{side}")
            else:
                sides[side] = tuple(t.replace("{finding}", text) for t in templates[side])
        labels = _strings(f["labels"], f"{where} ({name}).labels") if "labels" in f else ()
        group = f.get("group", "")
        if not isinstance(group, str):
            raise PromptSetError(f"{where} ({name}).group: expected a string, got {group!r}")
        out.append(FindingPrompts(name, sides["positive"], sides["negative"], labels, group))
    ps = PromptSet(str(data.get("name") or p.stem), style, tuple(out), str(p))
    return ps.select(list(findings)) if findings is not None else ps


# ------------------------------------------------------------------------------------------- scoring


def encode_prompts(
    model, tokenizer, prompt_set: PromptSet, max_length: int | None = None, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """``(positive, negative)`` ensemble embeddings, each ``(K, P)``: the mean of the L2-normalised
    prompt embeddings of each side (not renormalised, so a dot product is the mean cosine)."""
    import torch

    texts = [t for f in prompt_set.findings for t in (*f.positive, *f.negative)]
    check_text_length(
        tokenizer,
        texts,
        max_length or text_position_limit(model.text_model, tokenizer),
        f"prompt set {prompt_set.source or prompt_set.name}",
        what="the CLIP text tower",
    )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        emb = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float()
        emb = torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()
    pos, neg, i = [], [], 0
    for f in prompt_set.findings:
        pos.append(emb[i : i + len(f.positive)].mean(0))
        i += len(f.positive)
        neg.append(emb[i : i + len(f.negative)].mean(0))
        i += len(f.negative)
    return np.stack(pos).astype(np.float32), np.stack(neg).astype(np.float32)


def zero_shot_scores(
    image_emb: np.ndarray, positive: np.ndarray, negative: np.ndarray, scale: float
) -> dict[str, np.ndarray]:
    """Scores of ``(N, P)`` image embeddings against ``(K, P)`` ensembles.

    Returns ``{"probability", "similarity", "similarity_negative"}``, each ``(N, K)``:
    ``probability = softmax([scale * s_pos, scale * s_neg])[0]``.
    """
    img = np.asarray(image_emb, np.float64)
    img = img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    s_pos, s_neg = img @ np.asarray(positive, np.float64).T, img @ np.asarray(negative, np.float64).T
    z = float(scale) * (s_pos - s_neg)
    prob = 0.5 * (1.0 + np.tanh(0.5 * z))  # = sigmoid(z) without overflow
    return {"probability": prob, "similarity": s_pos, "similarity_negative": s_neg}


def model_scale(model) -> float:
    """The CLIP's inverse temperature (``exp(logit_scale)`` clamped, or the raw value for M3D / HSENet)."""
    return float(model.scale.detach().float().cpu())


def _fit(image, size: Sequence[int]):
    import torch

    if tuple(image.shape[2:]) == tuple(size):
        return image
    return torch.nn.functional.interpolate(image, size=tuple(size), mode="trilinear", align_corners=False)


def _image_size(model) -> tuple[int, ...] | None:
    size = getattr(getattr(model.vision_model, "config", None), "img_size", None)
    return tuple(int(s) for s in size) if size is not None else None


@dataclass(frozen=True)
class EncodedPromptSet:
    """A prompt set embedded once by one CLIP: score any number of image embeddings against it
    (``lamed predict --classify`` over a folder encodes the prompts once, not once a volume)."""

    prompt_set: PromptSet
    positive: np.ndarray
    negative: np.ndarray
    scale: float

    @classmethod
    def from_spec(cls, model, tokenizer, spec: str, device=None) -> EncodedPromptSet:
        name, style = parse_spec(spec)
        ps = load_prompt_set(name, style=style)
        pos, neg = encode_prompts(model, tokenizer, ps, device=device)
        return cls(ps, pos, neg, model_scale(model))

    def score(self, image_embedding) -> dict:
        """``{"prompt_set", "style", "findings": {name: {"probability", "similarity",
        "similarity_negative"}}}`` of one image embedding ``(P,)`` (any scale: it is normalised)."""
        emb = np.asarray(image_embedding, np.float32).reshape(1, -1)
        s = zero_shot_scores(emb, self.positive, self.negative, self.scale)
        findings = {f.name: {k: float(v[0, i]) for k, v in s.items()} for i, f in enumerate(self.prompt_set.findings)}
        return {"prompt_set": self.prompt_set.name, "style": self.prompt_set.style, "findings": findings}


def embed_volume(model, image, slice_features=None, device=None) -> np.ndarray:
    """The CLIP image embedding ``(1, P)`` of one volume ``(1, 1, D, H, W)`` (or ``(1, D, H, W)``) in [0, 1],
    resized to the tower's input size when needed."""
    import torch

    image = torch.as_tensor(image, dtype=torch.float32)
    if image.ndim == 4:
        image = image[None]
    if image.ndim != 5 or image.shape[:2] != (1, 1):
        raise ValueError(f"classify_volume: image must be (1, 1, D, H, W), got {tuple(image.shape)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = _image_size(model)
    if size:
        image = _fit(image, size)
    extra = {"slice_features": torch.as_tensor(slice_features)[None].to(device)} if slice_features is not None else {}
    with torch.no_grad():
        return model.encode_image(image.to(device), **extra).float().cpu().numpy()


def classify_volume(
    model, tokenizer, image, prompt_set: PromptSet, slice_features=None, device=None
) -> dict[str, dict[str, float]]:
    """One volume ``(1, 1, D, H, W)`` (or ``(1, D, H, W)``) in [0, 1] -> ``{finding: {"probability",
    "similarity", "similarity_negative"}}`` (resized to the tower's input size when needed)."""
    pos, neg = encode_prompts(model, tokenizer, prompt_set, device=device)
    encoded = EncodedPromptSet(prompt_set, pos, neg, model_scale(model))
    return encoded.score(embed_volume(model, image, slice_features, device))["findings"]


@dataclass
class ZeroShotResult:
    """Scores of a split: row ``i`` is item ``ids[i]``, column ``k`` finding ``names[k]``."""

    ids: list[str]
    names: list[str]
    probability: np.ndarray  # (N, K)
    similarity: np.ndarray  # (N, K) cosine with the positive ensemble
    similarity_negative: np.ndarray  # (N, K)
    labels: np.ndarray | None = None  # (N, K) 0/1 from the manifest, None when items have no labels
    prompt_set: dict = field(default_factory=dict)
    embeddings: np.ndarray | None = None  # (N, E) image embeddings (the linear probes' input)

    def scores(self, kind: str) -> np.ndarray:
        if kind not in SCORES:
            raise ValueError(f"score {kind!r} is not one of {SCORES}")
        return getattr(self, kind)

    def records(self) -> list[dict]:
        """One JSON-ready record a volume: ``{"id", "findings": {name: {probability, similarity, ...}}}``."""
        out = []
        for i, item_id in enumerate(self.ids):
            rec = {
                "id": item_id,
                "findings": {
                    n: {
                        "probability": float(self.probability[i, k]),
                        "similarity": float(self.similarity[i, k]),
                        "similarity_negative": float(self.similarity_negative[i, k]),
                    }
                    for k, n in enumerate(self.names)
                },
            }
            if self.labels is not None:
                rec["labels"] = {n: int(self.labels[i, k]) for k, n in enumerate(self.names)}
            out.append(rec)
        return out


def manifest_labels(
    manifest: Mapping, items: Sequence[Mapping], prompt_set: PromptSet, where: str = "manifest"
) -> np.ndarray | None:
    """``(N, K)`` 0/1 ground truth of the items, or ``None`` when no item carries ``labels``.

    A manifest naming its label vocabulary (``label_names``, as CT-RATE's) must contain every
    finding's labels: a finding it does not know is refused rather than scored as always negative.
    """
    vocab = manifest.get("label_names")
    if vocab:
        known = {str(v).lower() for v in vocab}
        missing = [
            f.name for f in prompt_set.findings if not any(lab.lower() in known for lab in (f.labels or (f.name,)))
        ]
        if missing:
            raise PromptSetError(
                f"{where}: finding(s) {missing} of prompt set {prompt_set.name!r} are not among the "
                f"manifest's label_names {list(vocab)}"
            )
    if not any(isinstance(it.get("labels"), list) for it in items):
        return None
    bad = [it["id"] for it in items if not isinstance(it.get("labels"), list)]
    if bad:
        raise PromptSetError(f"{where}: {len(bad)} item(s) have no 'labels' list, e.g. {bad[:3]}")
    return np.asarray([[int(f.is_positive(it["labels"])) for f in prompt_set.findings] for it in items], np.int64)


def classify_split(
    model,
    tokenizer,
    manifest: str | Path,
    prompt_set: PromptSet,
    *,
    max_items: int | None = None,
    batch_size: int = 8,
    slice_features: str = "",
    device=None,
) -> ZeroShotResult:
    """Score every item of a prepared split (``<prepared>/<split>.json``).

    ``slice_features``: the item field holding HSENet stage 2's ``(32, C)`` slice-feature ``.npy``.
    """
    import torch

    manifest = Path(manifest)
    man = load_manifest(manifest)
    items = man["items"][:max_items] if max_items else list(man["items"])
    if not items:
        raise PromptSetError(f"{manifest}: no items to classify")
    labels = manifest_labels(man, items, prompt_set, str(manifest))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    pos, neg = encode_prompts(model, tokenizer, prompt_set, device=device)
    size = _image_size(model)
    root = manifest_dir(manifest)
    embs = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            x = torch.from_numpy(np.stack([np.asarray(load_image(manifest, it), np.float32) for it in chunk]))
            if size:
                x = _fit(x, size)
            extra = {}
            if slice_features:
                missing = [it["id"] for it in chunk if slice_features not in it]
                if missing:
                    raise PromptSetError(
                        f"{manifest}: slice_features field {slice_features!r} missing in {missing[:3]}"
                    )
                feats = [np.load(root / it[slice_features], allow_pickle=False).astype(np.float32) for it in chunk]
                extra["slice_features"] = torch.from_numpy(np.stack(feats)).to(device)
            embs.append(model.encode_image(x.to(device), **extra).float().cpu().numpy())
    emb = np.concatenate(embs)
    s = zero_shot_scores(emb, pos, neg, model_scale(model))
    return ZeroShotResult(
        [it["id"] for it in items],
        prompt_set.names,
        s["probability"],
        s["similarity"],
        s["similarity_negative"],
        labels,
        prompt_set.to_dict(),
        emb,
    )


def evaluate_zero_shot(
    test: ZeroShotResult,
    validation: ZeroShotResult | None = None,
    score: str = "probability",
    criterion: str = "f1",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics of a labelled split: thresholds from ``validation`` (else 0.5 on probabilities, as
    CT-CLIP / DCFormer round at 0.5; a similarity score needs a validation split), then
    :func:`~LaMed.metrics.classification.multilabel_report` and bootstrap CIs."""

    if test.labels is None:
        raise PromptSetError("evaluate_zero_shot: the test split has no labels")
    if validation is not None:
        if validation.labels is None:
            raise PromptSetError("evaluate_zero_shot: the validation split has no labels to choose thresholds on")
        if validation.names != test.names:
            raise PromptSetError(f"validation findings {validation.names} differ from the test's {test.names}")
        thr = select_thresholds(validation.labels, validation.scores(score), criterion)
        source = f"validation ({criterion})"
    elif score == "probability":
        thr, source = np.full(len(test.names), 0.5), "fixed 0.5"
    else:
        raise PromptSetError("a similarity score has no natural threshold: give a validation split")
    s = test.scores(score)
    rep = multilabel_report(test.labels, s, thr, test.names)
    rep["ci95"] = bootstrap_ci(test.labels, s, thr, test.names, n_boot=n_boot, seed=seed) if n_boot else {}
    rep["settings"] = {
        "score": score,
        "thresholds": source,
        "n_boot": n_boot,
        "seed": seed,
        "cases": len(test.ids),
        "prompt_style": test.prompt_set.get("style"),
    }
    return rep


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"ct_rate"`` / ``"ct_rate:merlin"`` / ``"my_set.yaml:ct_clip_present"`` -> ``(set, style or None)``."""
    head, sep, tail = str(spec).rpartition(":")
    if sep and head and tail in load_styles():
        return head, tail
    return str(spec), None


def classify_from_spec(model, tokenizer, image, spec: str, device=None) -> dict:
    """``lamed predict --classify SPEC``: per-finding scores of one volume, with the prompt set used.

    Returns ``{"prompt_set", "style", "findings": {name: {"probability", "similarity", "similarity_negative"}}}``.
    """
    return EncodedPromptSet.from_spec(model, tokenizer, spec, device).score(embed_volume(model, image, device=device))
