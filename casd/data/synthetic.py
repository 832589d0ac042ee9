"""Procedural synthetic DeepFashion in the raw DeepFashion layout (the synth stage), or a check of a real folder.

A figure is an 18-keypoint skeleton posed in 3-D body coordinates, turned by the view angle and projected;
its shapes are drawn far to near into the LIP-20 label map and the RGB image is coloured from that map
alone, so labels and pixels correspond exactly. Each image has its own random stream from (seed, identity,
pose): the same seed gives byte-identical files whatever the worker count.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from casd.config import Checks
from casd.errors import DataError
from casd.data.parallel import WorkerPool
from casd.fileio import atomic_path, remove_temp_files, sigterm_as_interrupt, write_json, write_text
from casd.data.config import DataConfig
from casd.data.layout import (IMAGE_TREE, PARSING_TREE, PHASES, SOURCE_MANIFEST, SYNTH_RAW_DIR, annotation_file,
                              flat_name, flat_stem, list_file, pairs_file, raw_file)
from casd.data.tables import NUM_KEYPOINTS, rescale_keypoints, write_annotations, write_pairs

JPEG_QUALITY = 92

# LIP-20 ids used by the drawing.
BG, HAT, HAIR, SUNGLASSES, UPPER, DRESS, COAT, PANTS, JUMPSUIT, SKIRT, FACE = 0, 1, 2, 4, 5, 6, 7, 9, 10, 12, 13
L_ARM, R_ARM, L_LEG, R_LEG, L_SHOE, R_SHOE = 14, 15, 16, 17, 18, 19

# (gender, category, upper garments, lower garments): the outfit kinds an identity of the category draws from.
CATEGORIES = (
    ("MEN", "Denim", ("tee", "long"), ("trousers",)),
    ("WOMEN", "Blouses_Shirts", ("long", "tee", "tank"), ("trousers", "skirt")),
    ("MEN", "Tees_Tanks", ("tee", "tank"), ("trousers", "shorts")),
    ("WOMEN", "Dresses", ("dress",), ("none",)),
    ("MEN", "Jackets_Vests", ("coat",), ("trousers",)),
    ("WOMEN", "Skirts", ("tee", "tank", "long"), ("skirt",)),
    ("MEN", "Shirts_Polos", ("long", "tee"), ("trousers", "shorts")),
    ("WOMEN", "Tees_Tanks", ("tee", "tank"), ("skirt", "trousers", "shorts")),
    ("MEN", "Sweaters", ("long",), ("trousers",)),
    ("WOMEN", "Rompers_Jumpsuits", ("jumpsuit",), ("none",)),
)
VIEW_CODES = {"front": 1, "side": 2, "back": 3, "full": 4, "additional": 7}
VIEW_CYCLE = ("front", "side", "back", "full", "additional")
TEXTURES = ("solid", "stripes", "checks", "dots")
SKIN_TONES = ((255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (141, 85, 54), (92, 58, 40))
HAIR_COLOURS = ((20, 16, 14), (60, 40, 25), (110, 75, 40), (190, 150, 90), (150, 60, 30), (128, 128, 128))
HAIR_STYLES = ("short", "long", "bun", "cropped")


@dataclasses.dataclass
class SynthConfig:
    """The ``synth:`` section. image_size: (H, W) of the raw JPEGs (annotations are in data.annotation_size)."""

    seed: int = 0
    image_size: tuple[int, int] = (256, 176)
    categories: int = 6
    identities_per_category: int = 4
    poses_per_identity: int = 4
    test_fraction: float = 0.25

    def __post_init__(self) -> None:
        checks = Checks("synth")
        size = tuple(self.image_size)
        if checks.require(len(size) == 2 and all(isinstance(v, int) and v >= 16 for v in size),
                          f"image_size must be [H, W] integers >= 16, got {size!r}"):
            self.image_size = size
        checks.number("categories", self.categories, minimum=1, maximum=len(CATEGORIES), integer=True)
        # pairs need two poses; train and test need one identity each; NN in the file names has two digits
        checks.number("identities_per_category", self.identities_per_category, minimum=2, integer=True)
        checks.number("poses_per_identity", self.poses_per_identity, minimum=2, maximum=99, integer=True)
        fraction = self.test_fraction
        checks.require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1,
                       f"test_fraction must be in (0, 1), got {fraction!r}")
        checks.done()


# --------------------------------------------------------------------------- identities

@dataclasses.dataclass(frozen=True)
class Identity:
    """Fixed appearance of one person (all their poses share it)."""

    index: int
    gender: str
    category: str
    skin: tuple[int, int, int]
    hair_colour: tuple[int, int, int]
    hair_style: str
    hat: tuple[int, int, int] | None
    sunglasses: bool
    upper: str                      # tee | long | tank | coat | dress | jumpsuit
    upper_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    upper_texture: tuple[str, float, float]   # kind, period (body units), angle (rad)
    lower: str                      # trousers | shorts | skirt | none
    lower_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    lower_texture: tuple[str, float, float]
    shoes: tuple[int, int, int]
    build: float                    # shoulder / hip width factor

    @property
    def folder(self) -> str:
        return f"{IMAGE_TREE}/{self.gender}/{self.category}/id_{self.index + 1:08d}"


def _colour(rng: np.random.Generator, saturation=(0.2, 0.9), value=(0.2, 0.95)) -> tuple[int, int, int]:
    h, s, v = rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(int(round(255 * c)) for c in rgb)


def _texture(rng: np.random.Generator) -> tuple[str, float, float]:
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    return kind, float(rng.uniform(0.018, 0.04)), float(rng.choice([0.0, math.pi / 2, math.pi / 4, -math.pi / 4]))


def make_identity(seed: int, index: int, category_index: int) -> Identity:
    rng = np.random.default_rng([seed, index, 0])
    gender, category, uppers, lowers = CATEGORIES[category_index]
    upper = uppers[rng.integers(len(uppers))]
    lower = lowers[rng.integers(len(lowers))]
    if category == "Denim":
        lower_colours = (_colour(rng, (0.5, 0.8), (0.25, 0.55)), _colour(rng, (0.3, 0.6), (0.4, 0.7)))
    else:
        lower_colours = (_colour(rng), _colour(rng))
    hair_styles = HAIR_STYLES if gender == "WOMEN" else ("short", "cropped", "short", "long")
    return Identity(
        index=index, gender=gender, category=category,
        skin=SKIN_TONES[rng.integers(len(SKIN_TONES))],
        hair_colour=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
        hair_style=hair_styles[rng.integers(len(hair_styles))],
        hat=_colour(rng) if rng.uniform() < 0.12 else None,
        sunglasses=bool(rng.uniform() < 0.1),
        upper=upper, upper_colours=(_colour(rng), _colour(rng)), upper_texture=_texture(rng),
        lower=lower, lower_colours=lower_colours, lower_texture=_texture(rng),
        shoes=_colour(rng, (0.0, 0.6), (0.05, 0.6)),
        build=float(rng.uniform(0.92, 1.1) * (1.06 if gender == "MEN" else 0.94)),
    )


# --------------------------------------------------------------------------- pose

@dataclasses.dataclass
class Figure:
    """A posed, projected figure: 3-D joints and everything the drawing needs (image pixels, float)."""

    joints: np.ndarray       # (18, 2) projected (y, x) pixels
    depth: np.ndarray        # (18,) towards the camera, body units
    visible: np.ndarray      # (18,) bool: a detector would report it
    head: np.ndarray         # (y, x) head centre
    scale: float             # pixels per body unit
    yaw: float
    top: float
    centre_x: float


def _direction(side: float, abduction: float, flexion: float) -> np.ndarray:
    """Unit vector (x, y, z) of a limb hanging down, turned outwards by abduction and forwards by flexion."""
    return np.array([side * math.sin(abduction) * math.cos(flexion),
                     math.cos(abduction) * math.cos(flexion),
                     math.sin(flexion)])


def sample_figure(rng: np.random.Generator, view: str, size: tuple[int, int], build: float) -> Figure:
    h, w = size
    deg = math.radians
    yaw = {"front": rng.uniform(-25, 25), "full": rng.uniform(-15, 15),
           "side": rng.choice([-1, 1]) * rng.uniform(65, 105), "back": 180 + rng.uniform(-25, 25),
           "additional": rng.uniform(-180, 180)}[view]
    yaw = deg(yaw)
    if view == "additional" and rng.uniform() < 0.4:
        body = rng.uniform(1.0, 1.3) * h        # close-up: feet leave the frame
    else:
        body = rng.uniform(0.8, 0.93) * h
    top = rng.uniform(0.02, 0.07) * h
    centre_x = w / 2 + rng.uniform(-0.1, 0.1) * w

    sw, hw = 0.112 * build, 0.068 / build ** 0.5
    j = np.zeros((NUM_KEYPOINTS, 3))
    head = np.array([0.0, 0.068, 0.0])
    j[1] = (0, 0.15, 0)
    j[2], j[5] = (-sw, 0.18, 0), (sw, 0.18, 0)
    j[8], j[11] = (-hw, 0.5, 0), (hw, 0.5, 0)
    raised = rng.uniform() < 0.15
    for side, (s, e, wr) in ((-1, (2, 3, 4)), (1, (5, 6, 7))):
        abduction = deg(rng.uniform(80, 120) if raised and rng.uniform() < 0.5 else rng.uniform(4, 40))
        flexion = deg(rng.uniform(-35, 45))
        bend = deg(rng.uniform(0, 80))
        j[e] = j[s] + 0.165 * _direction(side, abduction, flexion)
        j[wr] = j[e] + 0.15 * _direction(side, abduction + deg(rng.uniform(-10, 20)), flexion + bend)
    step = deg(rng.uniform(-25, 25))
    for side, (hp, k, a), sign in ((-1, (8, 9, 10), 1), (1, (11, 12, 13), -1)):
        abduction = deg(rng.uniform(0, 12))
        flexion = sign * step + deg(rng.uniform(-5, 5))
        j[k] = j[hp] + 0.225 * _direction(side, abduction, flexion)
        j[a] = j[k] + 0.215 * _direction(side, abduction * 0.5, flexion - deg(rng.uniform(0, 30)))
    # Face points on the head: nose, eyes (OpenPose order: 14 right eye, 15 left eye, 16 right ear, 17 left ear).
    j[0] = head + (0, 0.012, 0.05)
    j[14], j[15] = head + (-0.02, -0.006, 0.043), head + (0.02, -0.006, 0.043)
    j[16], j[17] = head + (-0.05, 0.0, -0.004), head + (0.05, 0.0, -0.004)

    cos, sin = math.cos(yaw), math.sin(yaw)
    x_turned = j[:, 0] * cos + j[:, 2] * sin
    depth = -j[:, 0] * sin + j[:, 2] * cos
    joints = np.stack([top + body * j[:, 1], centre_x + body * x_turned], axis=1)
    head_px = np.array([top + body * head[1], centre_x + body * (head[0] * cos + head[2] * sin)])

    visible = np.ones(NUM_KEYPOINTS, dtype=bool)
    # A face point shows when its side of the head faces the camera.
    face_offset = j[[0, 14, 15, 16, 17]] - head
    face_depth = -face_offset[:, 0] * sin + face_offset[:, 2] * cos
    visible[[0, 14, 15, 16, 17]] = face_depth > 0.01
    # Detector misses: a few random joints, hands and feet more often.
    miss = rng.uniform(size=NUM_KEYPOINTS) < np.where(np.isin(np.arange(18), [4, 7, 10, 13]), 0.06, 0.02)
    visible &= ~miss
    return Figure(joints, depth, visible, head_px, body, yaw, top, centre_x)


# --------------------------------------------------------------------------- drawing

class _Canvas:
    """Draws labelled shapes into a PIL 'L' label map (pixel coordinates given as (y, x))."""

    def __init__(self, size: tuple[int, int]):
        self.image = Image.new("L", (size[1], size[0]), BG)
        self.draw = ImageDraw.Draw(self.image)

    def polygon(self, points, label: int) -> None:
        self.draw.polygon([(float(x), float(y)) for y, x in points], fill=label)

    def ellipse(self, centre, ry: float, rx: float, label: int) -> None:
        y, x = centre
        self.draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=label)

    def chord(self, centre, ry: float, rx: float, start: float, end: float, label: int) -> None:
        y, x = centre
        self.draw.chord([x - rx, y - ry, x + rx, y + ry], start, end, fill=label)

    def capsule(self, p, q, radius_p: float, radius_q: float, label: int) -> None:
        """A tapered thick segment with round ends."""
        p, q = np.asarray(p, float), np.asarray(q, float)
        d = q - p
        n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-6)
        self.polygon([p + n * radius_p, q + n * radius_q, q - n * radius_q, p - n * radius_p], label)
        self.ellipse(p, radius_p, radius_p, label)
        self.ellipse(q, radius_q, radius_q, label)


def _lerp(p, q, t: float) -> np.ndarray:
    return np.asarray(p) + (np.asarray(q) - np.asarray(p)) * t


def draw_labels(figure: Figure, person: Identity, size: tuple[int, int]) -> np.ndarray:
    """LIP-20 label map (H, W) uint8 of the figure, drawn far to near."""
    return _LabelPainter(figure, person, size).paint()


class _LabelPainter:
    """The body parts of one figure as LIP labels on a canvas; the shared geometry is computed once."""

    def __init__(self, figure: Figure, person: Identity, size: tuple[int, int]):
        self.canvas = _Canvas(size)
        self.figure, self.person = figure, person
        self.s, self.jt = figure.scale, figure.joints
        self.cos, self.sin = math.cos(figure.yaw), math.sin(figure.yaw)
        self.facing = self.cos  # 1 facing the camera, -1 showing the back
        jt = self.jt
        self.neck, self.r_sho, self.l_sho, r_hip, l_hip = jt[1], jt[2], jt[5], jt[8], jt[11]
        self.mid_sho, self.mid_hip = (self.r_sho + self.l_sho) / 2, (r_hip + l_hip) / 2
        self.shoulder_w = self.half_width(0.112 * person.build, 0.06)
        self.hip_w = self.half_width(0.078 / person.build ** 0.5, 0.06)
        self.waist = _lerp(self.mid_sho, self.mid_hip, 0.65)
        self.waist_w = 0.85 * min(self.shoulder_w, self.hip_w) + 0.15 * max(self.shoulder_w, self.hip_w)
        self.upper_label = {"dress": DRESS, "coat": COAT, "jumpsuit": JUMPSUIT}.get(person.upper, UPPER)
        self.lower_label = {"skirt": SKIRT, "dress": DRESS, "jumpsuit": JUMPSUIT}.get(
            person.lower if person.upper not in ("dress", "jumpsuit") else person.upper, PANTS)
        if person.upper == "dress":
            self.lower_label = DRESS
        # The skirt length is a property of the drawing, fixed per identity.
        self.skirt_length = 0.55 + 0.4 * ((person.index * 7919) % 100) / 100

    def half_width(self, lateral: float, thickness: float) -> float:
        """Projected half width of an elliptic cross-section turned by the view angle."""
        return self.s * math.hypot(lateral * self.cos, thickness * self.sin)

    def paint(self) -> np.ndarray:
        """Far to near: hair behind the head, legs, far arms, torso, near arms, head."""
        dp = self.figure.depth
        back_hair = self.person.hair_style == "long"
        back_hair_depth = 0.05 * self.cos * -1  # the hair hangs behind the head: towards the camera in a back view
        if back_hair and back_hair_depth < 0:
            self.back_hair()
        legs = [(dp[[8, 9, 10]].mean(), (8, 9, 10, R_LEG, R_SHOE)),
                (dp[[11, 12, 13]].mean(), (11, 12, 13, L_LEG, L_SHOE))]
        for _, args in sorted(legs, key=lambda t: t[0]):
            self.leg(*args)
        arms = [(dp[[3, 4]].mean(), (2, 3, 4, R_ARM)), (dp[[6, 7]].mean(), (5, 6, 7, L_ARM))]
        arms.sort(key=lambda t: t[0])
        for depth, args in arms:
            if depth < -0.03:
                self.arm(*args)
        self.torso()
        for depth, args in arms:
            if depth >= -0.03:
                self.arm(*args)
        if back_hair and back_hair_depth >= 0:
            self.back_hair()
        self.head()
        return np.asarray(self.canvas.image, dtype=np.uint8)

    def back_hair(self) -> None:
        head, s = self.figure.head, self.s
        bottom = _lerp(self.neck, self.mid_hip, 0.3)
        width = s * 0.054
        self.canvas.polygon([head + (0, -width), head + (0, width), bottom + (0, width * 0.9),
                             bottom + (0, -width * 0.9)], HAIR)

    def leg(self, hip: int, knee: int, ankle: int, skin: int, shoe: int) -> None:
        canvas, jt, s, person, lower_label = self.canvas, self.jt, self.s, self.person, self.lower_label
        thigh, shin = s * 0.05, s * 0.036
        canvas.capsule(jt[hip], jt[knee], thigh, s * 0.04, skin)
        canvas.capsule(jt[knee], jt[ankle], s * 0.04, shin, skin)
        if person.lower == "trousers" or person.upper == "jumpsuit":
            canvas.capsule(jt[hip], jt[knee], thigh * 1.1, s * 0.045, lower_label)
            canvas.capsule(jt[knee], jt[ankle], s * 0.045, shin * 1.15, lower_label)
        elif person.lower == "shorts":
            canvas.capsule(jt[hip], _lerp(jt[hip], jt[knee], 0.6), thigh * 1.15, s * 0.048, lower_label)
        # Shoe: an ellipse at the ankle stretched towards where the toes point.
        toe = jt[ankle] + np.array([s * 0.01, s * 0.05 * self.sin])
        canvas.capsule(jt[ankle] + (s * 0.012, 0), toe + (s * 0.012, 0), s * 0.026, s * 0.022, shoe)

    def arm(self, sho: int, elb: int, wri: int, skin: int) -> None:
        canvas, jt, s, upper_label = self.canvas, self.jt, self.s, self.upper_label
        upper_r, fore_r = s * 0.034, s * 0.027
        canvas.capsule(jt[sho], jt[elb], upper_r, s * 0.03, skin)
        canvas.capsule(jt[elb], jt[wri], s * 0.03, fore_r, skin)
        hand = _lerp(jt[elb], jt[wri], 1.18)
        canvas.ellipse(hand, s * 0.03, s * 0.03, skin)
        sleeve = {"tee": 0.55, "long": 1.0, "coat": 1.0, "dress": 0.3, "jumpsuit": 0.5}.get(self.person.upper, 0.0)
        if sleeve > 0:
            canvas.capsule(jt[sho], _lerp(jt[sho], jt[elb], min(sleeve, 0.55) / 0.55), upper_r * 1.2,
                           s * 0.036, upper_label)
            if sleeve >= 1.0:
                canvas.capsule(jt[elb], _lerp(jt[elb], jt[wri], 0.9), s * 0.036, fore_r * 1.2, upper_label)

    def lower_garment(self) -> None:
        jt, s, person, lower_label = self.jt, self.s, self.person, self.lower_label
        waist, waist_w, mid_hip, hip_w = self.waist, self.waist_w, self.mid_hip, self.hip_w
        if lower_label in (SKIRT, DRESS):
            knee_y = (jt[9][0] + jt[12][0]) / 2
            length = 0.75 if person.upper == "dress" else self.skirt_length
            bottom_y = mid_hip[0] + (knee_y - mid_hip[0]) * length
            flare = 1.25 + 0.35 * abs(self.facing)
            bottom_x = (jt[9][1] + jt[12][1]) / 2 * 0.5 + mid_hip[1] * 0.5
            self.canvas.polygon([waist + (s * 0.02, -waist_w), waist + (s * 0.02, waist_w),
                                 (bottom_y, bottom_x + hip_w * flare), (bottom_y, bottom_x - hip_w * flare)],
                                lower_label)
        elif person.lower in ("trousers", "shorts") or person.upper == "jumpsuit":
            crotch = mid_hip + (s * 0.06, 0)
            self.canvas.polygon([waist + (s * 0.02, -waist_w), waist + (s * 0.02, waist_w), mid_hip + (0, hip_w),
                                 crotch + (0, hip_w * 0.9), crotch + (0, -hip_w * 0.9), mid_hip + (0, -hip_w)],
                                lower_label)

    def torso(self) -> None:
        canvas, s, person, upper_label = self.canvas, self.s, self.person, self.upper_label
        mid_hip, waist, waist_w, hip_w = self.mid_hip, self.waist, self.waist_w, self.hip_w
        collar = self.neck + (s * 0.01, 0)
        # Neck skin first, the garment then covers its lower end.
        canvas.capsule(self.figure.head + (s * 0.03, 0), collar, s * 0.026, s * 0.028, FACE)
        self.lower_garment()
        top_l, top_r = self.mid_sho + (0, -self.shoulder_w), self.mid_sho + (0, self.shoulder_w)
        canvas.ellipse(self.r_sho, s * 0.035, s * 0.035, upper_label)
        canvas.ellipse(self.l_sho, s * 0.035, s * 0.035, upper_label)
        hem = 0.1 if person.upper == "coat" else 0.03
        hem_w = hip_w * (1.08 if person.upper == "coat" else 1.0)
        canvas.polygon([collar + (0, -s * 0.028), top_l + (s * 0.006, 0), waist + (0, -waist_w),
                        mid_hip + (s * hem, -hem_w), mid_hip + (s * hem, hem_w), waist + (0, waist_w),
                        top_r + (s * 0.006, 0), collar + (0, s * 0.028)], upper_label)

    def head(self) -> None:
        canvas, person, sin, facing = self.canvas, self.person, self.sin, self.facing
        head, r = self.figure.head, self.s * 0.052
        ry = self.s * 0.064
        style = person.hair_style
        if style == "bun":
            canvas.ellipse(head + (-ry * 0.85, -r * 0.6 * sin), r * 0.45, r * 0.45, HAIR)
        hair_rx, hair_ry = r * (1.12 if style != "cropped" else 1.02), ry * (1.08 if style != "cropped" else 1.0)
        hair_centre = head + (-ry * 0.1, 0)
        canvas.ellipse(hair_centre, hair_ry, hair_rx, HAIR)
        if facing > -0.35:
            face_centre = head + (ry * 0.1, r * 0.35 * sin)
            face_rx = r * (0.8 + 0.2 * abs(facing))
            canvas.ellipse(face_centre, ry * 0.92, face_rx, FACE)
            # Fringe over the forehead; in profile it also covers the back of the head.
            canvas.chord(hair_centre, hair_ry, hair_rx, 200, 340, HAIR)
            if abs(sin) > 0.5:
                back = 1 if sin < 0 else -1  # the back of the head is away from where the face turns
                canvas.ellipse(head + (-ry * 0.05, back * r * 0.45), ry * 0.9, r * 0.7, HAIR)
                canvas.ellipse(face_centre + (0, -back * r * 0.05), ry * 0.75, r * 0.55, FACE)
            if person.sunglasses and facing > 0.5:
                eye_y = head[0] - ry * 0.06
                canvas.polygon([(eye_y - ry * 0.16, face_centre[1] - face_rx * 0.85),
                                (eye_y - ry * 0.16, face_centre[1] + face_rx * 0.85),
                                (eye_y + ry * 0.14, face_centre[1] + face_rx * 0.8),
                                (eye_y + ry * 0.14, face_centre[1] - face_rx * 0.8)], SUNGLASSES)
        if person.hat is not None:
            canvas.chord(hair_centre + (-ry * 0.1, 0), hair_ry * 1.02, hair_rx * 1.08, 180, 360, HAT)
            canvas.polygon([hair_centre + (-ry * 0.12, -hair_rx * 1.35), hair_centre + (-ry * 0.12, hair_rx * 1.35),
                            hair_centre + (-ry * 0.02, hair_rx * 1.3), hair_centre + (-ry * 0.02, -hair_rx * 1.3)],
                           HAT)


_UPPER_LUT = np.isin(np.arange(20), (UPPER, DRESS, COAT, JUMPSUIT))
_LOWER_LUT = np.isin(np.arange(20), (PANTS, SKIRT))


def _pattern(texture: tuple[str, float, float], v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Texture bit on body-unit coordinates u (down) and v (right); shapes broadcast to (H, W)."""
    kind, period, angle = texture
    if kind == "stripes":
        return ((v * math.cos(angle) + u * math.sin(angle)) / period) % 1.0 < 0.5
    if kind == "checks":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if kind == "dots":
        du, dv = u % period - period / 2, v % period - period / 2
        return du * du + dv * dv < (0.3 * period) ** 2
    return np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)


