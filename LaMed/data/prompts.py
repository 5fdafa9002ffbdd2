"""Prompt templates for report generation, VQA and positioning (data, not code).

Training picks a template at random per sample (seeded); evaluation always uses the first one, so
scores do not depend on a seed or on the number of data-loader workers (the published benches drew
test prompts at random). Templates are this project's own wording; the published sets hold 42
caption phrasings (M3D), 50 RadGenome location phrasings (HSENet) and a fixed FLARE system prompt.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

CAPTION_TEMPLATES = (
    "Write the findings for this CT volume.",
    "Describe the findings of this scan.",
    "What are the findings in this 3D image?",
    "Please write a radiology report of the findings.",
    "Summarise what this volume shows.",
    "Report the findings visible in this study.",
    "Give a findings report for this examination.",
    "What does this scan show? Answer as a radiology report.",
    "Provide the findings section of the report for this image.",
    "Describe the organs and any abnormality in this volume.",
)

# Positioning (M3D PosREC / PosREG style): box as text, "{target}" is the structure name.
REC_TEMPLATES = (
    "Where is the {target} in this image? Answer with a box.",
    "Locate the {target} with a bounding box.",
    "Give the bounding box of the {target}.",
    "Output the box that encloses the {target}.",
)
REC_ANSWERS = ("The {target} is at {box}.", "{box}", "Box of the {target}: {box}.")
REG_TEMPLATES = (
    "What structure lies in the region {box}?",
    "Name the organ inside {box}.",
    "Which structure does the box {box} enclose?",
)
REG_ANSWERS = ("The region contains the {target}.", "{target}", "It is the {target}.")

# RadGenome-ChestCT location questions (HSENet VQA), "{abnormality}" filled in.
RADGENOME_TEMPLATES = (
    "Where is the {abnormality} located in the image?",
    "In which anatomical region is the {abnormality} seen?",
    "Which part of the chest shows the {abnormality}?",
)

# FLARE 2025 Task 5 (Med3DVLM-FLARE): system prompts as published in substance.
FLARE_REPORT_SYSTEM = "You are an AI assistant trained to act as an abdominal radiologist."
FLARE_REPORT_PROMPT = "Please describe in detail the findings in this abdomen CT scan."
FLARE_VQA_SYSTEM = (
    "You are an AI assistant acting as a radiologist tasked with answering a multiple-choice "
    "question based on a CT scan."
)


def pick(templates: Sequence[str], rng: random.Random | None) -> str:
    """A random template (training) or the first one (``rng=None``: evaluation)."""
    return templates[0] if rng is None else templates[rng.randrange(len(templates))]


def closed_question(question: str, choices: Mapping[str, str]) -> str:
    """M3D closed-ended format: ``"<question> Choices: A. a B. b C. c D. d"``."""
    return f"{question} Choices: " + " ".join(f"{k}. {v}" for k, v in sorted(choices.items()))


def closed_answer(letter: str, text: str) -> str:
    """M3D closed-ended answer: ``"B. arterial"``."""
    return f"{letter}. {text}"


__all__ = [
    "CAPTION_TEMPLATES",
    "REC_TEMPLATES",
    "REC_ANSWERS",
    "REG_TEMPLATES",
    "REG_ANSWERS",
    "RADGENOME_TEMPLATES",
    "FLARE_REPORT_SYSTEM",
    "FLARE_REPORT_PROMPT",
    "FLARE_VQA_SYSTEM",
    "pick",
    "closed_question",
    "closed_answer",
]
