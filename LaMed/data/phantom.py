"""Synthetic CT-like abdominal phantoms: the embedded default dataset (docs/architecture.md, section 6).

``make_phantom(seed)`` draws a volume in Hounsfield units with masks, and derives every text from
what was drawn: a findings report, VQA pairs, referring expressions (``phantom_text``).

Geometry. The array has axes (D, H, W) in the canonical orientation of ``LaMed.data.io``: index
increases toward patient Superior, Posterior and Left. So ``image[k]`` shown with ``imshow`` is a
radiological axial view (anterior at the top, the liver on the image left = patient right). All
anatomy is laid out in millimetres around the centre of the field of view (z superior, y posterior,
x patient-left, all positive that way), then sampled at the voxel centres; the default field of
view is 280 mm craniocaudal x 400 mm x 400 mm, so the anatomy is the same at any grid size.

Organs and lesions are ellipsoids warped by a smooth low-frequency displacement (a few random
sinusoids of the normalised coordinates), evaluated on the organ's bounding box only. Each voxel
gets one label (later structures overwrite earlier ones, so masks never overlap except that an
organ's mask includes its own lesions); HU come from a per-phase table, then a slight in-plane blur
(partial volume) and correlated Gaussian noise are added. Each kidney sits in a shell of perirenal
fat (no mask), as in real CT, where it outlines the kidney even without contrast.

Everything is deterministic per seed: geometry, noise and wording use three independent streams
spawned from ``np.random.SeedSequence(seed)``, so changing a phrasing never changes an image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from LaMed.data import phantom_text

__all__ = ["Phantom", "OrganSpec", "ORGANS", "PHASES", "make_phantom", "mask_box", "DEFAULT_FOV_MM"]

DEFAULT_FOV_MM = (280.0, 400.0, 400.0)  # (craniocaudal, AP, left-right) extent when spacing is None
PHASES = ("non-contrast", "arterial", "portal venous")

# Background tissue labels; organs start at 10.
_AIR, _FAT, _SOFT = 0, 1, 2
_SOFT_HU, _FAT_HU, _AIR_HU = 40.0, -100.0, -1000.0
# Perirenal fat: a fat shell this thick (mm) around each kidney, painted over soft tissue only. Without
# it a kidney without contrast (about 33 HU) is almost iso-attenuating with the 40 HU inner body, so
# neither a kidney nor its absence would be visible in the non-contrast phase, as they are in real CT.
_PERIRENAL_FAT_MM, _PERIRENAL_FAT_HU = 10.0, -90.0


@dataclass(frozen=True)
class OrganSpec:
    """One drawable organ, as data.

    ``center_mm``/``semi_mm`` are (z, y, x) for an average body (lateral semi-axis 165 mm, AP 115 mm);
    positions scale with the body, sizes with the organ's own size factor. ``hu`` gives the mean
    attenuation per phase (``PHASES`` order). ``enlarged_scale`` is the size factor range of an
    enlarged organ (normal organs use 0.92-1.05), chosen so the measured extents of the two groups
    never overlap.
    """

    name: str
    center_mm: tuple[float, float, float]
    semi_mm: tuple[float, float, float]
    hu: tuple[float, float, float]
    side: str  # patient side: "right", "left" or "midline"
    yaw_deg: float = 0.0  # in-plane rotation of the long axes
    p_absent: float = 0.0
    p_enlarged: float = 0.0
    enlarged_scale: tuple[float, float] = (1.3, 1.5)
    lesion_kinds: tuple[tuple[str, float], ...] = ()  # (kind, probability)
    max_lesions: int = 0
    p_lesion: float = 0.0  # probability of at least one lesion


ORGANS: tuple[OrganSpec, ...] = (
    OrganSpec(
        "lung_right",
        (150, 20, -85),
        (110, 85, 70),
        (-850, -850, -850),
        "right",
        lesion_kinds=(("nodule", 1.0),),
        max_lesions=2,
        p_lesion=0.2,
    ),
    OrganSpec(
        "lung_left",
        (150, 20, 85),
        (110, 85, 70),
        (-850, -850, -850),
        "left",
        lesion_kinds=(("nodule", 1.0),),
        max_lesions=2,
        p_lesion=0.2,
    ),
    OrganSpec(
        "liver",
        (45, -5, -62),
        (65, 80, 82),
        (58, 70, 105),
        "right",
        yaw_deg=10,
        p_enlarged=0.25,
        enlarged_scale=(1.3, 1.42),
        lesion_kinds=(("cyst", 0.35), ("hypodense mass", 0.45), ("hyperdense mass", 0.2)),
        max_lesions=3,
        p_lesion=0.5,
    ),
    OrganSpec("gallbladder", (5, -48, -48), (33, 16, 18), (8, 8, 8), "right", yaw_deg=-20, p_absent=0.15),
    OrganSpec(
        "spleen",
        (50, 50, 100),
        (50, 42, 24),
        (48, 95, 115),
        "left",
        yaw_deg=-35,
        p_absent=0.1,
        p_enlarged=0.25,
        enlarged_scale=(1.4, 1.6),
        lesion_kinds=(("hypodense mass", 0.6), ("cyst", 0.4)),
        max_lesions=1,
        p_lesion=0.12,
    ),
    OrganSpec(
        "kidney_right",
        (-22, 55, -68),
        (55, 26, 30),
        (33, 140, 165),
        "right",
        yaw_deg=-25,
        p_absent=0.08,
        lesion_kinds=(("cyst", 0.7), ("hyperdense mass", 0.3)),
        max_lesions=1,
        p_lesion=0.2,
    ),
    OrganSpec(
        "kidney_left",
        (-8, 55, 68),
        (55, 26, 30),
        (33, 140, 165),
        "left",
        yaw_deg=25,
        p_absent=0.08,
        lesion_kinds=(("cyst", 0.7), ("hyperdense mass", 0.3)),
        max_lesions=1,
        p_lesion=0.2,
    ),
)
_ORGAN_BY_NAME = {o.name: o for o in ORGANS}

# Phase-dependent HU of the non-ellipsoid structures.
_AORTA_HU = (42.0, 230.0, 160.0)
_BONE_CORTEX_HU, _BONE_MARROW_HU, _DISC_HU, _RIB_HU = 700.0, 330.0, 85.0, 600.0


@dataclass
class Phantom:
    """One synthetic case.

    image: (D, H, W) int16 HU, canonical orientation (see module docstring).
    masks: name -> (D, H, W) bool. Organ masks include their own lesions; ``body`` is everything
        inside the skin; ``lesions`` is the union of all lesions (present only when there are any).
    spacing: (D, H, W) voxel size in mm.
    report: findings report (str); vqa: list of dicts (question, answer, type, choices,
        answer_choice, topic); refer: list of {"text", "target"} with target a key of ``masks``.
    boxes: mask name -> [d0, h0, w0, d1, h1, w1] normalised to [0, 1] (end exclusive).
    findings: the structured facts all texts were written from. labels: structures and findings
        present, for label-overlap retrieval.
    """

    seed: int
    image: np.ndarray
    masks: dict[str, np.ndarray]
    spacing: tuple[float, float, float]
    report: str
    vqa: list[dict]
    refer: list[dict]
    boxes: dict[str, list[float]]
    findings: dict
    labels: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)


# --------------------------------------------------------------------------- geometry helpers


class _Grid:
    """Voxel-centre coordinates in mm (z superior, y posterior, x patient-left), origin at the centre."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float]):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)

    def axis_mm(self, axis: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        n, s = self.shape[axis], self.spacing[axis]
        stop = n if stop is None else stop
        return ((np.arange(start, stop, dtype=np.float32) + 0.5 - n / 2.0) * s).astype(np.float32)

    def index(self, axis: int, mm: float) -> float:
        return mm / self.spacing[axis] + self.shape[axis] / 2.0 - 0.5

    def crop(self, center, half) -> tuple[slice, slice, slice] | None:
        """Index box covering ``center +- half`` (mm), clipped to the grid; None when outside."""
        out = []
        for a in range(3):
            lo = max(0, int(math.floor(self.index(a, center[a] - half[a]))))
            hi = min(self.shape[a], int(math.ceil(self.index(a, center[a] + half[a]))) + 1)
            if hi <= lo:
                return None
            out.append(slice(lo, hi))
        return tuple(out)

    def coords(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) mm coordinates of an index box: shapes (d,1,1), (1,h,1), (1,1,w)."""
        z = self.axis_mm(0, box[0].start, box[0].stop)[:, None, None]
        y = self.axis_mm(1, box[1].start, box[1].stop)[None, :, None]
        x = self.axis_mm(2, box[2].start, box[2].stop)[None, None, :]
        return z, y, x

    def voxel_mm(self, index) -> np.ndarray:
        return np.array([(index[a] + 0.5 - self.shape[a] / 2.0) * self.spacing[a] for a in range(3)])


def _rotation(yaw_deg: float, tilt_deg: tuple[float, float]) -> np.ndarray:
    """3x3 rotation acting on (z, y, x) column vectors: in-plane yaw, then two small tilts."""
    a, b, c = np.deg2rad([yaw_deg, tilt_deg[0], tilt_deg[1]])
    yaw = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    tilt_zx = np.array([[math.cos(b), 0, -math.sin(b)], [0, 1, 0], [math.sin(b), 0, math.cos(b)]])
    tilt_zy = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return yaw @ tilt_zx @ tilt_zy


@dataclass
class _Blob:
    """A deformed ellipsoid: ``|q + sum_j a_j e_j sin(f_j k_j.q + phi_j)| <= 1`` with
    ``q = R^T (p - c) / semi`` (normalised coordinates), i.e. a smooth warp of the unit ball."""

    center: np.ndarray  # (3,) mm
    semi: np.ndarray  # (3,) mm
    rot: np.ndarray  # (3, 3)
    waves: np.ndarray  # (K, 9): k (3), e (3), amplitude, frequency, phase

    @classmethod
    def random(cls, rng: np.random.Generator, center, semi, yaw_deg=0.0, tilt_deg=8.0, deform=0.1, n_waves=3) -> _Blob:
        rot = _rotation(yaw_deg + rng.uniform(-8, 8), tuple(rng.uniform(-tilt_deg, tilt_deg, 2)))
        k = rng.normal(size=(n_waves, 3))
        k /= np.linalg.norm(k, axis=1, keepdims=True)
        e = rng.normal(size=(n_waves, 3))
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        amp = deform * rng.uniform(0.5, 1.0, size=(n_waves, 1))
        freq = rng.uniform(1.0, 2.5, size=(n_waves, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(n_waves, 1))
        waves = np.concatenate([k, e, amp, freq, phase], axis=1)
        return cls(np.asarray(center, float), np.asarray(semi, float), rot, waves)

    def half_extent(self) -> np.ndarray:
        """Axis-aligned half size (mm) of the box that surely contains the warped ellipsoid."""
        reach = np.sqrt(((self.rot * self.semi[None, :]) ** 2).sum(axis=1))
        return reach * (1.0 + self.waves[:, 6].sum()) + 1.0

    def inside(self, grid: _Grid):
        """(box, bool array over the box) or (None, None) when the blob misses the grid."""
        box = grid.crop(self.center, self.half_extent())
        if box is None:
            return None, None
        z, y, x = grid.coords(box)
        d = (z - self.center[0], y - self.center[1], x - self.center[2])
        # q_i = sum_j R[j, i] d_j / semi_i: each q_i is a full (d, h, w) array after broadcasting.
        q = [(self.rot[0, i] * d[0] + self.rot[1, i] * d[1] + self.rot[2, i] * d[2]) / self.semi[i] for i in range(3)]
        warped = [qi.copy() for qi in q]
        for kx, ky, kz, ex, ey, ez, amp, freq, phase in self.waves:
            s = amp * np.sin(freq * (kx * q[0] + ky * q[1] + kz * q[2]) + phase)
            warped[0] += ex * s
            warped[1] += ey * s
            warped[2] += ez * s
        return box, (warped[0] ** 2 + warped[1] ** 2 + warped[2] ** 2) <= 1.0


def mask_box(mask: np.ndarray) -> list[float] | None:
    """Normalised box ``[d0, h0, w0, d1, h1, w1]`` of a (D, H, W) mask (end exclusive), None if empty."""
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        lo.append(idx[0] / mask.shape[axis])
        hi.append((idx[-1] + 1) / mask.shape[axis])
    return [round(float(v), 5) for v in lo + hi]


# --------------------------------------------------------------------------- the drawing


class _Canvas:
    """A label volume plus the HU of each label id and the mask groups built from them."""

    def __init__(self, grid: _Grid):
        self.grid = grid
        self.label = np.zeros(grid.shape, dtype=np.uint8)
        self.hu: dict[int, float] = {_AIR: _AIR_HU, _FAT: _FAT_HU, _SOFT: _SOFT_HU}
        self.groups: dict[str, list[int]] = {}
        self.boxes: dict[str, tuple] = {}  # name -> index box that contains the structure
        self._next = 10

    def new_label(self, name: str, hu: float) -> int:
        lab = self._next
        self._next += 1
        if lab > 255:
            raise RuntimeError("too many structures for a uint8 label volume")
        self.hu[lab] = float(hu)
        self.groups.setdefault(name, []).append(lab)
        return lab

    def paint(self, name: str, hu: float, box, inside: np.ndarray, within: Sequence[int] | None = None) -> int:
        """Label the voxels of ``inside`` (over ``box``) that lie inside the inner body, or only
        those currently labelled one of ``within``; returns the number painted."""
        region = self.label[box]
        if within is None:
            allowed = region >= _SOFT  # inner body (soft tissue or an organ drawn earlier)
        else:
            allowed = np.isin(region, within)
        sel = inside & allowed
        n = int(sel.sum())
        if n:
            # A new id per call: one structure may carry several HU (vertebral cortex and marrow).
            region[sel] = self.new_label(name, hu)
            self.boxes[name] = _union_box(self.boxes.get(name), box)
        return n

    def mask(self, name: str) -> np.ndarray:
        ids = self.groups.get(name, [])
        if len(ids) == 1:
            return self.label == ids[0]
        return np.isin(self.label, ids)


def _union_box(a, b):
    if a is None:
        return b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _body(canvas: _Canvas, rng: np.random.Generator) -> dict:
    """Elliptic-cylinder body with a subcutaneous fat ring, slightly tapering toward both ends."""
    g = canvas.grid
    ax = rng.uniform(150, 178)  # lateral semi-axis, mm (skin)
    ay = rng.uniform(104, 124)  # AP semi-axis, mm
    fat = rng.uniform(10, 30)
    z = g.axis_mm(0)[:, None, None]
    y = g.axis_mm(1)[None, :, None]
    x = g.axis_mm(2)[None, None, :]
    taper = 1.0 - 0.04 * (z / 140.0) ** 2
    r_outer = (x / (ax * taper)) ** 2 + (y / (ay * taper)) ** 2
    r_inner = (x / ((ax - fat) * taper)) ** 2 + (y / ((ay - fat) * taper)) ** 2
    canvas.label[r_outer <= 1.0] = _FAT
    canvas.label[r_inner <= 1.0] = _SOFT
    return {"semi_lr_mm": ax, "semi_ap_mm": ay, "fat_mm": fat}


def _spine(canvas: _Canvas, rng: np.random.Generator, sy: float) -> None:
    """Vertebral bodies (cortex + marrow) separated by discs, plus the posterior arch."""
    g = canvas.grid
    box = g.crop((0.0, 75 * sy, 0.0), (1e6, 50 * sy, 30.0))
    if box is None:
        return
    z, y, x = g.coords(box)
    yc = 55 * sy
    rx, ry = rng.uniform(20, 24), rng.uniform(15, 18)
    vb = ((x / rx) ** 2 + ((y - yc) / ry) ** 2) <= 1.0
    marrow = ((x / (rx - 3.5)) ** 2 + ((y - yc) / (ry - 3.5)) ** 2) <= 1.0
    period, disc = rng.uniform(30, 36), rng.uniform(6, 9)
    is_disc = np.mod(z - rng.uniform(0, period), period) < disc  # (d, 1, 1)
    canal_c, canal_r = yc + ry + 10.0, 9.0
    rr = np.sqrt(x**2 + (y - canal_c) ** 2)
    arch = (rr >= canal_r) & (rr <= canal_r + 6.0) & (y > yc + ry - 1.0)
    spinous = (np.abs(x) <= 4.0) & (y > canal_c + canal_r) & (y <= canal_c + canal_r + 22.0 * sy)
    full = canvas.label[box].shape  # the in-plane parts (arch, spinous process) repeat on every slice
    canvas.paint("disc", _DISC_HU, box, np.broadcast_to(vb & is_disc, full))
    canvas.paint("vertebrae", _BONE_CORTEX_HU, box, np.broadcast_to((vb & ~is_disc) | arch | spinous, full))
    canvas.paint("vertebrae", _BONE_MARROW_HU, box, np.broadcast_to(marrow & ~is_disc, full))


def _ribs(canvas: _Canvas, rng: np.random.Generator, body: dict) -> None:
    """Rib arcs in the body wall over the upper part, sparing the anterior midline and the spine."""
    g = canvas.grid
    ax, ay = body["semi_lr_mm"] - body["fat_mm"], body["semi_ap_mm"] - body["fat_mm"]
    z = g.axis_mm(0)[:, None, None]
    y = g.axis_mm(1)[None, :, None]
    x = g.axis_mm(2)[None, None, :]
    taper = 1.0 - 0.04 * (z / 140.0) ** 2
    r = np.sqrt((x / (ax * taper)) ** 2 + (y / (ay * taper)) ** 2)
    ring = (r >= 0.86) & (r <= 0.93)
    ang = np.degrees(np.arctan2(y, x))  # -90 = anterior, +90 = posterior
    sector = (np.abs(ang + 90.0) > 35.0) & (np.abs(ang - 90.0) > 18.0)
    period = rng.uniform(26, 32)
    bands = (np.mod(z - rng.uniform(0, period), period) < 10.0) & (z > rng.uniform(-70, -40))
    canvas.paint("ribs", _RIB_HU, tuple(slice(0, n) for n in g.shape), ring & sector & bands)


def _aorta(canvas: _Canvas, rng: np.random.Generator, phase_i: int, sx: float, sy: float) -> dict:
    g = canvas.grid
    radius = rng.uniform(9.5, 13.0)
    cx, cy = 15.0 * sx, 55 * sy - 17.0 - radius - 1.0  # just anterior-left of the vertebral body
    box = g.crop((0.0, cy, cx), (1e6, radius + 2, radius + 2))
    hu = _AORTA_HU[phase_i] + rng.uniform(-10, 10)
    if box is not None:
        z, y, x = g.coords(box)
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2  # (1, h, w): a straight tube along D
        canvas.paint("aorta", hu, box, np.broadcast_to(inside, canvas.label[box].shape))
    return {"present": True, "diameter_mm": round(2 * radius, 1), "hu": round(hu, 1)}


# --------------------------------------------------------------------------- lesions


def _lesion_region(spec: OrganSpec, rel: np.ndarray, semi: np.ndarray) -> dict:
    """Anatomical words for a lesion at ``rel`` = lesion centre - organ centre (mm, z/y/x)."""
    level = rel[0] / semi[0]
    if spec.name == "liver":
        # The left lobe is the part to the patient's left of a sagittal plane through the
        # gallbladder fossa (about 0.35 semi-axes left of the liver centre in this phantom).
        lobe = "left lobe" if rel[2] > 0.35 * semi[2] else "right lobe"
        part = "superior" if level > 0.3 else ("inferior" if level < -0.3 else "central")
        return {"region": lobe, "level": part, "side": "left" if lobe == "left lobe" else "right"}
    if spec.name.startswith("kidney") or spec.name == "spleen":
        part = (
            "upper pole"
            if level > 0.33
            else ("lower pole" if level < -0.33 else ("interpolar region" if spec.name != "spleen" else "mid portion"))
        )
        return {"region": part, "level": part.split()[0], "side": spec.side}
    if spec.name.startswith("lung"):
        return {"region": "lower lobe", "level": "lower", "side": spec.side}
    return {"region": "", "level": "", "side": spec.side}


def _lesion_hu(kind: str, organ_hu: float, rng: np.random.Generator) -> float:
    if kind == "cyst":
        return rng.uniform(0, 15)
    if kind == "hypodense mass":
        return organ_hu - rng.uniform(25, 45)
    if kind == "hyperdense mass":
        return organ_hu + rng.uniform(40, 70)
    if kind == "nodule":
        return rng.uniform(20, 50)
    raise ValueError(f"unknown lesion kind {kind!r}")


_LESION_DIAMETER_MM = {"liver": (10, 40), "spleen": (10, 25), "kidney": (10, 30), "lung": (8, 20)}


def _add_lesions(canvas: _Canvas, rng: np.random.Generator, organ: OrganSpec, info: dict) -> list[dict]:
    """Place up to ``organ.max_lesions`` deformed-ellipsoid lesions wholly inside the organ."""
    from scipy import ndimage

    if organ.max_lesions == 0 or not info["present"] or rng.random() >= organ.p_lesion:
        return []
    n = int(rng.integers(1, organ.max_lesions + 1))
    kinds, probs = zip(*organ.lesion_kinds)
    family = organ.name.split("_")[0]
    dmin, dmax = _LESION_DIAMETER_MM[family]
    g = canvas.grid
    box = canvas.boxes[organ.name]
    lab = canvas.groups[organ.name]
    out = []
    organ_mask = np.isin(canvas.label[box], lab)
    # Distance to the organ boundary (mm), so the lesion centre is deep enough to fit. Computed
    # once per organ (the transform dominates the cost); later lesions keep clear of earlier ones
    # through a centre-distance test instead.
    dist = ndimage.distance_transform_edt(np.pad(organ_mask, 1), sampling=g.spacing)[1:-1, 1:-1, 1:-1]
    zyx = [(np.arange(s.start, s.stop) + 0.5 - g.shape[a] / 2.0) * g.spacing[a] for a, s in enumerate(box)]
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(n):
        diameter = rng.uniform(dmin, dmax)
        r_needed = 0.5 * diameter * 1.15
        if dist.max() < r_needed:
            diameter = 2.0 * dist.max() / 1.15
            r_needed = 0.5 * diameter * 1.15
            if diameter < dmin:
                break
        ok = dist >= r_needed
        for c, r in placed:
            ok &= (
                (zyx[0][:, None, None] - c[0]) ** 2
                + (zyx[1][None, :, None] - c[1]) ** 2
                + (zyx[2][None, None, :] - c[2]) ** 2
            ) > (r + r_needed + 2.0) ** 2
        cand = np.flatnonzero(ok.ravel())
        if cand.size == 0:
            break
        pick = np.unravel_index(cand[rng.integers(len(cand))], dist.shape)
        index = [pick[a] + box[a].start for a in range(3)]
        center = g.voxel_mm(index)
        placed.append((center, r_needed))
        semi = 0.5 * diameter * rng.uniform(0.85, 1.15, size=3)
        blob = _Blob.random(rng, center, semi, yaw_deg=rng.uniform(0, 180), tilt_deg=20, deform=0.12)
        kind = str(rng.choice(kinds, p=np.asarray(probs) / sum(probs)))
        hu = _lesion_hu(kind, info["hu"], rng)
        name = f"{organ.name}_lesion_{len(out) + 1}"
        lbox, inside = blob.inside(g)
        if lbox is None or canvas.paint(name, hu, lbox, inside, within=lab) == 0:
            continue
        rel = center - info["center_mm"]
        organ_hu = info["hu"]
        attenuation = "hypodense" if hu < organ_hu - 10 else "hyperdense" if hu > organ_hu + 10 else "isodense"
        if family == "lung":
            attenuation = "soft-tissue"
        out.append(
            {
                "name": name,
                "organ": organ.name,
                "kind": kind,
                "attenuation": attenuation,
                "diameter_mm": int(round(2 * semi.mean())),
                "hu": round(float(hu), 1),
                "center_mm": [round(float(c), 1) for c in center],
                **_lesion_region(organ, rel, info["semi_mm"]),
            }
        )
    return out


# --------------------------------------------------------------------------- entry point


def _check_geometry(shape: Sequence[int], spacing: Sequence[float] | None) -> tuple[tuple, tuple]:
    """``(shape, spacing)`` as int / float triples; the default spacing covers ``DEFAULT_FOV_MM``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"make_phantom: shape must be 3 sizes >= 4 (D, H, W), got {shape}")
    if spacing is None:
        spacing = tuple(f / n for f, n in zip(DEFAULT_FOV_MM, shape))
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"make_phantom: spacing must be 3 positive mm values, got {spacing}")
    return shape, spacing


