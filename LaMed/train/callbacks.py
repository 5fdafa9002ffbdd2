"""Trainer callbacks shared by every task: throughput / data-wait measurement and crash-test hooks."""

from __future__ import annotations

import time

from transformers import TrainerCallback

from LaMed.train.checkpoint import maybe_inject_fault


class ThroughputCallback(TrainerCallback):
    """Measure how long the optimizer steps wait for data, and log it.

    ``LaMedTrainer.get_batch_samples`` (where the Trainer pulls a step's batches from the
    DataLoader) reports its duration through :meth:`add_wait`; the wall time is measured between
    consecutive ``on_step_end`` events (so it includes logging, evaluation and checkpoint saves).
    ``LaMedTrainer.log`` adds ``data_wait_fraction`` (wait / wall since the last log) and
    ``steps_per_second_window`` to every training log; run totals are kept in ``self.totals``,
    without the first step (DataLoader worker start-up, first-call overheads).
    """

    def __init__(self):
        self._last_end = None
        self._wait = self._wall = 0.0
        self._steps = 0
        self._pending_wait = 0.0
        self._first_step_done = False
        self.totals = {"wait_s": 0.0, "wall_s": 0.0, "steps": 0}

    def add_wait(self, seconds: float) -> None:
        self._wait += seconds
        self._pending_wait = seconds

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last_end is not None:
            self._wall += now - self._last_end
            self._steps += 1
            if self._first_step_done:
                self.totals["wall_s"] += now - self._last_end
                self.totals["wait_s"] += self._pending_wait
                self.totals["steps"] += 1
            self._first_step_done = True
        self._pending_wait = 0.0
        self._last_end = now

    def pop_window(self) -> dict:
        """Figures since the last call (``LaMedTrainer.log`` adds them to each training log)."""
        if self._wall <= 0:
            return {}
        out = {
            "data_wait_fraction": round(self._wait / self._wall, 4),
            "steps_per_second_window": round(self._steps / self._wall, 3),
        }
        self._wait = self._wall = 0.0
        self._steps = 0
        return out


class FaultInjectionCallback(TrainerCallback):
    """Test hook: ``LAMED_FAULT_INJECT=kill_after_step:N`` SIGKILLs the process after step N."""

    def on_step_end(self, args, state, control, **kwargs):
        maybe_inject_fault("kill_after_step", state.global_step)


class DatasetEpochCallback(TrainerCallback):
    """Tell the training dataset which epoch begins, also when a run resumes mid-epoch.

    Datasets whose per-item randomness is a pure function of ``(seed, epoch, index)`` (the
    segmentation datasets draw their box / point prompts so) expose ``set_epoch``. The Trainer
    forwards the epoch through accelerate's ``DataLoaderShard.set_epoch``, but after a resume the
    loader that skips the already-seen batches wraps its batch sampler, and accelerate then only
    reaches the sampler, not the dataset: the rest of the interrupted epoch was drawn as epoch 0 and
    the resumed weights differed from an uninterrupted run. Setting it here, before each epoch,
    makes both runs draw the same prompts.
    """

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        dataset = getattr(train_dataloader, "dataset", None)
        if dataset is not None and hasattr(dataset, "set_epoch"):
            # state.epoch is the float progress (e.g. 1.4 after a resume mid-epoch 1); the small
            # margin guards against 1.9999999 at an epoch boundary.
            dataset.set_epoch(int(state.epoch + 1e-6) if state.epoch else 0)