def identity_palette(person: Identity, background) -> np.ndarray:
    """(20, 2, 3) float32: the colour of each LIP label for texture bit 0 and 1."""
    palette = np.zeros((20, 2, 3), dtype=np.float32)
    palette[BG] = background
    for label in (FACE, L_ARM, R_ARM, L_LEG, R_LEG):
        palette[label] = person.skin
    palette[HAIR] = person.hair_colour
    palette[HAT] = person.hat or (0, 0, 0)
    palette[SUNGLASSES] = (25, 25, 30)
    for label in (UPPER, DRESS, COAT, JUMPSUIT):
        palette[label] = person.upper_colours
    for label in (PANTS, SKIRT):
        palette[label] = person.lower_colours
    if person.upper in ("dress", "jumpsuit"):
        palette[[PANTS, SKIRT, DRESS, JUMPSUIT]] = person.upper_colours
    palette[[L_SHOE, R_SHOE]] = person.shoes
    return palette


OUTLINE_SHADE = 0.72
EYE_COLOUR = (40, 30, 30)
MOUTH_COLOUR = (170, 70, 70)


def lighting(h: int, w: int) -> np.ndarray:
    """(H, W) float32 brightness factor: soft light from the upper left."""
    return (np.float32(1.04) - np.float32(0.12) * (np.arange(w, dtype=np.float32)[None, :] / np.float32(w))
            - np.float32(0.06) * (np.arange(h, dtype=np.float32)[:, None] / np.float32(h)))