def _choose_phase(geo: np.random.Generator, contrast: str | bool | None) -> str:
    """The contrast phase ``contrast`` asks for (None: random, non-contrast 40 %; True: a random
    contrast phase; False: non-contrast; or a name of ``PHASES``)."""
    if contrast is None:
        return str(geo.choice(PHASES, p=[0.4, 0.3, 0.3]))
    if contrast is True:
        return str(geo.choice(PHASES[1:]))
    if contrast is False:
        return PHASES[0]
    if contrast in PHASES:
        return contrast
    raise ValueError(f"make_phantom: contrast must be one of {PHASES}, True, False or None, got {contrast!r}")


def _perirenal_fat(canvas: _Canvas, kidney: _Blob) -> None:
    """Paint the fat shell around a kidney over the soft tissue it reaches. It takes no random stream,
    so every later organ, lesion, mask and text of the seed is the same as without it."""
    shell = replace(kidney, semi=kidney.semi + _PERIRENAL_FAT_MM)
    box, inside = shell.inside(canvas.grid)
    if box is not None:
        canvas.paint("perirenal fat", _PERIRENAL_FAT_HU, box, inside, within=[_SOFT])


def _draw_organs(
    canvas: _Canvas, geo: np.random.Generator, phase_i: int, sx: float, sy: float, deform: float
) -> dict[str, dict]:
    """Paint every organ of ``ORGANS`` (or record why it is absent); returns its findings by name."""
    grid = canvas.grid
    organs: dict[str, dict] = {}
    removed_kidney = None
    for spec in ORGANS:
        info = {"present": True, "side": spec.side, "enlarged": False}
        absent = geo.random() < spec.p_absent
        if spec.name.startswith("kidney") and removed_kidney is not None:
            absent = False  # never both kidneys
        if absent:
            removed_kidney = spec.name if spec.name.startswith("kidney") else removed_kidney
            organs[spec.name] = {"present": False, "side": spec.side, "reason": "surgically absent"}
            continue
        enlarged = geo.random() < spec.p_enlarged
        scale = geo.uniform(*spec.enlarged_scale) if enlarged else geo.uniform(0.92, 1.05)
        semi = np.array(spec.semi_mm) * scale
        center = np.array(spec.center_mm) * np.array([1.0, sy, sx])
        center = center + geo.uniform(-6, 6, size=3)
        if enlarged:
            # Grow mostly downward and medially, as enlarged livers and spleens do, so the organ
            # stays inside the field of view and the body.
            center[0] -= 0.5 * (semi[0] - spec.semi_mm[0])
            center[2] -= np.sign(center[2]) * 0.3 * (semi[2] - spec.semi_mm[2])
        hu = spec.hu[phase_i] + geo.uniform(-5, 5)
        blob = _Blob.random(geo, center, semi, yaw_deg=spec.yaw_deg, deform=deform)
        box, inside = blob.inside(grid)
        n = canvas.paint(spec.name, hu, box, inside) if box is not None else 0
        if n == 0:
            organs[spec.name] = {"present": False, "side": spec.side, "reason": "outside field of view"}
            continue
        if spec.name.startswith("kidney"):
            _perirenal_fat(canvas, blob)
        info.update(
            enlarged=bool(enlarged),
            scale=round(float(scale), 3),
            hu=round(float(hu), 1),
            center_mm=center,
            semi_mm=semi,
        )
        organs[spec.name] = info
    return organs


