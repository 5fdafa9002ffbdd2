"""Synthetic phantoms: determinism, anatomy (orientation, HU, masks) and texts true to the drawing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from LaMed.data.phantom import ORGANS, PHASES, make_phantom, mask_box
from LaMed.data.phantom_text import LESION_ORGANS, organ_display

SMALL = (16, 64, 64)
SEEDS = range(40)


@pytest.fixture(scope="module")
def small_phantoms():
    return [make_phantom(s, shape=SMALL) for s in SEEDS]


def _count(findings, organ):
    return sum(1 for les in findings["lesions"] if les["organ"] == organ)


def test_same_seed_same_case_different_seed_different_case():
    a, b, c = make_phantom(7, shape=SMALL), make_phantom(7, shape=SMALL), make_phantom(8, shape=SMALL)
    assert a.image.dtype == np.int16 and a.image.shape == SMALL
    assert np.array_equal(a.image, b.image)
    assert a.masks.keys() == b.masks.keys() and all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert (a.report, a.vqa, a.refer, a.boxes, a.labels) == (b.report, b.vqa, b.refer, b.boxes, b.labels)
    assert not np.array_equal(a.image, c.image)
    assert a.report != c.report


def test_canonical_orientation_liver_on_patient_right_spleen_left_lungs_superior():
    p = make_phantom(1, shape=SMALL)
    assert p.findings["organs"]["spleen"]["present"]
    com = {k: ndimage.center_of_mass(m) for k, m in p.masks.items()}
    D, H, W = SMALL
    # W increases toward patient left: liver (patient right) at low w, spleen at high w.
    assert com["liver"][2] < W / 2 < com["spleen"][2]
    assert com["kidney_right"][2] < W / 2 < com["kidney_left"][2]
    # D increases toward superior: lung bases above the kidneys; H toward posterior: spine behind aorta.
    assert com["lung_right"][0] > com["kidney_right"][0]
    assert com["vertebrae"][1] > com["aorta"][1] > H / 2 - 8
    assert com["aorta"][2] > W / 2  # aorta just left of the midline


def test_masks_inside_body_disjoint_and_lesions_inside_their_organ(small_phantoms):
    for p in small_phantoms:
        body = p.masks["body"]
        organ_names = [o.name for o in ORGANS] + ["aorta", "vertebrae", "ribs"]
        present = [n for n in organ_names if n in p.masks]
        total = np.zeros(body.shape, np.int32)
        for name, m in p.masks.items():
            assert m.dtype == bool and m.shape == SMALL
            assert m.any(), f"seed {p.seed}: mask {name} is empty"
            assert not (m & ~body).any(), f"seed {p.seed}: mask {name} leaves the body"
        for name in present:
            total += p.masks[name]
        assert total.max() == 1, f"seed {p.seed}: organ masks overlap"
        for les in p.findings["lesions"]:
            lm = p.masks[les["name"]]
            assert not (lm & ~p.masks[les["organ"]]).any()
            assert (lm <= p.masks["lesions"]).all()


def test_boxes_are_the_normalised_mask_extents(small_phantoms):
    p = small_phantoms[3]
    for name, m in p.masks.items():
        idx = np.nonzero(m)
        expect = [idx[a].min() / m.shape[a] for a in range(3)] + [(idx[a].max() + 1) / m.shape[a] for a in range(3)]
        assert p.boxes[name] == pytest.approx(expect, abs=1e-5)
    assert mask_box(np.zeros((2, 2, 2), bool)) is None


def _interior(mask, it=2):
    return ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool), iterations=it)


@pytest.mark.parametrize("phase", ["non-contrast", "arterial"])
def test_organ_hu_at_full_size(phase):
    p = make_phantom(11, contrast=phase)  # the default 32x256x256 grid
    assert p.image.shape == (32, 256, 256) and p.spacing == pytest.approx((8.75, 1.5625, 1.5625))
    f, img = p.findings, p.image.astype(np.float32)
    assert f["phase"] == phase
    med = {k: float(np.median(img[_interior(m)])) for k, m in p.masks.items() if _interior(m).any()}
    ranges = {  # published typical CT numbers; the phantom draws each organ near its table value
        "non-contrast": {
            "liver": (45, 75),
            "spleen": (35, 65),
            "kidney_right": (20, 50),
            "kidney_left": (20, 50),
            "aorta": (25, 60),
            "gallbladder": (-5, 25),
        },
        "arterial": {
            "liver": (55, 90),
            "spleen": (80, 115),
            "kidney_right": (120, 180),
            "kidney_left": (120, 180),
            "aorta": (190, 260),
            "gallbladder": (-5, 25),
        },
    }[phase]
    for name, (lo, hi) in ranges.items():
        if name in med:
            assert lo <= med[name] <= hi, (name, med[name])
    assert med["lung_right"] < -780 and med["lung_left"] < -780
    assert 300 < med["vertebrae"] < 800
    fat_ring = p.masks["body"] & ~ndimage.binary_erosion(p.masks["body"], np.ones((1, 3, 3), bool), iterations=4)
    assert -140 < np.median(img[fat_ring]) < -60
    assert np.median(img[~p.masks["body"]]) < -950
    # Noise is realistic: a few to a few tens of HU inside a homogeneous organ.
    liver_core = _interior(p.masks["liver"], 4) & ~ndimage.binary_dilation(
        p.masks.get("lesions", np.zeros_like(img, bool)), iterations=3
    )
    assert 4 < img[liver_core].std() < 25
    # Lesions keep their drawn attenuation relative to the organ.
    for les in f["lesions"]:
        core = _interior(p.masks[les["name"]], 1)
        if les["attenuation"] in ("hypodense", "hyperdense") and core.sum() > 20:
            organ_hu = f["organs"][les["organ"]]["hu"]
            sign = -1 if les["attenuation"] == "hypodense" else 1
            assert sign * (np.median(img[core]) - organ_hu) > 10


def test_enlarged_organs_measure_larger_than_normal_ones(small_phantoms):
    for organ in ("liver", "spleen"):
        infos = [
            p.findings["organs"][organ]
            for p in small_phantoms
            if p.findings["organs"][organ]["present"] and not p.findings["organs"][organ]["clipped"]
        ]
        big = [i["craniocaudal_mm"] for i in infos if i["enlarged"]]
        normal = [i["craniocaudal_mm"] for i in infos if not i["enlarged"]]
        assert big and normal
        assert min(big) > max(normal), organ
        vol_big = [i["volume_ml"] for i in infos if i["enlarged"]]
        vol_normal = [i["volume_ml"] for i in infos if not i["enlarged"]]
        assert np.mean(vol_big) > 1.5 * np.mean(vol_normal)


def test_lesion_size_in_text_matches_the_mask():
    p = make_phantom(3)  # 32x256x256: in-plane 1.56 mm voxels resolve the lesion size
    assert p.findings["lesions"]
    for les in p.findings["lesions"]:
        m = p.masks[les["name"]]
        _, h, w = np.nonzero(m)
        extent = max((h.max() - h.min() + 1) * p.spacing[1], (w.max() - w.min() + 1) * p.spacing[2])
        # A deformed ellipsoid cut by the slice grid: within 40 % of the drawn mean diameter.
        assert 0.6 * les["diameter_mm"] <= extent <= 1.4 * les["diameter_mm"] + 2 * p.spacing[1]
        assert f"{les['diameter_mm']} mm" in p.report


def _sentences_about(report, word):
    return [s for s in re.split(r"(?<=[.;:])\s+", report) if word in s.lower()]


def test_report_states_exactly_what_was_drawn(small_phantoms):
    seen_absent = set()
    for p in small_phantoms:
        f, rep = p.findings, p.report
        low = rep.lower()
        assert rep.startswith("Findings: ")
        for name, info in f["organs"].items():
            disp = organ_display(name)
            if name.startswith("lung"):
                continue
            if info["present"]:
                assert disp.split()[-1] in low, (p.seed, name)
                for s in _sentences_about(rep, disp):
                    assert "absent" not in s.lower(), (p.seed, s)
            else:
                seen_absent.add(name)
                sentences = _sentences_about(rep, disp)
                assert sentences, (p.seed, name)
                assert all("absent" in s.lower() or "status post" in s.lower() for s in sentences), sentences
        for organ, word in (("liver", "hepatomegaly"), ("spleen", "splenomegaly")):
            info = f["organs"][organ]
            enlarged = info["present"] and info["enlarged"]
            assert (word in low) == enlarged, (p.seed, organ)
            if info["present"]:
                cm = f"{info['craniocaudal_mm'] / 10:.1f} cm"
                assert enlarged or "not enlarged" in low or "normal" in low
                if info["clipped"]:  # cut by the field of view: no size figure is given
                    assert not any("cm" in s for s in _sentences_about(rep, organ)), rep
                else:
                    assert cm in rep or "The spleen is not enlarged." in rep
        for les in f["lesions"]:
            assert f"{les['diameter_mm']} mm" in rep
        if not f["lesions"]:
            # Only the aorta is measured in mm when nothing focal was drawn.
            assert all("aort" in s for s in _sentences_about(rep, " mm")), rep
            assert not re.search(r"\b(nodule|cyst|mass)\b", low), rep
        if f["phase"] == "non-contrast":
            assert any(w in low for w in ("non-contrast", "without intravenous contrast", "unenhanced"))
            assert "arterial" not in low and "portal" not in low
        else:
            assert f["phase"] in low and "contrast" in low
    assert seen_absent >= {"spleen", "gallbladder", "kidney_right", "kidney_left"}


def test_report_wording_varies_but_facts_do_not(small_phantoms):
    first = {p.report.split(". ")[0] for p in small_phantoms if p.findings["phase"] == "non-contrast"}
    assert len(first) >= 2  # several phrasings of the same fact
    aorta = {s for p in small_phantoms for s in _sentences_about(p.report, "aort")}
    assert len({re.sub(r"\d+", "N", s) for s in aorta}) >= 3


def _expected_answer(topic, f):
    organs = f["organs"]
    kind, _, arg = topic.partition(":")
    yn = lambda v: "Yes" if v else "No"  # noqa: E731
    if kind == "phase":
        return f["phase"]
    if kind == "contrast":
        return yn(f["phase"] != "non-contrast")
    if kind == "enlarged":
        return yn(organs[arg]["enlarged"])
    if kind == "which_enlarged":
        (name,) = [o for o in ("liver", "spleen") if organs[o]["present"] and organs[o]["enlarged"]]
        return organ_display(name)
    if kind == "present":
        return yn(organs[arg]["present"])
    if kind == "which_absent":
        (name,) = [o for o, i in organs.items() if not i["present"] and i["reason"] == "surgically absent"]
        return organ_display(name)
    if kind == "lesion_count":
        return str(_count(f, arg))
    if kind == "kidney_lesion_side":
        (side,) = [s for s in ("right", "left") if _count(f, f"kidney_{s}")]
        return side
    if kind == "has_lesion":
        return yn(_count(f, arg) > 0)
    les = {le["name"]: le for le in f["lesions"]}
    if kind == "lesion_size":
        return f"{les[arg]['diameter_mm']} mm"
    if kind == "lesion_attenuation":
        return les[arg]["attenuation"]
    return None


def test_vqa_answers_follow_from_the_findings_and_the_masks(small_phantoms):
    topics = set()
    for p in small_phantoms:
        f = p.findings
        types = {q["type"] for q in p.vqa}
        assert {"closed", "yes_no"} <= types
        for q in p.vqa:
            topic = q["topic"]
            topics.add(topic.split(":")[0])
            if q["type"] == "closed":
                assert sorted(q["choices"]) == ["A", "B", "C", "D"]
                assert len(set(q["choices"].values())) == 4
                assert q["choices"][q["answer_choice"]] == q["answer"]
            if q["type"] == "yes_no":
                assert q["answer"] in ("Yes", "No")
            if topic == "lesion_organ":
                with_lesion = {organ_display(o) for o in LESION_ORGANS if _count(f, o)}
                assert q["answer"] in with_lesion
                if q["type"] == "closed":  # exactly one choice is right
                    assert sum(c in with_lesion for c in q["choices"].values()) == 1
                else:
                    assert len(with_lesion) == 1
                continue
            assert q["answer"] == _expected_answer(topic, f), (p.seed, q)
            if topic == "lesion_count:liver":  # the drawing agrees with the text
                assert int(q["answer"]) == sum(1 for k in p.masks if k.startswith("liver_lesion_"))
    assert topics >= {
        "phase",
        "contrast",
        "enlarged",
        "which_enlarged",
        "present",
        "which_absent",
        "lesion_organ",
        "lesion_count",
        "kidney_lesion_side",
        "has_lesion",
        "lesion_size",
        "lesion_attenuation",
    }


def test_referring_expressions_point_at_existing_masks(small_phantoms):
    fixed = {
        "the organ that stores bile": "gallbladder",
        "the largest solid organ in the abdomen": "liver",
        "the largest artery in the body": "aorta",
        "the remaining kidney": None,
    }
    hits = set()
    for p in small_phantoms:
        for r in p.refer:
            assert r["target"] in p.masks and p.masks[r["target"]].any(), (p.seed, r)
            if r["text"] in fixed:
                hits.add(r["text"])
                expect = fixed[r["text"]]
                if expect is None:  # the kidney that was not removed
                    absent = [k for k in ("kidney_right", "kidney_left") if not p.findings["organs"][k]["present"]]
                    expect = ({"kidney_right", "kidney_left"} - set(absent)).pop()
                assert r["target"] == expect
            m = re.fullmatch(r"the lesion in the (right|left) kidney", r["text"])
            if m:
                hits.add("kidney lesion")
                assert r["target"] == f"kidney_{m.group(1)}_lesion_1"
        assert "liver" in {r["target"] for r in p.refer}
    assert len(hits) >= 4


def test_labels_and_findings_agree(small_phantoms):
    for p in small_phantoms:
        f = p.findings
        assert ("hepatomegaly" in p.labels) == f["organs"]["liver"]["enlarged"]
        assert ("splenectomy" in p.labels) == (not f["organs"]["spleen"]["present"])
        assert ("liver lesion" in p.labels) == (_count(f, "liver") > 0)
        assert f"{f['phase']} phase" in p.labels and f["phase"] in PHASES


def test_options_and_bad_arguments():
    p = make_phantom(2, shape=SMALL, lesions=False, contrast=False, ribs=True, noise_hu=0)
    assert not p.findings["lesions"] and "lesions" not in p.masks and "ribs" in p.masks
    assert p.findings["phase"] == "non-contrast"
    liver = p.image[_interior(p.masks["liver"], 2)]
    assert np.all(np.abs(liver.astype(float) - p.findings["organs"]["liver"]["hu"]) <= 1)  # no noise
    q = make_phantom(2, shape=(8, 40, 48), spacing=(20.0, 8.0, 8.0))
    assert q.image.shape == (8, 40, 48) and q.spacing == (20.0, 8.0, 8.0)
    with pytest.raises(ValueError, match="shape"):
        make_phantom(0, shape=(16, 64))
    with pytest.raises(ValueError, match="contrast"):
        make_phantom(0, shape=SMALL, contrast="venous")


def test_a_small_field_of_view_reports_only_what_is_visible():
    for seed in range(12):
        p = make_phantom(seed, shape=(8, 32, 32), spacing=(10.0, 5.0, 5.0))  # 80 x 160 x 160 mm
        f = p.findings
        assert all(m.any() for m in p.masks.values())
        assert all(r["target"] in p.masks for r in p.refer)
        for name, info in f["organs"].items():
            assert info["present"] == (name in p.masks)
            if not info["present"] and info["reason"] != "surgically absent":
                assert organ_display(name) not in p.report  # out of view: not mentioned at all
        liver = f["organs"]["liver"]
        assert liver["clipped"] and not any("cm" in s for s in _sentences_about(p.report, "liver"))


def test_perirenal_fat_outlines_kidneys_and_goes_with_a_removed_one():
    # Without contrast a kidney (~33 HU) is nearly the inner body's 40 HU; the fat shell is what shows it
    # (and, by its absence, a nephrectomy), as perirenal fat does in real CT.
    seen_removed = False
    for seed in range(60):
        p = make_phantom(seed, shape=(32, 64, 64), lesions=False, contrast=False, noise_hu=0)
        others = np.any([m for name, m in p.masks.items() if name != "body"], axis=0)
        fat = (np.abs(p.image.astype(float) + 90.0) <= 2.0) & ~others  # the shell's HU, outside every mask
        half = p.image.shape[2] // 2  # W increases toward patient left
        for name, side in (("kidney_right", np.s_[:, :, :half]), ("kidney_left", np.s_[:, :, half:])):
            organ = p.findings["organs"][name]
            if organ["present"]:
                m = p.masks[name]
                ring = ndimage.binary_dilation(m) & ~others  # the voxels around it that no structure holds
                assert np.median(p.image[ring]) < -50 < np.median(p.image[_interior(m, 1)]) - 50
                assert "perirenal fat" not in p.masks
            elif organ.get("reason") == "surgically absent":
                seen_removed = True
                assert fat[side].sum() == 0, f"seed {seed}: fat left behind by the removed {name}"
        if seen_removed and seed >= 5:
            break
    assert seen_removed


def test_perirenal_fat_changes_nothing_but_its_own_voxels(monkeypatch):
    # The second path: the same seeds drawn without the shell (its function replaced by a no-op). Masks
    # and texts must be identical, and the images may differ only on the voxels the shell took (noise
    # is switched off; the blur is the same on both sides).
    import LaMed.data.phantom as phantom

    with_fat = [make_phantom(s, shape=(32, 64, 64), noise_hu=0) for s in range(8)]
    monkeypatch.setattr(phantom, "_perirenal_fat", lambda canvas, kidney: None)
    for a in with_fat:
        b = make_phantom(a.seed, shape=(32, 64, 64), noise_hu=0)
        assert a.report == b.report and a.vqa == b.vqa and a.refer == b.refer and a.labels == b.labels
        assert a.masks.keys() == b.masks.keys() and all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
        changed = a.image != b.image
        # the shell: where fat (-90) replaced soft tissue (40); the in-plane blur spreads it by about a
        # voxel, so its neighbours may move too, nothing further away
        near = ndimage.binary_dilation(a.image.astype(float) < b.image.astype(float) - 50, iterations=2)
        assert changed.any() == any(a.findings["organs"][k]["present"] for k in ("kidney_left", "kidney_right"))
        assert not (changed & ~near).any()