def outline(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: person pixels whose right or lower neighbour has another label (drawn darker)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge & (labels != BG)


def colour_image(labels: np.ndarray, figure: Figure, person: Identity, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 (H, W, 3) coloured from the label map: identity palette x texture bit, outlines, face details."""
    h, w = labels.shape
    palette = identity_palette(person, 235 + rng.uniform(-12, 12, size=3))
    u = (np.arange(h, dtype=np.float32)[:, None] - figure.top) / figure.scale
    v = (np.arange(w, dtype=np.float32)[None, :] - figure.centre_x) / figure.scale
    upper_region = _UPPER_LUT[labels]
    lower_region = _LOWER_LUT[labels]
    lower_texture = person.upper_texture if person.upper in ("dress", "jumpsuit") else person.lower_texture
    bit = (upper_region & _pattern(person.upper_texture, v, u)) | (lower_region & _pattern(lower_texture, v, u))
    image = palette.reshape(40, 3)[labels.astype(np.intp) * 2 + bit]

    shade = lighting(h, w) * np.where(outline(labels), np.float32(OUTLINE_SHADE), np.float32(1.0))
    image *= shade[..., None]

    # Face details (eyes, mouth), only where the face label is.
    if figure.visible[14] or figure.visible[15] or figure.visible[0]:
        details = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(details)
        r = max(0.8, figure.scale * 0.0065)
        for index in (14, 15):
            if math.cos(figure.yaw) > -0.2:
                y, x = figure.joints[index]
                draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
        if math.cos(figure.yaw) > 0.3:
            y, x = figure.joints[0] + (figure.scale * 0.014, 0)
            draw.line([(x - 2 * r, y), (x + 2 * r, y)], fill=2, width=max(1, int(r)))
        details = np.asarray(details) * (labels == FACE)
        image[details == 1] = EYE_COLOUR
        image[details == 2] = MOUTH_COLOUR
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


def render(person: Identity, view: str, size: tuple[int, int], rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image of ``person``: (RGB (H, W, 3) uint8, LIP labels (H, W) uint8, keypoints (18, 2) int (y, x), -1)."""
    figure = sample_figure(rng, view, size, person.build)
    labels = draw_labels(figure, person, size)
    image = colour_image(labels, figure, person, rng)
    keypoints = np.rint(figure.joints).astype(np.int64)
    inside = (keypoints[:, 0] >= 0) & (keypoints[:, 0] < size[0]) & (keypoints[:, 1] >= 0) & (keypoints[:, 1] < size[1])
    keypoints[~(inside & figure.visible)] = -1
    return image, labels, keypoints


# --------------------------------------------------------------------------- files

def _encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return buffer.getvalue()


def _encode_png(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(labels, "L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def write_if_changed(path: Path, data: bytes) -> bool:
    """Atomically write ``data`` unless ``path`` already holds exactly it (keeps mtimes of unchanged files)."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def _render_identity(job: tuple[int, Identity, int, tuple[int, int], tuple[int, int], str]
                     ) -> list[tuple[str, str, np.ndarray]]:
    """Render and write every pose of one identity; returns [(relative path, flat name, keypoints (18, 2))]."""
    seed, person, poses, size, annotation_size, out = job
    out_dir = Path(out)
    rows = []
    views_rng = np.random.default_rng([seed, person.index, 1])
    views = [VIEW_CYCLE[i % len(VIEW_CYCLE)] for i in views_rng.permutation(max(poses, len(VIEW_CYCLE)))][:poses]
    for pose in range(poses):
        rng = np.random.default_rng([seed, person.index, 2, pose])
        view = views[pose]
        image, labels, keypoints = render(person, view, size, rng)
        relative = f"{person.folder}/{pose + 1:02d}_{VIEW_CODES[view]}_{view}.jpg"
        name = flat_name(relative)
        if tuple(annotation_size) != tuple(size):
            labels = np.asarray(Image.fromarray(labels).resize(annotation_size[::-1], Image.NEAREST))
            keypoints = rescale_keypoints(keypoints, size, annotation_size).astype(np.int64)
        write_if_changed(out_dir / relative, _encode_jpeg(image))
        write_if_changed(out_dir / PARSING_TREE / f"{flat_stem(name)}.png", _encode_png(labels))
        rows.append((relative, name, keypoints))
    return rows


def _remove_stale(folder: Path, keep: set[Path], suffix: str) -> int:
    removed = 0
    if folder.is_dir():
        for path in folder.rglob(f"*{suffix}"):
            if path not in keep:
                path.unlink()
                removed += 1
    return removed


def generate(config: SynthConfig, annotation_size: tuple[int, int] = (256, 176),
             out_dir: str | Path = SYNTH_RAW_DIR, workers: int = 1) -> dict[str, int]:
    """Write the synthetic raw DeepFashion layout into ``out_dir``; returns counts.

    ``annotation_size`` (H, W): frame of the annotation CSVs and parsing PNGs
    (``data.annotation_size``); the JPEGs are ``config.image_size``. Files whose
    content is unchanged are left untouched; files of an earlier, larger set are
    removed.
    """
    out_dir = Path(out_dir)
    identities: list[Identity] = []
    test_ids: set[int] = set()
    split_rng = np.random.default_rng([config.seed, 1 << 20])
    n_test = min(config.identities_per_category - 1,
                 max(1, round(config.identities_per_category * config.test_fraction)))
    for c in range(config.categories):
        members = [make_identity(config.seed, c * config.identities_per_category + k, c)
                   for k in range(config.identities_per_category)]
        identities += members
        test_ids |= {members[i].index for i in split_rng.permutation(len(members))[:n_test]}

    jobs = [(config.seed, p, config.poses_per_identity, config.image_size, tuple(annotation_size), str(out_dir))
            for p in identities]
    results: list[list[tuple[str, str, np.ndarray]]] = []
    try:
        with tqdm(total=len(jobs) * config.poses_per_identity, desc="synth", unit="img", disable=None) as progress, \
                sigterm_as_interrupt(), WorkerPool(workers) as pool:
            for rows in pool.map(_render_identity, jobs, ordered=True):
                results.append(rows)
                progress.update(len(rows))
    finally:   # what killed writers left
        remove_temp_files(out_dir, recursive=True)

    counts: dict[str, int] = {}
    for phase in PHASES:
        chosen = [(p, rows) for p, rows in zip(identities, results) if (p.index in test_ids) == (phase == "test")]
        names = [name for _, rows in chosen for _, name, _ in rows]
        write_text(out_dir / list_file(phase), "\n".join(names) + "\n")
        pairs = [(a[1], b[1]) for _, rows in chosen for a in rows for b in rows if a[1] != b[1]]
        write_pairs(out_dir / pairs_file(phase), pairs)
        write_annotations(out_dir / annotation_file(phase), {name: kp for _, rows in chosen for _, name, kp in rows})
        counts[f"{phase}_images"], counts[f"{phase}_pairs"] = len(names), len(pairs)

    all_rows = [row for rows in results for row in rows]
    _remove_stale(out_dir / IMAGE_TREE, {out_dir / rel for rel, _, _ in all_rows}, ".jpg")
    _remove_stale(out_dir / PARSING_TREE, {out_dir / PARSING_TREE / f"{flat_stem(n)}.png" for _, n, _ in all_rows},
                  ".png")
    (out_dir / SOURCE_MANIFEST).unlink(missing_ok=True)
    return counts


# --------------------------------------------------------------------------- real data

def validate_source(root: str | Path, out_dir: str | Path = SYNTH_RAW_DIR) -> dict[str, object]:
    """Check that a real DeepFashion folder has the layout's files; write ``<out_dir>/SOURCE.json``.

    The later stages depend on ``data.root`` itself (dvc.yaml), so the manifest records only what was checked.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data.root folder not found (data.source: deepfashion needs the DeepFashion folder)")
    missing = [name for name in (IMAGE_TREE, PARSING_TREE) if not (root / name).is_dir()]
    if missing:
        raise DataError(root, f"not a DeepFashion folder: missing {', '.join(missing)}/")
    files = [raw_file(root, f(phase)).name for phase in PHASES for f in (list_file, pairs_file, annotation_file)]
    manifest = {"source": "deepfashion", "root": str(root), "files": files}
    write_json(Path(out_dir) / SOURCE_MANIFEST, manifest)
    return manifest


def run(data: DataConfig, config: SynthConfig, out_dir: str | Path = SYNTH_RAW_DIR) -> dict[str, object]:
    """The synth stage: generate the synthetic set, or validate ``data.root`` for real DeepFashion."""
    if data.source == "deepfashion":
        return validate_source(data.root, out_dir)
    return generate(config, data.annotation_size, out_dir, data.workers)
