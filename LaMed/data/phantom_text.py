"""Texts of a synthetic phantom, written only from its structured ``findings``.

``describe(findings, rng)`` returns the findings report, VQA pairs (closed 4-choice, yes/no, open),
referring expressions with their target mask and retrieval labels. Every fact has several
phrasings picked by ``rng`` so a model cannot learn one fixed string, but each sentence states
only what was drawn: the ``findings`` dict produced by ``LaMed.data.phantom.make_phantom``.

Every VQA item carries a ``topic`` (e.g. ``"enlarged:spleen"``) naming the fact it asks about, so
evaluations can report accuracy per question kind and tests can recompute the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["describe", "DISPLAY", "LESION_ORGANS", "organ_display"]

DISPLAY = {
    "liver": "liver",
    "gallbladder": "gallbladder",
    "spleen": "spleen",
    "kidney_right": "right kidney",
    "kidney_left": "left kidney",
    "lung_right": "right lung",
    "lung_left": "left lung",
    "aorta": "aorta",
    "vertebrae": "vertebrae",
    "ribs": "ribs",
}
# Organs that may carry lesions: the choice list of "which organ contains a lesion".
LESION_ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "lung_right", "lung_left")
_NUMBER = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
_REMOVAL = {
    "gallbladder": "cholecystectomy",
    "spleen": "splenectomy",
    "kidney_right": "right nephrectomy",
    "kidney_left": "left nephrectomy",
}

_KIND_WORDS = {
    "cyst": ("cyst", "simple-appearing cyst", "fluid-attenuation cyst"),
    "hypodense mass": ("hypodense lesion", "hypoattenuating mass", "low-attenuation lesion"),
    "hyperdense mass": ("hyperdense lesion", "hyperattenuating mass", "high-attenuation lesion"),
    "nodule": ("solid nodule", "soft-tissue nodule", "pulmonary nodule"),
}


def organ_display(name: str) -> str:
    return DISPLAY.get(name, name.replace("_", " "))


class _Writer:
    """Phrase picker over one rng stream."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def shuffle(self, items: list) -> list:
        order = self.rng.permutation(len(items))
        return [items[i] for i in order]


def _article(word: str) -> str:
    """'a' or 'an' before ``word`` as it is read aloud ("an 8 mm", "an 11 mm", "a 23 mm")."""
    head = word.split()[0] if word else ""
    if head.isdigit():
        n = int(head)
        spoken_vowel = head.startswith("8") or n in (11, 18) or 11000 <= n < 12000
        return "an" if spoken_vowel else "a"
    return "an" if head[:1].lower() in "aeio" else "a"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _cm(mm: float) -> str:
    return f"{mm / 10.0:.1f}"


# --------------------------------------------------------------------------- report


def _lesion_location(les: dict) -> str:
    organ = les["organ"]
    if organ == "liver":
        lobe = les["region"]  # "right lobe" / "left lobe"
        if les["level"] in ("superior", "inferior"):
            return f"in the {les['level']} part of the {lobe} of the liver"
        return f"in the {lobe} of the liver"
    if organ.startswith("kidney"):
        return f"in the {les['region']} of the {les['side']} kidney"
    if organ == "spleen":
        return f"in the {les['region']} of the spleen"
    return f"in the {les['side']} {les['region']}"  # lungs: "in the right lower lobe"


def _lesion_sentence(w: _Writer, les: dict) -> str:
    kind = w.pick(_KIND_WORDS[les["kind"]])
    d = les["diameter_mm"]
    loc = _lesion_location(les)
    size = f"{d} mm"
    return w.pick(
        (
            f"There is {_article(size)} {size} {kind} {loc}.",
            f"{_cap(_article(kind))} {kind} measuring about {d} mm is seen {loc}.",
            f"{_cap(loc)}, {_article(size)} {size} {kind} is present.",
        )
    )


def _lesions_by_organ(f: dict) -> dict[str, list[dict]]:
    by_organ: dict[str, list[dict]] = {}
    for les in f["lesions"]:
        by_organ.setdefault(les["organ"], []).append(les)
    return by_organ


