"""The demo's PNG figures (matplotlib, Agg backend): training curves, retrieval matrix, mask overlays.

Every function takes plain arrays / dicts and a path, writes one PNG and returns its path; none
needs a display. Masks are drawn as contours (truth solid, prediction dashed) so both stay
visible on top of each other and of the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from LaMed.data.prepared import load_image, load_manifest, load_masks
from LaMed.demo.scoring import dice
from LaMed.utils.atomic import atomic_path

# Colour per structure (tab10 order), fixed so that every figure uses the same legend.
COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:cyan", "tab:olive", "tab:pink")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> Path:

    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    _plt().close(fig)
    return path


def training_curves(logs: Mapping[str, Sequence[Mapping]], path: Path) -> Path:
    """One panel per training: ``loss`` (and its logged parts ``loss_*``) against the optimizer step.

    ``logs``: title -> the Trainer's ``state.log_history``.
    """
    plt = _plt()
    logs = {k: v for k, v in logs.items() if any("loss" in h for h in v)}
    n = max(len(logs), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
    for ax, (title, history) in zip(axes[0], logs.items()):
        rows = [h for h in history if "loss" in h and "step" in h]
        keys = ["loss"] + sorted({k for h in rows for k in h if k.startswith("loss_")})
        for key in keys:
            pts = [(h["step"], h[key]) for h in rows if key in h]
            if pts:
                x, y = zip(*pts)
                ax.plot(
                    x,
                    y,
                    marker="o" if len(x) < 8 else None,
                    lw=2 if key == "loss" else 1.2,
                    label="total" if key == "loss" else key[5:],
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle("Training curves (Trainer log history)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def retrieval_matrix(text: np.ndarray, image: np.ndarray, path: Path, title: str = "", max_items: int = 40) -> Path:
    """Cosine similarity of every test report (rows) with every test volume (columns).

    The true pairs lie on the diagonal (outlined); a dot marks each report's top-ranked volume, so
    a dot on the diagonal is a correct report-to-volume retrieval at rank 1.
    """
    plt = _plt()
    t = np.asarray(text, np.float32)[:max_items]
    v = np.asarray(image, np.float32)[:max_items]
    t = t / np.linalg.norm(t, axis=1, keepdims=True).clip(1e-8)
    v = v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-8)
    sim = t @ v.T
    n = sim.shape[0]
    size = min(2.5 + 0.22 * n, 9)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(sim, cmap="viridis", interpolation="nearest")
    best = sim.argmax(1)
    ax.scatter(best, np.arange(n), s=18 if n > 20 else 40, c="red", marker="o", label="top-ranked volume")
    for i in range(n):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=1.0))
    ax.set_xlabel("test volume")
    ax.set_ylabel("test report")
    ax.set_title(title or "Report-to-volume similarity (true pairs on the diagonal)", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    return _save(fig, path)


def _window(img: np.ndarray) -> tuple[float, float]:
    if float(img.min()) < -200:  # CT in HU: the abdominal soft-tissue window (W400 / L40)
        return -160.0, 240.0
    lo, hi = np.percentile(img, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def mask_panels(cases: Sequence[Mapping], path: Path, title: str = "") -> Path:
    """Axial slices with true (solid) and predicted (dashed) mask contours.

    ``cases``: dicts with ``image`` (D, H, W), ``truth`` and ``pred`` ({structure: (D, H, W) bool}),
    ``label`` (panel title) and optionally ``slice`` (index; default: the slice with the most
    true foreground). Per-structure Dice goes in the panel title when given as ``dice``.
    """
    plt = _plt()
    from matplotlib.lines import Line2D

    names: list[str] = []
    for c in cases:
        names += [n for n in c["truth"] if n not in names]
    colour = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4.8), squeeze=False)
    for ax, c in zip(axes[0], cases):
        img = np.asarray(c["image"], np.float32)
        k = c.get("slice")
        if k is None:
            fg = sum(np.asarray(m, bool).reshape(img.shape[0], -1).sum(1) for m in c["truth"].values())
            k = int(np.argmax(fg)) if np.any(fg) else img.shape[0] // 2
        lo, hi = _window(img[k])
        ax.imshow(img[k], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        for name in c["truth"]:
            for masks, style in ((c["truth"], "solid"), (c.get("pred", {}), "dashed")):
                m = np.asarray(masks.get(name, np.zeros_like(img, bool)), bool)[k]
                if m.any():
                    ax.contour(m.astype(float), levels=[0.5], colors=[colour[name]], linestyles=style, linewidths=1.6)
        text = c.get("label", "")
        if c.get("dice"):
            text += "\n" + ", ".join(f"{n} {d:.2f}" for n, d in c["dice"].items())
        ax.set_title(f"{text}\n(axial slice {k})", fontsize=9)
        ax.axis("off")
    handles = [Line2D([], [], color=colour[n], lw=2, label=n) for n in names]
    handles += [
        Line2D([], [], color="k", lw=1.5, ls="solid", label="truth"),
        Line2D([], [], color="k", lw=1.5, ls="dashed", label="prediction"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95 if title else 1))
    return _save(fig, path)


def seg_cases(
    prepared: Path, predictions: Path, classes: Sequence[str], n: int = 3, threshold: float = 0.5
) -> list[dict]:
    """The first ``n`` test items as :func:`mask_panels` cases, from Bench ``run_seg``'s saved
    probabilities (``<id>_<structure>.npy`` on the prepared grid)."""

    manifest = Path(prepared) / "test.json"
    out = []
    for item in load_manifest(manifest)["items"]:
        names = [
            c
            for c in classes
            if c in (item.get("masks") or {}) and (Path(predictions) / f"{item['id']}_{c}.npy").is_file()
        ]
        if not names:
            continue
        image = np.asarray(load_image(manifest, item), np.float32)[0]
        truth = {k: np.asarray(v[0], bool) for k, v in load_masks(manifest, item, names).items()}
        pred = {c: np.load(Path(predictions) / f"{item['id']}_{c}.npy").astype(np.float32) > threshold for c in names}
        out.append(
            {
                "image": image,
                "truth": truth,
                "pred": pred,
                "label": item["id"],
                "dice": {c: dice(pred[c], truth[c]) for c in names},
            }
        )
        if len(out) == n:
            break
    return out
