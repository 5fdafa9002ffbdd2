"""A toy training task for the tests of the training system (not part of the library).

Task ``train_toy_task:toy_organs``: a tiny 3D conv net predicts which structures are present in a
prepared volume (multi-label, one logit a label name). Its output has ``loss`` and two named parts,
``loss_bce`` and ``loss_reg``, so that multi-part logging is exercised. ``write_toy_prepared``
writes a small data set in the prepared format (contract 3) when the phantom generator is not
wanted: each structure present is a bright box at its own place, so the labels are learnable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np
import torch
from torch import nn

from LaMed.train.datasets import PreparedDataset  # LaMed first: it installs the torchvision CPU shim
from LaMed.train.tasks import TaskBundle, register_task
from transformers import PretrainedConfig, PreTrainedModel  # noqa: E402

TOY_LABELS = ("liver", "spleen", "kidney_left", "kidney_right")


class ToyOrgansConfig(PretrainedConfig):
    model_type = "lamed_toy_organs"

    def __init__(self, channels: int = 4, hidden: int = 16, num_labels_out: int = 4, reg_weight: float = 1e-3,
                 label_names: List[str] | None = None, **kwargs):
        self.channels = channels
        self.hidden = hidden
        self.num_labels_out = num_labels_out
        self.reg_weight = reg_weight
        self.label_names_out = list(label_names or TOY_LABELS[:num_labels_out])
        # DeepSpeed "auto" bucket sizes read config.hidden_size.
        self.hidden_size = hidden
        super().__init__(**kwargs)


class ToyOrgansModel(PreTrainedModel):
    """(B, 1, D, H, W) -> logits (B, L); loss = BCE + reg_weight * mean(logits**2)."""

    config_class = ToyOrgansConfig
    main_input_name = "image"

    def __init__(self, config: ToyOrgansConfig):
        super().__init__(config)
        self.stem = nn.Conv3d(1, config.channels, kernel_size=3, stride=2, padding=1)
        self.body = nn.Conv3d(config.channels, config.hidden, kernel_size=3, stride=2, padding=1)
        self.head = nn.Linear(config.hidden, config.num_labels_out)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            nn.init.normal_(module.weight, std=0.1)
            nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        x = torch.nn.functional.gelu(self.stem(image))
        x = torch.nn.functional.gelu(self.body(x))
        logits = self.head(x.mean(dim=(2, 3, 4)))
        out = {"logits": logits}
        if labels is not None:
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
            reg = self.config.reg_weight * logits.pow(2).mean()
            out.update(loss=bce + reg, loss_bce=bce, loss_reg=reg)
        return out


@dataclass
class ToyModelArguments:
    channels: int = 4
    hidden: int = 16
    reg_weight: float = 1e-3


@dataclass
class ToyDataArguments:
    train_manifest: str = field(default="", metadata={"help": "prepared train.json"})
    eval_manifest: str = field(default="", metadata={"help": "prepared validation.json (optional)"})
    structure_names: List[str] = field(default_factory=lambda: list(TOY_LABELS))


class ToyOrgansDataset(PreparedDataset):
    def __init__(self, manifest_path, label_names):
        super().__init__(manifest_path, fields=("image", "labels"), require=("labels",))
        self.label_names = list(label_names)

    def build_item(self, item):
        present = set(item.get("labels", []))
        target = torch.tensor([1.0 if n in present else 0.0 for n in self.label_names])
        return {"image": item["image"], "labels": target}


def collate(items):
    return {"image": torch.stack([it["image"] for it in items]), "labels": torch.stack([it["labels"] for it in items])}


def accuracy(eval_pred):
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    return {"label_accuracy": float(((logits > 0) == (labels > 0.5)).mean())}


@register_task("toy_organs", model_args=ToyModelArguments, data_args=ToyDataArguments)
def build_toy(model_args: ToyModelArguments, data_args: ToyDataArguments, training_args) -> TaskBundle:
    """Toy multi-label organ-presence classifier (tests only)."""
    if not data_args.train_manifest:
        raise ValueError("data.train_manifest: required")
    labels = list(data_args.structure_names)
    config = ToyOrgansConfig(channels=model_args.channels, hidden=model_args.hidden, num_labels_out=len(labels),
                             reg_weight=model_args.reg_weight, label_names=labels)
    model = ToyOrgansModel(config)
    train = ToyOrgansDataset(data_args.train_manifest, labels)
    val = ToyOrgansDataset(data_args.eval_manifest, labels) if data_args.eval_manifest else None
    return TaskBundle(model=model, train_dataset=train, eval_dataset=val, data_collator=collate,
                      compute_metrics=accuracy, base_checkpoints={"": "random init (toy)"})


def write_toy_prepared(out: Path, n: int = 16, shape=(8, 16, 16), seed: int = 0, split: str = "train") -> Path:
    """Write ``n`` toy volumes in the prepared format; return the manifest path ``out/<split>.json``."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    d, h, w = shape
    # Each structure gets its own octant-like box.
    boxes = {"liver": (0, 0, 0), "spleen": (0, 0, 1), "kidney_left": (1, 1, 0), "kidney_right": (1, 1, 1)}
    items = []
    for i in range(n):
        vol = rng.uniform(0.0, 0.2, size=shape).astype(np.float32)
        present = [name for name in TOY_LABELS if rng.random() < 0.5]
        for name in present:
            a, b, c = boxes[name]
            vol[a * d // 2:(a + 1) * d // 2, b * h // 2:(b + 1) * h // 2, c * w // 2:(c + 1) * w // 2] += 0.7
        vol = np.clip(vol, 0, 1).astype(np.float16)[None]
        rel = f"images/{split}_{i:05d}.npy"
        np.save(out / rel, vol)
        items.append({"id": f"{split}_{i:05d}", "image": rel, "spacing": [1.0, 1.0, 1.0], "labels": present,
                      "text": ", ".join(present) or "no structure"})
    manifest = {"format": "lamed.prepared/1", "dataset": "toy", "split": split, "preset": "none", "items": items}
    path = out / f"{split}.json"
    path.write_text(json.dumps(manifest))
    return path