def _technique(w: _Writer, phase: str) -> list[str]:
    if phase == "non-contrast":
        return [
            w.pick(
                (
                    "Non-contrast CT of the abdomen.",
                    "CT of the abdomen without intravenous contrast.",
                    "Unenhanced axial CT images of the abdomen.",
                )
            )
        ]
    return [
        w.pick(
            (
                f"Contrast-enhanced CT of the abdomen in the {phase} phase.",
                f"CT of the abdomen after intravenous contrast, {phase} phase.",
                f"{_cap(phase)}-phase contrast-enhanced CT of the abdomen.",
            )
        )
    ]


def _lung_bases(w: _Writer, organs: dict, by_organ: dict[str, list[dict]]) -> list[str]:
    out: list[str] = []
    lungs_seen = [n for n in ("lung_right", "lung_left") if organs[n]["present"]]
    nodules = by_organ.get("lung_right", []) + by_organ.get("lung_left", [])
    if lungs_seen and not nodules:
        out.append(
            w.pick(
                (
                    "The lung bases are clear.",
                    "No focal abnormality at the visualized lung bases.",
                    "The imaged lung bases are clear.",
                )
            )
        )
    return out + [_lesion_sentence(w, les) for les in nodules]


def _liver(w: _Writer, liver: dict, lesions: list[dict]) -> list[str]:
    if not liver["present"]:
        return []
    cc = _cm(liver["craniocaudal_mm"])
    if liver["clipped"]:  # no size figure for an organ cut by the field of view
        out = [
            w.pick(
                ("The liver is enlarged, consistent with hepatomegaly.", "Hepatomegaly.")
                if liver["enlarged"]
                else ("The liver is not enlarged.", "Normal liver size.")
            )
        ]
    elif liver["enlarged"]:
        out = [
            w.pick(
                (
                    f"The liver is enlarged, spanning about {cc} cm craniocaudally, consistent with hepatomegaly.",
                    f"Hepatomegaly: the liver measures about {cc} cm in craniocaudal extent.",
                    f"The liver is enlarged (about {cc} cm craniocaudally), in keeping with hepatomegaly.",
                )
            )
        ]
    else:
        out = [
            w.pick(
                (
                    f"The liver is normal in size, spanning about {cc} cm craniocaudally.",
                    f"Normal liver size (craniocaudal extent about {cc} cm).",
                    f"The liver is not enlarged (about {cc} cm craniocaudally).",
                )
            )
        ]
    return out + _organ_lesion_sentences(
        w,
        "liver",
        lesions,
        ("No focal liver lesion.", "No focal hepatic lesion is seen.", "No focal lesion in the liver."),
    )


def _gallbladder(w: _Writer, gb: dict) -> list[str]:
    if gb["present"]:
        return [
            w.pick(
                (
                    "The gallbladder is unremarkable.",
                    "Normal gallbladder.",
                    "The gallbladder is present and unremarkable.",
                )
            )
        ]
    if gb.get("reason") == "surgically absent":
        return [_absent_sentence(w, "gallbladder")]
    return []


def _spleen(w: _Writer, sp: dict, lesions: list[dict]) -> list[str]:
    if not sp["present"]:
        return [_absent_sentence(w, "spleen")] if sp.get("reason") == "surgically absent" else []
    cc = _cm(sp["craniocaudal_mm"])
    if sp["clipped"]:
        out = [
            w.pick(
                ("The spleen is enlarged, consistent with splenomegaly.", "Splenomegaly: the spleen is enlarged.")
                if sp["enlarged"]
                else ("The spleen is not enlarged.", "Normal-sized spleen.")
            )
        ]
    elif sp["enlarged"]:
        out = [
            w.pick(
                (
                    f"The spleen is enlarged, measuring about {cc} cm craniocaudally (splenomegaly).",
                    f"Splenomegaly: the spleen spans about {cc} cm craniocaudally.",
                    f"The spleen is enlarged at about {cc} cm, consistent with splenomegaly.",
                )
            )
        ]
    else:
        out = [
            w.pick(
                (
                    f"The spleen is normal in size (about {cc} cm craniocaudally).",
                    f"Normal-sized spleen, about {cc} cm craniocaudally.",
                    "The spleen is not enlarged.",
                )
            )
        ]
    return out + _organ_lesion_sentences(
        w,
        "spleen",
        lesions,
        (
            "No focal splenic lesion.",
            "No focal lesion in the spleen.",
            "The spleen is homogeneous without focal lesion.",
        ),
    )