def _render_image(
    canvas: _Canvas, spacing: tuple, noise_rng: np.random.Generator, noise_hu: float | None
) -> np.ndarray:
    """Label map -> int16 HU image (D, H, W): HU lookup, partial-volume blur, correlated noise."""
    from scipy import ndimage

    lut = np.zeros(256, np.float32)
    for lab, hu in canvas.hu.items():
        lut[lab] = hu
    image = lut[canvas.label]
    sigma_mm = 0.8  # in-plane blur (mm): soft organ edges like a real reconstruction kernel
    image = ndimage.gaussian_filter(image, sigma=(0.0, sigma_mm / spacing[1], sigma_mm / spacing[2]), truncate=3.0)
    noise_sd = float(noise_rng.uniform(8, 18)) if noise_hu is None else float(noise_hu)
    if noise_sd > 0:
        noise = noise_rng.standard_normal(canvas.label.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.6, 0.6), truncate=3.0)
        noise *= noise_sd / max(float(noise.std()), 1e-6)
        image += noise
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def _structure_masks(
    canvas: _Canvas, organs: dict[str, dict], aorta: dict, lesion_list: list[dict]
) -> dict[str, np.ndarray]:
    """Bool (D, H, W) masks of the body, every visible structure (its lesions included), each
    lesion and all lesions together; an organ covered entirely by later structures is marked
    not visible in ``organs``."""
    masks: dict[str, np.ndarray] = {"body": canvas.label != _AIR}
    for name in [o.name for o in ORGANS] + ["aorta", "vertebrae", "ribs"]:
        if name not in canvas.groups:
            continue
        own = [les["name"] for les in lesion_list if les["organ"] == name]
        ids = canvas.groups[name] + [i for les in own for i in canvas.groups[les]]
        m = np.isin(canvas.label, ids) if len(ids) > 1 else canvas.label == ids[0]
        if m.any():  # a structure drawn at a grid edge can be covered entirely by later ones
            masks[name] = m
        elif name in organs:
            organs[name] = {"present": False, "side": organs[name]["side"], "reason": "not visible"}
    aorta["present"] = "aorta" in masks
    for les in lesion_list:
        masks[les["name"]] = canvas.mask(les["name"])
    if lesion_list:
        masks["lesions"] = np.isin(canvas.label, [i for les in lesion_list for i in canvas.groups[les["name"]]])
    return masks


