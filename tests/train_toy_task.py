"""A toy training task for the tests of the training system (not part of the library).

Task ``train_toy_task:toy_organs``: a tiny 3D conv net predicts which structures are present in a
prepared phantom volume (multi-label over the manifest's ``labels``, one logit a structure). Its
output has ``loss`` and two named parts, ``loss_bce`` and ``loss_reg``, so that multi-part logging
is exercised. With ``dump_rank_summary: true`` every process writes ``rank<r>_summary.json`` at
the end of training (its logged losses and a fingerprint of its parameters), so that multi-process
tests can check that the processes agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, TrainerCallback  # noqa: E402

from LaMed.train.datasets import PreparedDataset  # LaMed first: it installs the torchvision CPU shim
from LaMed.train.tasks import TaskBundle, register_task

# Structures whose presence varies between phantoms (organs removed by surgery, ribs cropped).
TOY_LABELS = ("spleen", "gallbladder", "kidney_left", "kidney_right")


class ToyOrgansConfig(PretrainedConfig):
    model_type = "lamed_toy_organs"

    def __init__(
        self,
        channels: int = 4,
        hidden: int = 16,
        num_labels_out: int = 4,
        reg_weight: float = 1e-3,
        label_names: list[str] | None = None,
        **kwargs,
    ):
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
    # forward() takes **kwargs but its loss is a plain batch mean: without this the Trainer would
    # pass num_items_in_batch and multiply the loss by the number of processes (see docs/training.md).
    accepts_loss_kwargs = False

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
    dump_rank_summary: bool = False


def parameter_fingerprint(model) -> dict:
    """float64 sum of all parameters and a hash of their bytes (gathers ZeRO-3 shards first)."""
    import contextlib
    import hashlib

    params = [p for _, p in sorted(model.named_parameters())]
    ctx = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with ctx:
        digest = hashlib.sha256()
        total = 0.0
        for p in params:
            t = p.detach().float().cpu().contiguous()
            digest.update(t.numpy().tobytes())
            total += float(t.double().sum())
        numel = int(sum(p.numel() for p in params))
    return {"sum": total, "sha256": digest.hexdigest(), "numel": numel}


class RankSummary(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        summary = {
            "rank": args.process_index,
            "world_size": args.world_size,
            "losses": [h["loss"] for h in state.log_history if "loss" in h],
            "params": parameter_fingerprint(model),
        }
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{args.process_index}_summary.json").write_text(json.dumps(summary), encoding="utf-8")


@dataclass
class ToyDataArguments:
    train_manifest: str = field(default="", metadata={"help": "prepared train.json"})
    eval_manifest: str = field(default="", metadata={"help": "prepared validation.json (optional)"})
    structure_names: list[str] = field(default_factory=lambda: list(TOY_LABELS))


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
    # predictions hold every non-"loss" output in order: (logits, loss_bce, loss_reg)
    preds, labels = eval_pred.predictions, eval_pred.label_ids
    logits = preds[0] if isinstance(preds, tuple) else preds
    return {"label_accuracy": float(((logits > 0) == (labels > 0.5)).mean())}


@register_task("toy_organs", model_args=ToyModelArguments, data_args=ToyDataArguments)
def build_toy(model_args: ToyModelArguments, data_args: ToyDataArguments, training_args) -> TaskBundle:
    """Toy multi-label organ-presence classifier (tests only)."""
    if not data_args.train_manifest:
        raise ValueError("data.train_manifest: required")
    labels = list(data_args.structure_names)
    config = ToyOrgansConfig(
        channels=model_args.channels,
        hidden=model_args.hidden,
        num_labels_out=len(labels),
        reg_weight=model_args.reg_weight,
        label_names=labels,
    )
    model = ToyOrgansModel(config)
    train = ToyOrgansDataset(data_args.train_manifest, labels)
    val = ToyOrgansDataset(data_args.eval_manifest, labels) if data_args.eval_manifest else None
    return TaskBundle(
        model=model,
        train_dataset=train,
        eval_dataset=val,
        data_collator=collate,
        compute_metrics=accuracy,
        base_checkpoints={"": "random init (toy)"},
        callbacks=[RankSummary()] if model_args.dump_rank_summary else (),
    )


def make_phantom_data(out: Path, n: int = 12, shape=(16, 32, 32)) -> Path:
    """Prepared phantoms (the project's synthetic default) for the training tests; returns ``out``."""
    from LaMed.data.prepare import prepare_phantoms

    prepare_phantoms(out, n=n, shape=shape, seed=0, val_fraction=0.17, test_fraction=0.0, progress=False)
    return Path(out)