def _kidneys(w: _Writer, organs: dict, by_organ: dict[str, list[dict]]) -> list[str]:
    out: list[str] = []
    kid = {s: organs[f"kidney_{s}"] for s in ("right", "left")}
    clean = [s for s in kid if kid[s]["present"] and not by_organ.get(f"kidney_{s}")]
    if len(clean) == 2:
        out.append(
            w.pick(
                (
                    "Both kidneys are unremarkable.",
                    "The kidneys are normal in size bilaterally, without focal lesion.",
                    "Normal appearance of both kidneys.",
                )
            )
        )
    for s in ("right", "left"):
        name = f"kidney_{s}"
        if not kid[s]["present"]:
            if kid[s].get("reason") == "surgically absent":
                out.append(_absent_sentence(w, name))
        elif len(clean) != 2:
            if by_organ.get(name):
                out += [_lesion_sentence(w, les) for les in by_organ[name]]
            else:
                out.append(
                    w.pick(
                        (
                            f"The {s} kidney is unremarkable.",
                            f"Normal {s} kidney.",
                            f"The {s} kidney is normal in size without focal lesion.",
                        )
                    )
                )
    return out


def _aorta_and_bones(w: _Writer, aorta: dict) -> list[str]:
    out: list[str] = []
    if aorta["present"]:
        d = aorta["diameter_mm"]
        out.append(
            w.pick(
                (
                    f"The abdominal aorta is normal in caliber (about {d:.0f} mm).",
                    f"Normal-caliber abdominal aorta, about {d:.0f} mm in diameter.",
                    f"No abdominal aortic aneurysm; the aorta measures about {d:.0f} mm.",
                )
            )
        )
    out.append(
        w.pick(
            (
                "No aggressive osseous lesion.",
                "The visualized bones are unremarkable.",
                "No destructive bone lesion is seen.",
            )
        )
    )
    return out


def _report(w: _Writer, f: dict) -> str:
    """The findings paragraph, organ by organ (each step draws its phrasings from ``w`` in this
    order, which is part of the seed -> text mapping), then the impression."""
    organs = f["organs"]
    by_organ = _lesions_by_organ(f)
    out = (
        _technique(w, f["phase"])
        + _lung_bases(w, organs, by_organ)
        + _liver(w, organs["liver"], by_organ.get("liver", []))
        + _gallbladder(w, organs["gallbladder"])
        + _spleen(w, organs["spleen"], by_organ.get("spleen", []))
        + _kidneys(w, organs, by_organ)
        + _aorta_and_bones(w, f["aorta"])
    )
    out = [sentence for sentence in out if sentence]
    impression = _impression(w, f, by_organ)
    heading = w.pick(("Impression:", "IMPRESSION:", "Conclusion:"))
    return "Findings: " + " ".join(out) + f"\n{heading} " + " ".join(impression)


def _organ_lesion_sentences(w: _Writer, organ: str, lesions: list[dict], none: Sequence[str]) -> list[str]:
    if not lesions:
        return [w.pick(none)]
    out = [_lesion_sentence(w, les) for les in lesions]
    if len(lesions) > 1:
        n = _NUMBER.get(len(lesions), str(len(lesions)))
        place = {"liver": "the liver", "spleen": "the spleen"}.get(organ, f"the {organ_display(organ)}")
        out.append(w.pick((f"In total, {n} lesions are seen in {place}.", f"{_cap(n)} lesions in {place} overall.")))
    return out


def _absent_sentence(w: _Writer, organ: str) -> str:
    # Every phrasing contains the word "absent", so the absence is unmistakable.
    disp, op = organ_display(organ), _REMOVAL[organ]
    return w.pick(
        (
            f"The {disp} is surgically absent.",
            f"Status post {op}; the {disp} is absent.",
            f"The {disp} is absent, consistent with prior {op}.",
        )
    )