def _measure_organs(
    organs: dict[str, dict], masks: dict[str, np.ndarray], lesion_list: list[dict], spacing: tuple, depth: int
) -> None:
    """Add the measured extent, volume and lesions to each present organ's findings (in place)."""
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    for name, info in organs.items():
        if not info["present"]:
            continue
        m = masks[name]
        zs = np.flatnonzero(m.any(axis=(1, 2)))
        info["craniocaudal_mm"] = round(float((zs[-1] - zs[0] + 1) * spacing[0]), 1)
        # Cut by the first or last slice: the visible extent is not the organ's size.
        info["clipped"] = bool(zs[0] == 0 or zs[-1] == depth - 1)
        info["volume_ml"] = round(float(m.sum() * voxel_ml), 1)
        info["center_mm"] = [round(float(c), 1) for c in info["center_mm"]]
        info["semi_mm"] = [round(float(c), 1) for c in info["semi_mm"]]
        info["lesions"] = [les["name"] for les in lesion_list if les["organ"] == name]


def make_phantom(
    seed: int,
    shape: Sequence[int] = (32, 256, 256),
    spacing: Sequence[float] | None = None,
    lesions: bool = True,
    contrast: str | bool | None = None,
    ribs: bool | None = None,
    noise_hu: float | None = None,
    deform: float = 0.1,
) -> Phantom:
    """Draw one synthetic abdominal CT with masks and texts.

    Args:
        seed: any non-negative int; the same seed always gives the same arrays and texts.
        shape: (D, H, W) voxels. spacing: (D, H, W) mm; default covers ``DEFAULT_FOV_MM``.
        lesions: draw focal lesions (liver, spleen, kidneys, lung nodules) at random.
        contrast: a phase of ``PHASES``, True (a random contrast phase), False ("non-contrast"),
            or None (random phase, non-contrast 40 %).
        ribs: draw rib arcs (None: 70 % of cases). noise_hu: noise standard deviation in HU
            (None: uniform 8-18 HU). deform: amplitude of the organ warp (normalised units).
    Returns:
        a ``Phantom`` (image int16 HU (D, H, W), masks, spacing, report, vqa, refer, boxes, findings).
    """
    shape, spacing = _check_geometry(shape, spacing)
    # Three independent streams: geometry, noise, texts (so a text change never moves an organ).
    geo, noise_rng, text_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3))
    # The order of the draws from ``geo`` below is part of the seed -> phantom mapping: keep it.
    phase = _choose_phase(geo, contrast)
    phase_i = PHASES.index(phase)
    draw_ribs = bool(geo.random() < 0.7) if ribs is None else bool(ribs)

    canvas = _Canvas(_Grid(shape, spacing))
    body = _body(canvas, geo)
    sx, sy = body["semi_lr_mm"] / 165.0, body["semi_ap_mm"] / 115.0
    organs = _draw_organs(canvas, geo, phase_i, sx, sy, deform)
    aorta = _aorta(canvas, geo, phase_i, sx, sy)
    _spine(canvas, geo, sy)
    if draw_ribs:
        _ribs(canvas, geo, body)
    lesion_list: list[dict] = []
    if lesions:
        for spec in ORGANS:
            lesion_list += _add_lesions(canvas, geo, spec, organs[spec.name])

    image = _render_image(canvas, spacing, noise_rng, noise_hu)
    masks = _structure_masks(canvas, organs, aorta, lesion_list)
    boxes = {name: mask_box(m) for name, m in masks.items()}
    _measure_organs(organs, masks, lesion_list, spacing, shape[0])
    findings = {
        "seed": int(seed),
        "phase": phase,
        "contrast": phase != "non-contrast",
        "organs": organs,
        "aorta": aorta,
        "ribs": draw_ribs and "ribs" in masks,
        "lesions": lesion_list,
        "body": {k: round(float(v), 1) for k, v in body.items()},
        "spacing_mm": list(spacing),
    }

    texts = phantom_text.describe(findings, text_rng, available_masks=set(masks))
    return Phantom(
        seed=int(seed),
        image=image,
        masks=masks,
        spacing=spacing,
        report=texts["report"],
        vqa=texts["vqa"],
        refer=texts["refer"],
        boxes={k: v for k, v in boxes.items() if v is not None},
        findings=findings,
        labels=texts["labels"],
    )
