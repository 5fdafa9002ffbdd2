"""Bad-sample tolerance: skip, count and report unreadable samples instead of crashing or resampling.

``SkipBadSamples(dataset)`` turns an exception raised while loading item ``i`` into a
:class:`BadSample` marker (index, path, error); ``SkipBadCollator(collate)`` drops the markers from
the batch, collates the good items and attaches the markers under :data:`BAD_KEY`. The Trainer
pops them before the forward pass and hands them to a :class:`BadSampleTracker`, which logs each
bad file once with its path and stops the run with :class:`TooManyBadSamples` once more than
``max_bad_sample_fraction`` of the dataset is bad. Because markers travel with the batch, this
works with any number of DataLoader worker processes. A bad sample is never replaced by another
one: the batch just gets smaller (an all-bad micro-batch contributes a zero gradient, see
``LaMedTrainer.training_step``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from LaMed.utils.atomic import write_json_atomic

logger = logging.getLogger("LaMed.train")

BAD_KEY = "_lamed_bad_samples"
COUNT_KEY = "_lamed_num_samples"


class SampleError(ValueError):
    """One sample cannot be used: ``path`` is the offending file, ``reason`` says why."""

    def __init__(self, path: Any, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class TooManyBadSamples(RuntimeError):
    """More than the allowed fraction of a dataset is unreadable or invalid."""


@dataclass(frozen=True)
class BadSample:
    """What is known about a sample that failed to load (picklable, crosses worker processes)."""

    index: int
    path: str
    error: str


class SkipBadSamples:
    """Wrap a map-style dataset so that a failing ``__getitem__`` yields a :class:`BadSample`.

    Any ``Exception`` counts as a bad sample (a corrupt file can surface as almost any error
    inside a decoder); a code bug that fails on every item is still caught quickly, by the
    bad-fraction limit, with the error text in the message. The path comes from
    ``dataset.sample_path(i)`` when the dataset has it (``PreparedDataset`` does), else from a
    :class:`SampleError`, else ``"index i"``.
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # expose the wrapped dataset's attributes
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _path(self, index: int, exc: Exception) -> str:
        if isinstance(exc, SampleError):
            return exc.path
        if hasattr(self.dataset, "sample_path"):
            try:
                return str(self.dataset.sample_path(index))
            except Exception:  # noqa: BLE001 - the report must not fail
                pass
        return f"index {index}"

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            reason = exc.reason if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"
            return BadSample(int(index), self._path(index, exc), reason)


class SkipBadCollator:
    """Collate the good items of a batch; attach the :class:`BadSample` markers and the item count.

    The wrapped collator must return a dict. A batch whose items are all bad is returned as
    ``{BAD_KEY: [...], COUNT_KEY: n}`` with no model inputs.
    """

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]] | None = None):
        if collate is None:
            from torch.utils.data import default_collate as collate
        self.collate = collate

    def __call__(self, features: Sequence[Any]) -> dict[str, Any]:
        bad = [f for f in features if isinstance(f, BadSample)]
        good = [f for f in features if not isinstance(f, BadSample)]
        batch: dict[str, Any] = {}
        if good:
            batch = self.collate(good)
            if not isinstance(batch, dict):
                raise TypeError(f"the task's data_collator must return a dict, got {type(batch).__name__}")
            batch = dict(batch)
        batch[BAD_KEY] = bad
        batch[COUNT_KEY] = len(features)
        return batch


def has_model_inputs(batch: dict[str, Any]) -> bool:
    """False for a batch that held only bad samples."""
    return any(k not in (BAD_KEY, COUNT_KEY) for k in batch)


class BadSampleTracker:
    """Counts distinct bad samples of one dataset on this process and enforces the limit.

    The limit is a fraction of the dataset size; with ``world_size`` processes each one sees
    ``1 / world_size`` of the data and stops once its own distinct bad count exceeds
    ``max_fraction * len(dataset) / world_size``. Counting distinct indices makes the check
    independent of the number of epochs.
    """

    def __init__(self, name: str, dataset_size: int, max_fraction: float, world_size: int = 1, rank: int = 0):
        self.name = name
        self.dataset_size = int(dataset_size)
        self.max_fraction = float(max_fraction)
        self.world_size = max(1, int(world_size))
        self.rank = rank
        self.allowed = self.max_fraction * self.dataset_size / self.world_size
        self.bad: dict[int, BadSample] = {}
        self.seen = 0
        self.skipped = 0  # including repeats of the same bad sample in later epochs

    def update(self, bad: Sequence[BadSample], num_samples: int) -> None:
        self.seen += int(num_samples)
        self.skipped += len(bad)
        for b in bad:
            if b.index not in self.bad:
                self.bad[b.index] = b
                logger.warning("skipped bad %s sample %d (%s): %s", self.name, b.index, b.path, b.error)
        if len(self.bad) > self.allowed:
            shown = "\n".join(f"  {b.path}: {b.error}" for b in list(self.bad.values())[:10])
            raise TooManyBadSamples(
                f"{len(self.bad)} bad {self.name} samples on process {self.rank} (of {self.dataset_size} in the "
                f"dataset, {self.world_size} process(es)) exceed max_bad_sample_fraction={self.max_fraction} "
                f"(at most {math.floor(self.allowed)} allowed per process). Fix or remove them, or raise "
                f"training.max_bad_sample_fraction. First bad samples:\n{shown}"
            )

    def write_report(self, path: Path) -> None:
        """Write ``{"dataset": ..., "bad": [{index, path, error}, ...]}`` (only when something was bad)."""
        if not self.bad:
            return

        write_json_atomic(
            path,
            {
                "dataset": self.name,
                "rank": self.rank,
                "dataset_size": self.dataset_size,
                "samples_seen": self.seen,
                "bad": [asdict(b) for b in sorted(self.bad.values(), key=lambda b: b.index)],
            },
        )