def _impression(w: _Writer, f: dict, by_organ: dict[str, list[dict]]) -> list[str]:
    organs = f["organs"]
    out = []
    if organs["liver"]["present"] and organs["liver"]["enlarged"]:
        out.append("Hepatomegaly.")
    if organs["spleen"]["present"] and organs["spleen"]["enlarged"]:
        out.append("Splenomegaly.")
    for organ, lesions in by_organ.items():
        biggest = max(les["diameter_mm"] for les in lesions)
        where = organ_display(organ)
        if organ.startswith("lung"):
            what = "nodule" if len(lesions) == 1 else "nodules"
            where = f"{lesions[0]['side']} lower lobe"
        else:
            what = "lesion" if len(lesions) == 1 else "lesions"
        n = _NUMBER[len(lesions)] if len(lesions) <= 5 else str(len(lesions))
        if len(lesions) == 1:
            out.append(f"{_cap(les_kind_short(lesions[0]))} in the {where} ({biggest} mm).")
        else:
            out.append(f"{_cap(n)} {what} in the {where}, the largest {biggest} mm.")
    for organ in ("gallbladder", "spleen", "kidney_right", "kidney_left"):
        if organs[organ].get("reason") == "surgically absent":
            out.append(f"Status post {_REMOVAL[organ]}.")
    if not out:
        out.append(
            w.pick(("No significant abnormality.", "Unremarkable CT of the abdomen.", "No abnormality detected."))
        )
    return out


def les_kind_short(les: dict) -> str:
    """Short noun phrase of a lesion for the impression ("cyst", "hypodense lesion", "nodule")."""
    return {
        "cyst": "cyst",
        "hypodense mass": "hypodense lesion",
        "hyperdense mass": "hyperdense lesion",
        "nodule": "nodule",
    }[les["kind"]]


# --------------------------------------------------------------------------- VQA


def _yes_no(question: str, answer: bool, topic: str) -> dict:
    return {"question": question, "answer": "Yes" if answer else "No", "type": "yes_no", "topic": topic}


def _closed(w: _Writer, question: str, correct: str, distractors: Sequence[str], topic: str) -> dict | None:
    pool = [d for d in dict.fromkeys(distractors) if d != correct]
    if len(pool) < 3:
        return None
    options = w.shuffle([correct] + w.shuffle(pool)[:3])
    choices = {letter: opt for letter, opt in zip("ABCD", options)}
    letter = next(k for k, v in choices.items() if v == correct)
    return {
        "question": question,
        "answer": correct,
        "type": "closed",
        "choices": choices,
        "answer_choice": letter,
        "topic": topic,
    }


