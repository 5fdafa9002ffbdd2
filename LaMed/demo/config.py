"""What the demo runs: one typed config, two presets (the full demo and ``--quick`` for the test-suite).

Every part trains the tiny twin of a published recipe (``configs/recipes/tiny_*.yaml``) through
``LaMed.train`` with only the data paths, the output folder and the step count overridden, so the
demo exercises the same code path as a GPU run of the full recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

PARTS = ("clip", "mllm", "seg", "reasoning")


@dataclass
class DemoConfig:
    """Settings of one demo run.

    Attributes:
        n_phantoms / shape: the synthetic set (``prepare_phantoms``); shape (D, H, W) voxels.
        val_fraction / test_fraction: held-out splits; every score is measured on ``test``.
        clip_recipe / mllm_recipe / seg_recipe: tiny twins in ``configs/recipes`` (names or paths).
        clip_steps / mllm_steps / seg_steps: optimizer steps of each training (the recipes' own
            ``max_steps`` are replaced so that the whole demo fits its time budget).
        clip_batch_size: pairs per CLIP step (the recipe has 32): 64 in-batch negatives made the
            tiny CLIP's held-out R@1 0.20 instead of 0.07 (1140 phantoms, 500 steps), and the
            report model starts from its tower. Its first ~100 steps sit at the collapsed loss
            (ln 64), so it gets 800 steps (mean readout: held-out R@1 0.12 / 0.13 on the demo's phantoms, 0.03 /
            0.07 after 500).
        clip_vision_pooling: the CLIP's image readout (``LamedClipConfig.vision_pooling``; the recipe
            has ``mean``). ``flatten`` (the 64 grid tokens concatenated) lets the image embedding
            tell where something is: with ``mean`` a removed kidney or gallbladder was absent from
            the embedding (linear probes fitted on 2400 other phantoms: AUROC 0.40-0.54) and the
            zero-shot mean AUROC was 0.65-0.69; with ``flatten`` the same probes reach 0.98-1.00 and
            the zero-shot mean 0.79-0.81 (docs/inference.md, "The demo CLIP's image readout").
        mllm_tower_pooling: the readout of the CLIP whose vision tower the report model starts from.
            When it is not ``clip_vision_pooling``, a twin CLIP is trained with it (same recipe,
            phantoms, steps, seed; about 3 minutes). Started from the flatten-trained tower, the
            report model named findings no better than other volumes' reports do (findings F1 0.17
            against 0.19; 0.24 against 0.10 after 3000 steps); from the mean-trained one,
            0.36 against 0.14: that tower puts what it knows in every token, which the model reads
            token by token.
        clip_loader_workers: data-loader processes of the CLIP training (reading and tokenising 64
            pairs is ~40 % of a step in the training process; one worker overlaps it).
        seg_classes: structures the segmentation model is prompted with (training and test).
        seg_absent: prompts for structures absent from a phantom (``"missing"``: every class without a
            mask; ``"none"``: off), in training and in the test's detection scores.
        seg_presence_steps / seg_presence_recipe: the presence fine-tuning (stage 2, from the
            segmentation model; 0 = none), so that absent organs are reported absent.
        calibration_phantoms: a separate phantom set (seeds after the main set's) on which the
            presence rule is calibrated (Platt scaling) before the test split is scored.
        reason_recipe / reason_steps / reason_negative_repeat: the reasoning-segmentation model (stage 1,
            tiny R1Seg-3D; questions about removed organs repeated this many times per epoch).
        reason_absent_recipe / reason_absent_steps: its second stage (absent-organ probes and the
            presence gate, calibrated on the calibration phantoms; 0 = none).
        reason_classes: structures the reasoning model is asked about (training and test).
        real_steps: fine-tuning steps on the real labelled CT of ``--real-data``.
        real_structure: the structure fine-tuned and scored on the real CT.
        threads: torch CPU threads (1 avoids oversubscription on a shared machine; tiny models
            gain little from more).
        mrg_examples: generated reports shown next to the truth in ``report.md``.
        zero_shot_prompts / zero_shot_boot: the prompt set the CLIP is scored zero-shot with and the
            bootstrap draws of its AUROC intervals.
        zero_shot_probe_c: inverse regularisation of the linear probes fitted on the calibration
            phantoms' CLIP embeddings (shown next to the zero-shot AUROC).
        parts: which of :data:`PARTS` to run.
    """

    n_phantoms: int = 1200
    shape: tuple[int, int, int] = (32, 64, 64)
    val_fraction: float = 0.0
    test_fraction: float = 0.05
    seed: int = 0
    clip_recipe: str = "tiny_m3d_clip"
    mllm_recipe: str = "tiny_lamed"
    seg_recipe: str = "tiny_segvol"
    clip_steps: int = 800
    clip_batch_size: int = 64
    clip_vision_pooling: str = "flatten"
    mllm_tower_pooling: str = "mean"
    clip_loader_workers: int = 1
    mllm_steps: int = 1500
    seg_steps: int = 1000
    seg_classes: list[str] = field(default_factory=lambda: ["liver", "spleen", "kidney_left", "kidney_right"])
    seg_lr: float | None = 3e-3
    seg_absent: str = "missing"
    seg_presence_steps: int = 600
    seg_presence_recipe: str = "tiny_segvol_presence"
    calibration_phantoms: int = 150
    reason_recipe: str = "tiny_r1seg3d"
    reason_steps: int = 3000
    reason_negative_repeat: int = 4
    reason_absent_recipe: str = "tiny_r1seg3d_absent"
    reason_absent_steps: int = 6000
    reason_classes: list[str] = field(default_factory=lambda: ["liver", "spleen", "kidney_left", "kidney_right"])
    real_steps: int = 60
    real_structure: str = "liver"
    threads: int = 1
    mrg_examples: int = 3
    mrg_max_new_tokens: int = 240  # the longest phantom reports, impression included
    zero_shot_prompts: str = "phantom"
    zero_shot_boot: int = 1000
    zero_shot_probe_c: float = 10.0
    parts: list[str] = field(default_factory=lambda: list(PARTS))

    def replace(self, **changes) -> DemoConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FULL = DemoConfig()

# The reduced run of the test-suite: the same phantoms and the same CLIP and report/VQA trainings (the
# report model needs its 1500 steps to name findings clearly above chance), a shorter segmentation on
# two structures (400 steps + 150 of presence fine-tuning: liver Dice 0.87, 6 of the 8 removed spleens of
# the test split reported absent), a shorter reasoning model on the same two (800 + 600 steps, about 4
# minutes: liver Dice 0.90, all 8 removed spleens answered without [SEG], every present organ with it)
# and a shorter real-CT fine-tuning.
QUICK = DemoConfig(
    seg_steps=400,
    seg_presence_steps=150,
    seg_classes=["liver", "spleen"],
    reason_steps=800,
    reason_absent_steps=600,
    reason_classes=["liver", "spleen"],
    real_steps=30,
    mrg_examples=2,
)
