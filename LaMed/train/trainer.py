"""``LaMedTrainer``: the stock HF Trainer plus only what it lacks for LaMed's models.

- multi-part losses: a model output with ``loss`` and named parts ``loss_<name>`` (e.g.
  ``loss_itc``, ``loss_dice``) gets each part averaged over the logging window (and over
  processes) and logged next to ``loss``;
- ``save_trainable_only``: checkpoints and the final model hold only the trainable parameters
  plus a JSON manifest of the frozen base checkpoints (``LaMed.train.checkpoint.save_trainable``);
- checkpoints that are complete or ignored (a marker written last, rotation after it), see
  ``LaMed.train.checkpoint``;
- bad samples skipped and counted (``LaMed.train.data``);
- :meth:`gather_with_grad` for contrastive losses over every process's batch;
- ``lr_multipliers``: parameter groups trained at a multiple of the learning rate.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from LaMed.train import checkpoint as ckpt
from LaMed.train.callbacks import DatasetEpochCallback, ThroughputCallback
from LaMed.train.data import BAD_KEY, COUNT_KEY, BadSampleTracker, has_model_inputs
from LaMed.train.distributed import gather_with_grad as _gather_with_grad
from LaMed.train.stages import param_matches

logger = logging.getLogger("LaMed.train")

LOSS_PART_PREFIX = "loss_"


class LaMedTrainer(Trainer):
    """HF ``Trainer`` with LaMed's additions (see the module docstring).

    Extra keyword arguments:
        base_checkpoints: ``{module prefix: path or hub id}`` of the frozen parts, written in the
            manifest of ``save_trainable_only`` checkpoints.
        extra_manifest: more JSON-able facts for that manifest (e.g. the resolved recipe).
    """

    def __init__(
        self,
        *args,
        base_checkpoints: dict[str, str] | None = None,
        extra_manifest: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.base_checkpoints = dict(base_checkpoints or {})
        self.extra_manifest = dict(extra_manifest or {})
        self._loss_parts: dict[str, list] = {}  # name -> [sum, count] over the current logging window
        self._last_good_inputs = None
        self._trackers: dict[str, BadSampleTracker] = {}
        if not any(isinstance(cb, ThroughputCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(ThroughputCallback())
        if not any(isinstance(cb, DatasetEpochCallback) for cb in self.callback_handler.callbacks):
            self.add_callback(DatasetEpochCallback())
        self.throughput = next(cb for cb in self.callback_handler.callbacks if isinstance(cb, ThroughputCallback))

    gather_with_grad = staticmethod(_gather_with_grad)

    # ---- per-parameter learning rates --------------------------------------------------------
    def create_optimizer(self, model=None):
        """The stock optimizer, its groups split by ``args.lr_multipliers`` (see :func:`split_lr_groups`)."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        multipliers = getattr(self.args, "lr_multipliers", None)
        if fresh and multipliers:
            opt_model = self.model if model is None else model
            factors = split_lr_groups(optimizer, dict(opt_model.named_parameters()), multipliers)
            logger.info("learning-rate multipliers: %s", factors)
        return optimizer

    # ---- bad samples ------------------------------------------------------------------------
    def _tracker(self, split: str) -> BadSampleTracker:
        if split not in self._trackers:
            dataset = self.train_dataset if split == "train" else self.eval_dataset
            size = len(dataset) if hasattr(dataset, "__len__") else 0
            self._trackers[split] = BadSampleTracker(
                split,
                size,
                self.args.max_bad_sample_fraction if hasattr(self.args, "max_bad_sample_fraction") else 0.01,
                world_size=self.args.world_size,
                rank=self.args.process_index,
            )
        return self._trackers[split]

    def _prepare_inputs(self, inputs):
        if isinstance(inputs, dict) and BAD_KEY in inputs:
            inputs = dict(inputs)
            bad, count = inputs.pop(BAD_KEY), inputs.pop(COUNT_KEY, 0)
            self._tracker("train" if self.model.training else "eval").update(bad, count)
        return super()._prepare_inputs(inputs)

    @property
    def bad_samples(self) -> dict[str, BadSampleTracker]:
        """Per split (``train`` / ``eval``) tracker of the bad samples seen by this process."""
        return dict(self._trackers)

    def write_bad_sample_reports(self, output_dir: str | None = None) -> None:
        out = Path(output_dir or self.args.output_dir)
        for split, tracker in self._trackers.items():
            tracker.write_report(out / f"bad_samples_{split}_rank{self.args.process_index}.json")

    def training_step(self, model, inputs, num_items_in_batch=None):
        if isinstance(inputs, dict) and not has_model_inputs(inputs):
            # Every sample of this micro-batch was bad. Other processes are running a normal step,
            # so this one must take part in the same gradient collectives: run the last good batch
            # again with its loss multiplied by zero (a zero gradient, nothing learned from it).
            model.train()
            self._prepare_inputs(inputs)  # counts the bad samples
            if self._last_good_inputs is None:
                if self.args.world_size > 1:
                    raise RuntimeError(
                        f"process {self.args.process_index}: the first training batch holds only bad samples, "
                        "so there is nothing to keep the processes in step with; see the bad-sample warnings"
                    )
                return torch.zeros((), device=self.args.device)
            with self.compute_loss_context_manager():
                again = self._prepare_inputs(dict(self._last_good_inputs))
                loss = self.compute_loss(model, again, _record_parts=False) * 0.0
            self.accelerator.backward(loss)
            return loss.detach()
        if isinstance(inputs, dict):
            # Keep a reference (not a copy) for the all-bad case above.
            self._last_good_inputs = {k: v for k, v in inputs.items() if k not in (BAD_KEY, COUNT_KEY)}
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if isinstance(inputs, dict) and not has_model_inputs(inputs):
            self._prepare_inputs(inputs)
            return None, None, None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        start = time.perf_counter()
        out = super().get_batch_samples(epoch_iterator, num_batches, device)
        self.throughput.add_wait(time.perf_counter() - start)
        return out

    # ---- multi-part losses --------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, _record_parts=True):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if _record_parts and model.training and isinstance(outputs, dict):
            for name, value in outputs.items():
                if name.startswith(LOSS_PART_PREFIX) and torch.is_tensor(value) and value.numel() == 1:
                    acc = self._loss_parts.setdefault(name, [0.0, 0])
                    acc[0] += float(value.detach().float())
                    acc[1] += 1
        return (loss, outputs) if return_outputs else loss

    def _pop_loss_parts(self) -> dict[str, float]:
        local = {k: (s, n) for k, (s, n) in self._loss_parts.items()}
        self._loss_parts = {}
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            # Parts may differ between processes (a Dice part only where a mask was present), so
            # gather the dicts rather than all-reducing fixed tensors.
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        total: dict[str, list] = {}
        for part in gathered:
            for k, (s, n) in part.items():
                acc = total.setdefault(k, [0.0, 0])
                acc[0] += s
                acc[1] += n
        return {k: s / n for k, (s, n) in sorted(total.items()) if n}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log (eval logs carry eval_loss, the final one train_loss)
            logs.update(self._pop_loss_parts())
            logs.update(self.throughput.pop_window())
            for split, tracker in self._trackers.items():
                if tracker.bad:
                    logs[f"bad_samples_{split}"] = len(tracker.bad)
        elif "train_runtime" in logs and self.throughput.totals["wall_s"] > 0:  # the end-of-training summary
            t = self.throughput.totals
            logs["train_data_wait_fraction"] = round(t["wait_s"] / t["wall_s"], 4)
            # step-to-step rate, without the set-up before the first step
            logs["train_steady_steps_per_second"] = round(t["steps"] / t["wall_s"], 4)
        super().log(logs, start_time)

    # ---- saving -------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not getattr(self.args, "save_trainable_only", False):
            return super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        ckpt.save_trainable(
            model, output_dir, state_dict=state_dict, base_checkpoints=self.base_checkpoints, extra=self.extra_manifest
        )
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "save_pretrained"):
            config.save_pretrained(output_dir)  # what the frozen base is rebuilt from
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if (Path(resume_from_checkpoint) / ckpt.TRAINABLE_WEIGHTS).is_file():
            target = self.accelerator.unwrap_model(model if model is not None else self.model)
            ckpt.load_trainable(target, resume_from_checkpoint)
            return
        return super()._load_from_checkpoint(resume_from_checkpoint, model=model)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # The weights of this checkpoint are on disk, the rest is not: the worst moment to crash.
        ckpt.maybe_inject_fault("kill_in_save", self.state.global_step)
        super()._save_optimizer_and_scheduler(output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        """Stock save, then (once every process is done) the completion marker, then rotation."""
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only after the new checkpoint is marked complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            ckpt.mark_complete(folder, self.state.global_step, world_size=self.args.world_size)
            keep = [self.state.best_model_checkpoint] if self.state.best_model_checkpoint else []
            ckpt.rotate_checkpoints(self._get_output_dir(trial=trial), limit, keep=keep)
        self.accelerator.wait_for_everyone()


def split_lr_groups(
    optimizer: torch.optim.Optimizer, named: Mapping[str, torch.nn.Parameter], multipliers: Mapping[str, float]
) -> dict[str, int]:
    """Split ``optimizer``'s parameter groups so parameters matching a glob train at ``factor x lr``.

    ``multipliers`` maps ``fnmatch`` globs over parameter names (matching the name or a module
    above it, as in the stage switches) to factors; the first matching glob wins, the rest keep
    factor 1. Each group keeps its other settings (weight decay); its ``lr`` is multiplied, so the
    scheduler (created afterwards from the groups' ``lr``) scales every group alike. Must run
    before the optimizer has state. Returns ``{glob: number of parameters}``; a glob matching no
    trainable parameter raises ``ValueError`` (a typo must not silently train at the base rate).
    """
    by_id = {id(p): n for n, p in named.items()}
    counts = {pattern: 0 for pattern in multipliers}
    base: list[dict[str, Any]] = []  # first, so that the logged learning rate is the base one
    scaled: list[dict[str, Any]] = []
    for group in optimizer.param_groups:
        parts: dict[str | None, list[torch.nn.Parameter]] = {}
        for p in group["params"]:
            name = by_id.get(id(p), "")
            pattern = next((g for g in multipliers if param_matches(name, g)), None)
            parts.setdefault(pattern, []).append(p)
            if pattern is not None:
                counts[pattern] += 1
        for pattern, params in parts.items():
            factor = 1.0 if pattern is None else float(multipliers[pattern])
            (base if pattern is None else scaled).append({**group, "params": params, "lr": group["lr"] * factor})
    unused = [g for g, n in counts.items() if n == 0]
    if unused:
        raise ValueError(f"training.lr_multipliers: {unused} match no trainable parameter")
    optimizer.param_groups.clear()
    for group in base + scaled:
        optimizer.add_param_group(group)
    return counts