def _vqa(w: _Writer, f: dict) -> list[dict]:
    organs, lesions = f["organs"], f["lesions"]
    count = {o: sum(1 for les in lesions if les["organ"] == o) for o in LESION_ORGANS}
    qa: list[dict | None] = []

    qa.append(
        _closed(
            w,
            w.pick(
                (
                    "In which phase was this CT acquired?",
                    "What is the contrast phase of this scan?",
                    "Which imaging phase is shown?",
                )
            ),
            f["phase"],
            ("non-contrast", "arterial", "portal venous", "delayed"),
            "phase",
        )
    )
    qa.append(
        _yes_no(
            w.pick(("Was intravenous contrast given?", "Is this a contrast-enhanced scan?")), f["contrast"], "contrast"
        )
    )

    for organ in ("liver", "spleen"):
        if organs[organ]["present"]:
            qa.append(
                _yes_no(
                    w.pick(
                        (
                            f"Is the {organ} enlarged?",
                            f"Does the {organ} appear enlarged?",
                            f"Is there {'hepatomegaly' if organ == 'liver' else 'splenomegaly'}?",
                        )
                    ),
                    organs[organ]["enlarged"],
                    f"enlarged:{organ}",
                )
            )
    enlarged = [o for o in ("liver", "spleen") if organs[o]["present"] and organs[o]["enlarged"]]
    if len(enlarged) == 1:
        qa.append(
            _closed(
                w,
                w.pick(("Which organ is enlarged?", "Which of these organs is enlarged?")),
                organ_display(enlarged[0]),
                [
                    organ_display(o)
                    for o in ("liver", "spleen", "kidney_right", "kidney_left", "gallbladder")
                    if o != enlarged[0]
                ],
                "which_enlarged",
            )
        )

    removable = ("gallbladder", "spleen", "kidney_right", "kidney_left")
    absent = [o for o in removable if organs[o].get("reason") == "surgically absent"]
    asked = (
        w.pick(absent)
        if absent and w.rng.random() < 0.6
        else w.pick([o for o in removable if organs[o]["present"]] or list(removable))
    )
    if organs[asked]["present"] or organs[asked].get("reason") == "surgically absent":
        qa.append(
            _yes_no(
                w.pick((f"Is the {organ_display(asked)} present?", f"Can the {organ_display(asked)} be seen?")),
                organs[asked]["present"],
                f"present:{asked}",
            )
        )
    if len(absent) == 1:
        qa.append(
            _closed(
                w,
                w.pick(("Which organ has been surgically removed?", "Which organ is absent after surgery?")),
                organ_display(absent[0]),
                [organ_display(o) for o in removable],
                "which_absent",
            )
        )

    # Lesions
    with_lesion = [o for o in LESION_ORGANS if count[o]]
    without = [organ_display(o) for o in LESION_ORGANS if not count[o]] + ["gallbladder"]
    if with_lesion:
        target = w.pick(with_lesion)
        qa.append(
            _closed(
                w,
                w.pick(("Which of these organs contains a lesion?", "Where is a focal lesion located?")),
                organ_display(target),
                without,
                "lesion_organ",
            )
        )
        if len(with_lesion) == 1:
            qa.append(
                {
                    "question": w.pick(
                        (
                            "Which organ contains the lesion?",
                            "In which organ is the lesion?",
                            "Which organ is abnormal?",
                        )
                    ),
                    "answer": organ_display(target),
                    "type": "open",
                    "topic": "lesion_organ",
                }
            )
    if organs["liver"]["present"]:
        n = count["liver"]
        q = w.pick(
            (
                "How many lesions are in the liver?",
                "How many focal liver lesions are there?",
                "What is the number of liver lesions?",
            )
        )
        if w.rng.random() < 0.5:
            qa.append({"question": q, "answer": str(n), "type": "open", "topic": "lesion_count:liver"})
        else:
            qa.append(_closed(w, q, str(n), ("0", "1", "2", "3", "4"), "lesion_count:liver"))
    kidney_sides = [s for s in ("right", "left") if count[f"kidney_{s}"]]
    if len(kidney_sides) == 1:
        qa.append(
            {
                "question": w.pick(("On which side is the kidney lesion?", "Which kidney has the lesion?")),
                "answer": kidney_sides[0],
                "type": "open",
                "topic": "kidney_lesion_side",
            }
        )
    seen = [o for o in LESION_ORGANS if organs[o]["present"]]
    probe = w.pick(seen) if seen else None
    qa.append(
        None
        if probe is None
        else _yes_no(
            w.pick(
                (
                    f"Is there a lesion in the {organ_display(probe)}?",
                    f"Does the {organ_display(probe)} contain a focal lesion?",
                )
            ),
            count[probe] > 0,
            f"has_lesion:{probe}",
        )
    )
    single = [les for les in lesions if count[les["organ"]] == 1]
    if single:
        les = w.pick(single)
        where = organ_display(les["organ"])
        qa.append(
            {
                "question": w.pick(
                    (f"What is the approximate size of the lesion in the {where}?", f"How large is the {where} lesion?")
                ),
                "answer": f"{les['diameter_mm']} mm",
                "type": "open",
                "topic": f"lesion_size:{les['name']}",
            }
        )
        if les["attenuation"] in ("hypodense", "hyperdense"):
            qa.append(
                _closed(
                    w,
                    w.pick(
                        (
                            f"What is the attenuation of the lesion in the {where}?",
                            f"How does the {where} lesion appear relative to the {where}?",
                        )
                    ),
                    les["attenuation"],
                    ("hypodense", "hyperdense", "isodense", "fat-containing"),
                    f"lesion_attenuation:{les['name']}",
                )
            )
    return [q for q in qa if q is not None]


# --------------------------------------------------------------------------- referring


_REFER = {
    "liver": (
        "the liver",
        "the largest solid organ in the abdomen",
        "the organ that produces bile",
        "the large organ in the right upper quadrant",
    ),
    "gallbladder": ("the gallbladder", "the organ that stores bile", "the small fluid-filled sac beneath the liver"),
    "spleen": (
        "the spleen",
        "the organ in the left upper quadrant that filters the blood",
        "the lymphoid organ beside the left kidney",
    ),
    "kidney_right": (
        "the right kidney",
        "the bean-shaped organ on the patient's right that produces urine",
        "the kidney on the same side as the liver",
    ),
    "kidney_left": (
        "the left kidney",
        "the urine-producing organ on the patient's left",
        "the kidney on the same side as the spleen",
    ),
    "lung_right": ("the right lung", "the air-filled organ above the liver", "the right lung base"),
    "lung_left": (
        "the left lung",
        "the air-filled organ on the patient's left at the top of the scan",
        "the left lung base",
    ),
    "aorta": ("the aorta", "the largest artery in the body", "the main artery running in front of the spine"),
    "vertebrae": ("the vertebrae", "the spine", "the bony column at the back of the abdomen"),
    "ribs": ("the ribs", "the curved bones in the body wall"),
}


def _refer(w: _Writer, f: dict, available: set[str]) -> list[dict]:
    organs, lesions = f["organs"], f["lesions"]
    out = []
    for name, phrases in _REFER.items():
        if name in available:
            out.append({"text": w.pick(phrases), "target": name})
    for organ in ("liver", "spleen"):
        if organ in available and organs[organ]["enlarged"]:
            out.append(
                {
                    "text": w.pick(
                        (
                            f"the enlarged {organ}",
                            f"Segment the organ that shows {'hepatomegaly' if organ == 'liver' else 'splenomegaly'}.",
                        )
                    ),
                    "target": organ,
                }
            )
    present_kidneys = [k for k in ("kidney_right", "kidney_left") if k in available]
    if len(present_kidneys) == 1 and any(
        organs[k].get("reason") == "surgically absent" for k in ("kidney_right", "kidney_left")
    ):
        out.append(
            {
                "text": w.pick(("the remaining kidney", "The patient had one kidney removed. Segment the other one.")),
                "target": present_kidneys[0],
            }
        )
    if "gallbladder" in available:
        out.append({"text": "Which organ would be removed in a cholecystectomy? Segment it.", "target": "gallbladder"})
    by_organ: dict[str, list[dict]] = {}
    for les in lesions:
        by_organ.setdefault(les["organ"], []).append(les)
    for organ, group in by_organ.items():
        where = organ_display(organ)
        if len(group) == 1:
            les = group[0]
            if les["name"] not in available:
                continue
            out.append(
                {
                    "text": w.pick(
                        (
                            f"the lesion in the {where}",
                            f"the {les_kind_short(les)} in the {where}",
                            f"Where is the abnormality of the {where}? Please segment it.",
                        )
                    ),
                    "target": les["name"],
                }
            )
        else:
            sizes = sorted((les["diameter_mm"] for les in group), reverse=True)
            if sizes[0] > sizes[1]:  # only when "the largest" is unambiguous
                big = max(group, key=lambda les: les["diameter_mm"])
                if big["name"] in available:
                    out.append(
                        {
                            "text": w.pick((f"the largest lesion in the {where}", f"the biggest {where} lesion")),
                            "target": big["name"],
                        }
                    )
    if "lesions" in available:
        out.append(
            {
                "text": w.pick(
                    ("all focal lesions", "every lesion in this scan", "Segment all abnormal focal findings.")
                ),
                "target": "lesions",
            }
        )
    return out


# --------------------------------------------------------------------------- labels and entry point


def _labels(f: dict, available: set[str]) -> list[str]:
    organs = f["organs"]
    out = [n for n in DISPLAY if n in available]
    if organs["liver"]["present"] and organs["liver"]["enlarged"]:
        out.append("hepatomegaly")
    if organs["spleen"]["present"] and organs["spleen"]["enlarged"]:
        out.append("splenomegaly")
    for organ in _REMOVAL:
        if organs[organ].get("reason") == "surgically absent":
            out.append(_REMOVAL[organ].split()[-1])
    for les in f["lesions"]:
        tag = "lung nodule" if les["organ"].startswith("lung") else f"{les['organ'].split('_')[0]} lesion"
        if tag not in out:
            out.append(tag)
    out.append(f"{f['phase']} phase")
    return out


def describe(findings: dict, rng: np.random.Generator, available_masks: set[str] | None = None) -> dict:
    """Texts of one phantom: ``{"report": str, "vqa": [...], "refer": [...], "labels": [...]}``.

    ``available_masks`` restricts referring targets to masks that exist (default: every organ
    marked present, every lesion and ``lesions`` when there are any).
    """
    if available_masks is None:
        available_masks = {n for n, o in findings["organs"].items() if o["present"]}
        available_masks |= {"aorta", "vertebrae"} | {les["name"] for les in findings["lesions"]}
        if findings["lesions"]:
            available_masks.add("lesions")
    w = _Writer(rng)
    return {
        "report": _report(w, findings),
        "vqa": _vqa(w, findings),
        "refer": _refer(w, findings, available_masks),
        "labels": _labels(findings, available_masks),
    }
