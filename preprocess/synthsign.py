"""synthsign: the built-in generated sign language corpus.

Why it exists: ``make demo`` must run every stage on a fresh machine with no data, and the
distillation methods need a corpus where each modality matters. So the generator renders a
cartoon signer with OpenCV and writes, per utterance, an mp4 video plus landmarks in the
MediaPipe Holistic layout that agree with the drawing, as a *custom corpus*:

    <out>/corpus.csv              id|split|signer|glosses|video|fps|num_frames
    <out>/videos/<id>.mp4         mp4v, ``fps``, frame_size x frame_size
    <out>/keypoints/<id>.npz      keypoints float32 [T, 543, 3], mask bool [T, 543]
    <out>/alignments.jsonl        true gloss spans per utterance (for checking CTC alignments)
    <out>/synthsign.json          generator config, format version, lexicon, statistics
    <out>/.done                   written last

A gloss is (dominant hand shape, movement, location, orientation, use of the other hand,
mouthing). The lexicon contains pairs that differ only in hand shape (fine finger detail,
small in low-resolution video) or only in movement, sentences come from a small weighted
grammar, and signers differ in body, colours, tempo and amplitude. Detection noise (jitter,
dropped hand detections, more often during fast movement) keeps landmarks imperfect and video
noise keeps RGB imperfect, so neither stream alone solves the task. Everything derives from
the seed: the same config gives byte-identical keypoint files and corpus.csv.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from preprocess import layouts

FORMAT_VERSION = 1
NUM_POINTS = 543  # MediaPipe Holistic: pose 33 + face 468 + left hand 21 + right hand 21
SPLIT_NAMES = ("train", "dev", "test")
_QUANT = 4096.0  # keypoints are stored on a 1/4096 grid: exact in float32, compresses better


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0  # everything (lexicon, sentences, signers, noise) derives from this
    num_train: int = 400  # utterances in the train split
    num_dev: int = 60  # utterances in the dev split
    num_test: int = 60  # utterances in the test split
    num_glosses: int = 20  # vocabulary size (time words, subjects, objects, verbs, negation)
    num_signers: int = 5  # distinct rendered signers
    heldout_signers: int = 0  # the last k signers appear only in dev/test (signer-independent)
    min_glosses: int = 2  # shortest sentence, in glosses
    max_glosses: int = 5  # longest sentence, in glosses
    frames_per_gloss: float = 7.0  # mean frames of one gloss's own movement at tempo 1
    frame_size: int = 128  # square video side in pixels (even, for the mp4v encoder)
    fps: int = 25  # video frame rate
    difficulty: float = 0.5  # 0..1: detection/video noise, hand dropout, co-articulation, variation

    def __post_init__(self) -> None:
        def need_int(name: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"SynthConfig.{name}={v!r} must be an integer")
            if v < lo or (hi is not None and v > hi):
                bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"SynthConfig.{name}={v!r} must be {bound}")

        need_int("seed", 0)
        need_int("num_train", 1)
        need_int("num_dev", 0)
        need_int("num_test", 0)
        need_int("num_glosses", 3, max_vocabulary())
        need_int("num_signers", 1, 64)
        need_int("heldout_signers", 0, self.num_signers - 1)
        need_int("min_glosses", 1, 12)
        need_int("max_glosses", self.min_glosses, 12)
        need_int("frame_size", 32, 1024)
        need_int("fps", 1, 120)
        if self.frame_size % 2:
            raise ValueError(f"SynthConfig.frame_size={self.frame_size} must be even (mp4v encoder)")
        for name, lo, hi in (("frames_per_gloss", 3.0, 40.0), ("difficulty", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"SynthConfig.{name}={v!r} must be a finite number")
            if not lo <= v <= hi:
                raise ValueError(f"SynthConfig.{name}={v!r} must be in [{lo}, {hi}]")
        if self.heldout_signers and (self.num_dev + self.num_test) == 0:
            raise ValueError(f"SynthConfig.heldout_signers={self.heldout_signers} needs dev/test utterances")

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


PRESETS: dict[str, dict[str, Any]] = {
    # For tests: seconds to generate, small frames, short sentences.
    "tiny": dict(num_train=12, num_dev=4, num_test=4, num_glosses=8, num_signers=2,
                 min_glosses=2, max_glosses=3, frames_per_gloss=6.0, frame_size=64),
    # For `make demo`: every stage end to end in minutes on a laptop CPU.
    "demo": dict(num_train=200, num_dev=40, num_test=40, num_glosses=14, num_signers=4,
                 min_glosses=2, max_glosses=4),
    # The corpus the README's benchmarks and accuracy bars are measured on.
    "default": {},
}


def preset(name: str, **overrides: Any) -> SynthConfig:
    """The named preset with field overrides (e.g. ``preset("tiny", seed=3)``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthsign preset {name!r}; known: {sorted(PRESETS)}")
    return SynthConfig(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------------------------------------
# Phonology: hand shapes, movements, locations, orientations
# ---------------------------------------------------------------------------------------------
# Hand shape = (flex index, middle, ring, pinky in 0..1, finger spread 0..1,
#               thumb abduction in degrees from the index side, thumb curl across the palm 0..1).
HAND_SHAPES: dict[str, tuple[float, ...]] = {
    "flat": (0.0, 0.0, 0.0, 0.0, 0.0, 8.0, 0.35),
    "five": (0.0, 0.0, 0.0, 0.0, 1.0, 60.0, 0.0),
    "fist": (1.0, 1.0, 1.0, 1.0, 0.0, 25.0, 1.0),
    "thumb": (1.0, 1.0, 1.0, 1.0, 0.0, 80.0, 0.0),
    "index": (0.0, 1.0, 1.0, 1.0, 0.0, 25.0, 1.0),
    "L": (0.0, 1.0, 1.0, 1.0, 0.0, 85.0, 0.0),
    "U": (0.0, 0.0, 1.0, 1.0, 0.0, 25.0, 1.0),
    "V": (0.0, 0.0, 1.0, 1.0, 1.0, 25.0, 1.0),
    "W": (0.0, 0.0, 0.0, 1.0, 1.0, 25.0, 1.0),
    "Y": (1.0, 1.0, 1.0, 0.0, 0.6, 80.0, 0.0),
    "claw": (0.55, 0.55, 0.55, 0.55, 1.0, 50.0, 0.4),
    "O": (0.6, 0.65, 0.65, 0.7, 0.1, 30.0, 0.65),
}
REST_SHAPE = (0.25, 0.3, 0.35, 0.4, 0.2, 20.0, 0.3)
# Shape-only minimal pairs take a visually close neighbour, so the pair is really confusable.
SHAPE_NEIGHBOURS = {
    "index": ("V", "L"), "V": ("U", "W", "index"), "U": ("V",), "W": ("V",),
    "fist": ("thumb", "index"), "thumb": ("fist", "Y"), "Y": ("thumb",), "L": ("index",),
    "flat": ("five",), "five": ("flat", "claw"), "claw": ("five", "O"), "O": ("claw",),
}
MOVEMENTS = ("still", "circle", "updown", "sideways", "tap", "arc", "diagonal", "twist")
MOVE_NEIGHBOURS = {
    "circle": ("arc", "updown"), "arc": ("circle", "sideways"),
    "updown": ("tap", "sideways", "circle"), "tap": ("updown", "still"),
    "sideways": ("diagonal", "updown", "arc"), "diagonal": ("sideways",),
    "still": ("twist", "tap"), "twist": ("still",),
}
MOVE_DURATION = {"still": 0.8, "circle": 1.2, "updown": 1.1, "sideways": 1.1, "tap": 1.0,
                 "arc": 1.0, "diagonal": 0.9, "twist": 1.0}
# Wrist position of the dominant (right) hand in body units: origin at the shoulder midpoint,
# x towards the image right (the signer's left), y down, 1 = shoulder width.
LOCATIONS: dict[str, tuple[float, float]] = {
    "neutral": (-0.25, 0.78), "chest": (-0.02, 0.50), "chin": (-0.06, -0.05),
    "forehead": (-0.12, -0.40), "cheek": (-0.40, -0.22), "shoulder": (-0.58, 0.32),
    "side": (-0.72, 0.70), "contra": (0.28, 0.45),
    "base": (-0.05, 0.52),  # above the non-dominant palm (two-handed "base" glosses only)
}
# (roll towards the body midline, yaw turning the palm edge-on), degrees.
ORIENTATIONS: dict[str, tuple[float, float]] = {
    "up": (0.0, 0.0), "tilt": (35.0, 0.0), "across": (80.0, 0.0), "edge": (10.0, 70.0),
}
TWO_HAND = ("none", "base", "mirror")
REST_POS = (-0.30, 1.05)  # dominant wrist at rest (lap); the other hand mirrors it
REST_ROLL = 110.0
ND_BASE = ((0.10, 0.80), 95.0)  # non-dominant wrist and roll in "base" glosses (flat hand)

# Hand skeleton (right hand, palm to camera, fingers up; units: wrist to middle tip ~0.92).
_THUMB_CMC = (-0.09, -0.10)
_THUMB_LEN = (0.16, 0.12, 0.10)
_FINGER_MCP = ((-0.13, -0.44), (-0.04, -0.46), (0.05, -0.44), (0.13, -0.40))
_FINGER_LEN = ((0.22, 0.13, 0.10), (0.24, 0.15, 0.10), (0.22, 0.14, 0.10), (0.17, 0.11, 0.09))
_SPREAD0 = (-2.0, 0.0, 2.0, 4.0)  # finger angles (deg, + = away from the thumb) at spread 0
_SPREAD1 = (-18.0, 4.0, 14.0, 26.0)  # ... at spread 1
_FLEX_MAX = (85.0, 100.0, 70.0)  # MCP, PIP, DIP flexion at flex 1
HAND_UNIT = 0.46  # body units per hand unit: the straight hand is ~0.42 shoulder widths long

# Body geometry (body units).
_SHOULDER = (0.5, 0.0)
_HIP = (0.40, 1.15)
_UPPER_ARM, _FOREARM = 0.78, 0.70
_FACE_CENTRE = (0.0, -0.55)
_FACE_HALF_WIDTH = 0.22  # body units per face unit


# ---------------------------------------------------------------------------------------------
# Lexicon and grammar
# ---------------------------------------------------------------------------------------------
CATEGORY_POOLS: dict[str, tuple[str, ...]] = {
    "time": ("YESTERDAY", "TOMORROW", "TODAY", "NOW", "MORNING", "EVENING", "WEEK", "LATER"),
    "subject": ("I", "YOU", "MOTHER", "FATHER", "FRIEND", "TEACHER", "DOCTOR", "CHILD",
                "SISTER", "BROTHER", "NEIGHBOUR", "STUDENT"),
    "object": ("BOOK", "CAR", "HOUSE", "WATER", "APPLE", "BALL", "WHEELCHAIR", "COFFEE", "BREAD",
               "LETTER", "PHONE", "BICYCLE", "KEY", "FLOWER", "TABLE", "COMPUTER", "MONEY", "TICKET"),
    "verb": ("GIVE", "SEE", "WANT", "LIKE", "BUY", "READ", "MAKE", "FIND", "BRING", "EAT", "DRINK",
             "OPEN", "LOSE", "SELL", "TAKE", "CARRY"),
    "neg": ("NOT",),
}


def max_vocabulary() -> int:
    return sum(len(p) for p in CATEGORY_POOLS.values())


@dataclass(frozen=True)
class Gloss:
    name: str  # the gloss token written to corpus.csv
    category: str  # grammatical slot: time | subject | object | verb | neg
    shape: str  # dominant hand shape (key of HAND_SHAPES)
    movement: str  # movement of the dominant hand (one of MOVEMENTS)
    location: str  # where the dominant wrist is (key of LOCATIONS)
    orientation: str  # palm orientation (key of ORIENTATIONS)
    two_hand: str  # "none": other hand rests; "base": flat other hand; "mirror": symmetric
    mouth: int  # mouthing pattern 0..3 (0 = none)

    def phonology(self) -> tuple[str, str, str, str, str]:
        return (self.shape, self.movement, self.location, self.orientation, self.two_hand)


def _category_counts(n: int) -> dict[str, int]:
    neg = 1 if n >= 6 else 0
    tim = min(len(CATEGORY_POOLS["time"]), max(1, round(0.15 * n))) if n >= 5 else 0
    rest = n - neg - tim
    subj = max(1, round(0.3 * rest))
    verb = max(1, round(0.3 * rest))
    obj = rest - subj - verb
    counts = {"time": tim, "subject": subj, "object": obj, "verb": verb, "neg": neg}
    # Spill over when a pool is too small (large vocabularies).
    order = ("object", "verb", "subject", "time")
    for cat in order:
        extra = counts[cat] - len(CATEGORY_POOLS[cat])
        if extra > 0:
            counts[cat] -= extra
            for other in order:
                room = len(CATEGORY_POOLS[other]) - counts[other]
                take = min(room, extra)
                counts[other] += take
                extra -= take
    return counts


def build_lexicon(seed: int, num_glosses: int) -> tuple[Gloss, ...]:
    """The vocabulary: ``num_glosses`` glosses, about a third of them in minimal pairs.

    Pairs always share a grammatical category, so the grammar cannot tell them apart and a
    recogniser must see the hand shape (shape pairs) or the trajectory (movement pairs).
    """
    rng = np.random.default_rng([seed, 11])
    counts = _category_counts(num_glosses)
    used: set[tuple[str, ...]] = set()

    def random_gloss(name: str, cat: str) -> Gloss:
        while True:
            two = str(rng.choice(TWO_HAND, p=(0.74, 0.12, 0.14)))
            loc = "base" if two == "base" else str(rng.choice([k for k in LOCATIONS if k != "base"]))
            g = Gloss(name, cat, str(rng.choice(sorted(HAND_SHAPES))), str(rng.choice(MOVEMENTS)),
                      loc, str(rng.choice(sorted(ORIENTATIONS))), two,
                      int(rng.choice(4, p=(0.5, 0.2, 0.15, 0.15))))
            if g.phonology() not in used:
                used.add(g.phonology())
                return g

    def variant(base: Gloss, name: str, kind: str) -> Gloss | None:
        options = SHAPE_NEIGHBOURS[base.shape] if kind == "shape" else MOVE_NEIGHBOURS[base.movement]
        for opt in rng.permutation(options):
            g = replace(base, name=name, **{kind if kind == "shape" else "movement": str(opt)})
            if g.phonology() not in used:
                used.add(g.phonology())
                return g
        return None

    names = {c: [str(x) for x in rng.permutation(p)] for c, p in CATEGORY_POOLS.items()}
    pairs_left = num_glosses // 3
    kinds = ("shape", "movement")
    lexicon: list[Gloss] = []
    # Biggest categories first, so the pairs land where there is room.
    for cat in sorted(counts, key=lambda c: (-counts[c], c)):
        made: list[Gloss] = []
        pool = iter(names[cat][: counts[cat]])
        while len(made) < counts[cat]:
            if pairs_left > 0 and counts[cat] - len(made) >= 2:
                base = random_gloss(next(pool), cat)
                name_b = next(pool)
                made.append(base)
                made.append(variant(base, name_b, kinds[pairs_left % 2]) or random_gloss(name_b, cat))
                pairs_left -= 1
            else:
                made.append(random_gloss(next(pool), cat))
        lexicon.extend(made)
    return tuple(lexicon)


def minimal_pairs(lexicon: Iterable[Gloss]) -> list[tuple[Gloss, Gloss, str]]:
    """Pairs of glosses that differ in exactly hand shape or exactly movement (nothing else)."""
    lex = list(lexicon)
    out = []
    for i, a in enumerate(lex):
        for b in lex[i + 1:]:
            same = (a.location == b.location and a.orientation == b.orientation
                    and a.two_hand == b.two_hand and a.mouth == b.mouth)
            if same and a.shape != b.shape and a.movement == b.movement:
                out.append((a, b, "shape"))
            elif same and a.movement != b.movement and a.shape == b.shape:
                out.append((a, b, "movement"))
    return out


class Grammar:
    """``[TIME] SUBJ [OBJ] VERB [NOT]`` clauses (optionally topicalised ``OBJ SUBJ VERB``).

    Words inside a slot follow Zipf-like weights and verbs prefer some objects, so the gloss
    sequence is predictable enough for a language model to help but never decisive.
    """

    def __init__(self, lexicon: tuple[Gloss, ...], seed: int) -> None:
        rng = np.random.default_rng([seed, 12])
        self.words = {c: [g.name for g in lexicon if g.category == c] for c in CATEGORY_POOLS}
        self.weights = {}
        for c, ws in self.words.items():
            w = 1.0 / (1.0 + rng.permutation(len(ws))) ** 0.7
            self.weights[c] = w / w.sum() if len(ws) else w
        nv, no = len(self.words["verb"]), len(self.words["object"])
        self.affinity = rng.choice([0.25, 1.0, 3.0], size=(nv, max(no, 1)), p=(0.3, 0.45, 0.25))

    def _pick(self, rng: np.random.Generator, cat: str, weights: np.ndarray | None = None) -> str:
        w = self.weights[cat] if weights is None else weights / weights.sum()
        return self.words[cat][int(rng.choice(len(w), p=w))]

    def _clause(self, rng: np.random.Generator, first: bool) -> list[str]:
        out = []
        if first and self.words["time"] and rng.random() < 0.35:
            out.append(self._pick(rng, "time"))
        subj = self._pick(rng, "subject") if rng.random() > 0.1 else None
        obj_i = None
        if self.words["object"] and rng.random() < 0.65:
            obj_i = int(rng.choice(len(self.words["object"]), p=self.weights["object"]))
        vw = self.weights["verb"] * (self.affinity[:, obj_i] if obj_i is not None else 1.0)
        verb = self._pick(rng, "verb", vw)
        obj = self.words["object"][obj_i] if obj_i is not None else None
        order = [obj, subj, verb] if obj and rng.random() < 0.15 else [subj, obj, verb]
        out += [w for w in order if w]
        if self.words["neg"] and rng.random() < 0.2:
            out.append(self._pick(rng, "neg"))
        return out

    def sentence(self, rng: np.random.Generator, min_len: int, max_len: int) -> list[str]:
        words: list[str] = []
        for _ in range(200):
            words = self._clause(rng, True)
            while len(words) < min_len:
                words += self._clause(rng, False)
            if len(words) <= max_len:
                return words
        return words[:max_len]


# ---------------------------------------------------------------------------------------------
# Signers
# ---------------------------------------------------------------------------------------------
_SKIN = ((255, 220, 185), (240, 198, 160), (224, 172, 135), (198, 134, 98), (160, 105, 70),
         (112, 74, 52))  # RGB
_HAIR = ((25, 20, 20), (70, 45, 30), (120, 80, 45), (200, 170, 100), (150, 150, 150),
         (150, 60, 30))  # RGB


def _bgr(rgb: Iterable[float]) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(round(c), 0, 255)) for c in rgb)
    return (b, g, r)


def _hsv_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    px = cv2.cvtColor(np.uint8([[[int(h * 179) % 180, int(s * 255), int(v * 255)]]]), cv2.COLOR_HSV2RGB)
    return tuple(float(c) for c in px[0, 0])


@dataclass(frozen=True)
class Signer:
    name: str  # signer id in corpus.csv
    scale: float  # body size (shoulder width multiplier)
    offset: tuple[float, float]  # position of the body in the frame (normalised units)
    speed: float  # frames multiplier (> 1 = slower signing)
    amplitude: float  # movement size multiplier (signing style)
    sway: float  # body sway amplitude (body units)
    skin: tuple[int, int, int]  # BGR
    hair: tuple[int, int, int]  # BGR
    shirt: tuple[int, int, int]  # BGR
    hair_size: float  # hair volume


def make_signer(seed: int, index: int) -> Signer:
    rng = np.random.default_rng([seed, 13, index])
    shirt = _hsv_rgb(rng.random(), rng.uniform(0.35, 0.9), rng.uniform(0.25, 0.75))
    return Signer(
        name=f"signer{index + 1:02d}",
        scale=float(rng.uniform(0.9, 1.05)),
        offset=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.02, 0.03))),
        speed=float(rng.uniform(0.8, 1.25)),
        amplitude=float(rng.uniform(0.8, 1.2)),
        sway=float(rng.uniform(0.0, 0.03)),
        skin=_bgr(_SKIN[int(rng.integers(len(_SKIN)))]),
        hair=_bgr(_HAIR[int(rng.integers(len(_HAIR)))]),
        shirt=_bgr(shirt),
        hair_size=float(rng.uniform(0.95, 1.2)),
    )


# ---------------------------------------------------------------------------------------------
# Geometry: hand skeleton, face template
# ---------------------------------------------------------------------------------------------
def hand_points(shape: np.ndarray, roll: np.ndarray | float = 0.0, yaw: np.ndarray | float = 0.0) -> np.ndarray:
    """Right-hand skeleton in MediaPipe order (wrist, thumb CMC..tip, index MCP..tip, ...).

    Args:
        shape: [T, 7] hand-shape parameters (see HAND_SHAPES).
        roll: [T] or scalar, radians; rotates the fingers in the image plane towards the midline.
        yaw: [T] or scalar, radians; turns the palm edge-on.
    Returns:
        [T, 21, 3] points in hand units, wrist at the origin, y down, z towards the viewer < 0.
    """
    shape = np.atleast_2d(np.asarray(shape, dtype=np.float64))
    t = len(shape)
    pts = np.zeros((t, 21, 3))
    flex, spread = shape[:, :4], shape[:, 4]
    abd, curl = np.radians(shape[:, 5]), shape[:, 6]
    p = np.zeros((t, 3))
    p[:, :2] = _THUMB_CMC
    pts[:, 1] = p
    for k, seg in enumerate(_THUMB_LEN):  # thumb folds medially and towards the viewer
        theta = abd - curl * np.radians(40.0 + 45.0 * k)
        psi = curl * np.radians(25.0 + 15.0 * k)
        p = p + seg * np.stack([-np.sin(theta) * np.cos(psi), -np.cos(theta) * np.cos(psi), -np.sin(psi)], -1)
        pts[:, 2 + k] = p
    for j in range(4):
        a = np.radians(_SPREAD0[j] + spread * (_SPREAD1[j] - _SPREAD0[j]))
        p = np.zeros((t, 3))
        p[:, :2] = _FINGER_MCP[j]
        pts[:, 5 + 4 * j] = p
        phi = np.zeros(t)
        for k in range(3):  # cumulative flexion curls the finger towards the viewer, then back
            phi = phi + flex[:, j] * np.radians(_FLEX_MAX[k])
            d = np.stack([np.sin(a) * np.cos(phi), -np.cos(a) * np.cos(phi), -np.sin(phi)], -1)
            p = p + _FINGER_LEN[j][k] * d
            pts[:, 6 + 4 * j + k] = p
    roll = np.broadcast_to(np.asarray(roll, dtype=np.float64), (t,))
    yaw = np.broadcast_to(np.asarray(yaw, dtype=np.float64), (t,))
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    cw, sw = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    x, z = x * cw + z * sw, -x * sw + z * cw
    cr, sr = np.cos(roll)[:, None], np.sin(roll)[:, None]
    x, y = x * cr - y * sr, x * sr + y * cr
    return np.stack([x, y, z], -1)


def _chain(indices: tuple[int, ...], xs: np.ndarray, ys: np.ndarray, out: np.ndarray) -> None:
    for i, x, y in zip(indices, xs, ys):
        out[i, 0], out[i, 1] = x, y


# Ordered contours of the MediaPipe face mesh (indices into the 468 face points).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)  # signer's right = image left
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_BROW = ((70, 63, 105, 66, 107), (46, 53, 52, 65, 55))
LEFT_BROW = ((300, 293, 334, 296, 336), (276, 283, 282, 295, 285))
NOSE_BRIDGE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2)
NOSE_WINGS = ((64, 48, 115, 220, 45, 98, 97), (294, 278, 344, 440, 275, 327, 326))
LIPS_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
_MOUTH_Y, _MOUTH_W, _OVAL_H = 0.62, 0.42, 1.36


def _face_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face mesh template [468, 3] in face units (half-width 1, y down, z < 0 towards viewer).

    Returns (closed-mouth points, per-point downward shift per unit of mouth opening,
    per-point inward shift of the mouth corners). Contours (oval, eyes, brows, nose, lips) are
    placed where MediaPipe puts them; the rest of the mesh is spread over the face ellipse.
    """
    pts = np.full((468, 3), np.nan)
    ang = np.radians(-90.0 + 10.0 * np.arange(36))
    taper = 1.0 - 0.22 * np.clip(np.sin(ang), 0, None) ** 2  # narrower jaw
    _chain(FACE_OVAL, np.cos(ang) * taper, _OVAL_H * np.sin(ang), pts)
    s = np.linspace(0, 1, 9)
    for sign, up, low in ((-1, RIGHT_EYE_UPPER, RIGHT_EYE_LOWER), (1, LEFT_EYE_UPPER, LEFT_EYE_LOWER)):
        ex = sign * (0.60 - 0.34 * s)  # outer corner to inner corner
        _chain(up, ex, -0.15 - 0.11 * np.sin(np.pi * s), pts)
        _chain(low, ex, -0.15 + 0.07 * np.sin(np.pi * s), pts)
    s5 = np.linspace(0, 1, 5)
    for sign, (upper, lower) in ((-1, RIGHT_BROW), (1, LEFT_BROW)):
        bx = sign * (0.72 - 0.52 * s5)
        _chain(upper, bx, -0.44 - 0.08 * np.sin(np.pi * (0.3 + 0.7 * s5)), pts)
        _chain(lower, bx, -0.38 - 0.06 * np.sin(np.pi * (0.3 + 0.7 * s5)), pts)
    _chain(NOSE_BRIDGE, np.zeros(10), np.linspace(-0.25, 0.40, 10), pts)
    for sign, wing in ((-1, NOSE_WINGS[0]), (1, NOSE_WINGS[1])):
        w = np.linspace(0, 1, len(wing))
        _chain(wing, sign * (0.08 + 0.14 * np.sin(np.pi * w)), 0.05 + 0.32 * w, pts)
    s11 = np.linspace(0, 1, 11)
    lx = _MOUTH_W * (2 * s11 - 1)
    bow = np.sin(np.pi * s11)
    _chain(LIPS_OUTER_UPPER, lx, _MOUTH_Y - 0.10 * bow - 0.03 * np.sin(3 * np.pi * s11) * bow, pts)
    _chain(LIPS_OUTER_LOWER, lx, _MOUTH_Y + 0.12 * bow, pts)
    _chain(LIPS_INNER_UPPER, 0.8 * lx, _MOUTH_Y - 0.02 * bow, pts)
    _chain(LIPS_INNER_LOWER, 0.8 * lx, _MOUTH_Y + 0.02 * bow, pts)
    rest = np.flatnonzero(np.isnan(pts[:, 0]))
    k = np.arange(len(rest)) + 0.5
    r = 0.9 * np.sqrt(k / len(rest))  # sunflower spread over the face ellipse
    th = k * np.pi * (3 - np.sqrt(5))
    pts[rest, 0], pts[rest, 1] = r * np.cos(th), _OVAL_H * 0.95 * r * np.sin(th)
    rad2 = pts[:, 0] ** 2 + (pts[:, 1] / _OVAL_H) ** 2
    pts[:, 2] = -0.6 * np.sqrt(np.clip(1 - rad2, 0, None))
    pts[list(NOSE_BRIDGE), 2] -= 0.35 * np.linspace(0.2, 1, 10)
    drop = np.zeros(468)  # jaw drop per unit mouth opening
    for chain, amount in ((LIPS_OUTER_LOWER, 1.0), (LIPS_INNER_LOWER, 1.0), (LIPS_INNER_UPPER, -0.25)):
        drop[list(chain)] = amount * np.sin(np.pi * s11)
    below = pts[:, 1] > _MOUTH_Y + 0.1  # chin area follows the jaw
    drop[below] = np.maximum(drop[below], 0.6 * np.clip(1 - np.abs(pts[below, 0]), 0, 1))
    narrow = np.zeros(468)  # rounding ("oo") pulls the corners in
    for chain in (LIPS_OUTER_UPPER, LIPS_OUTER_LOWER, LIPS_INNER_UPPER, LIPS_INNER_LOWER):
        narrow[list(chain)] = -(2 * s11 - 1)
    return pts, drop, narrow


_FACE, _FACE_DROP, _FACE_NARROW = _face_template()


def face_points(head_yaw: np.ndarray, mouth_open: np.ndarray, mouth_round: np.ndarray) -> np.ndarray:
    """Face mesh [T, 468, 3] in face units for per-frame head yaw (rad) and mouth state."""
    f = np.broadcast_to(_FACE, (len(head_yaw), 468, 3)).copy()
    f[..., 1] += 0.22 * mouth_open[:, None] * _FACE_DROP
    f[..., 0] += 0.12 * mouth_round[:, None] * _FACE_NARROW
    c, s = np.cos(head_yaw)[:, None], np.sin(head_yaw)[:, None]
    x, z = f[..., 0], f[..., 2]
    f[..., 0], f[..., 2] = x * c - z * s, x * s + z * c
    return f


# ---------------------------------------------------------------------------------------------
# Gloss tracks and utterance timelines
# ---------------------------------------------------------------------------------------------
_CHANNELS = ("dom_x", "dom_y", "dom_roll", "dom_yaw", "nd_x", "nd_y", "nd_roll", "nd_yaw",
             "head_yaw", "mouth_open", "mouth_round")
# State vector per frame: the channels above, then dominant shape (7), then non-dominant shape (7).
_NS = len(_CHANNELS) + 14
_DOM_SHAPE, _ND_SHAPE = slice(len(_CHANNELS), len(_CHANNELS) + 7), slice(len(_CHANNELS) + 7, _NS)
_C = {name: i for i, name in enumerate(_CHANNELS)}


def _movement(name: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dy, droll) of a movement over phase u in [0, 1], in body units / radians."""
    z = np.zeros_like(u)
    two_pi = 2 * np.pi
    if name == "still":
        return z, z, z
    if name == "circle":
        return 0.13 * np.sin(two_pi * u), -0.13 * (1 - np.cos(two_pi * u)), z
    if name == "updown":
        return z, -0.14 * np.sin(two_pi * u), z
    if name == "sideways":
        return 0.15 * np.sin(two_pi * u), z, z
    if name == "tap":
        return z, 0.09 * np.sin(two_pi * u) ** 2, z
    if name == "arc":
        return -0.16 * np.cos(np.pi * u), -0.10 * np.sin(np.pi * u), z
    if name == "diagonal":
        return 0.15 * (2 * u - 1), -0.12 * (2 * u - 1), z
    if name == "twist":
        return z, z, 0.6 * np.sin(two_pi * u)
    raise ValueError(f"unknown movement {name!r}; known: {MOVEMENTS}")


def _rest_state() -> np.ndarray:
    s = np.zeros(_NS)
    s[_C["dom_x"]], s[_C["dom_y"]] = REST_POS
    s[_C["nd_x"]], s[_C["nd_y"]] = -REST_POS[0], REST_POS[1]
    s[_C["dom_roll"]] = s[_C["nd_roll"]] = np.radians(REST_ROLL)
    s[_DOM_SHAPE] = s[_ND_SHAPE] = REST_SHAPE
    return s


def gloss_track(g: Gloss, n: int, amplitude: float = 1.0) -> np.ndarray:
    """The citation form of a gloss over ``n`` frames: state [n, _NS] (no randomness).

    Dominant wrist = location + amplitude * movement; the other hand rests, holds a flat base
    or mirrors the dominant hand about the body midline.
    """
    u = np.linspace(0.0, 1.0, n)
    dx, dy, droll = _movement(g.movement, u)
    s = np.tile(_rest_state(), (n, 1))
    lx, ly = LOCATIONS[g.location]
    roll, yaw = (np.radians(v) for v in ORIENTATIONS[g.orientation])
    s[:, _C["dom_x"]] = lx + amplitude * dx
    s[:, _C["dom_y"]] = ly + amplitude * dy
    s[:, _C["dom_roll"]] = roll + amplitude * droll
    s[:, _C["dom_yaw"]] = yaw
    s[:, _DOM_SHAPE] = HAND_SHAPES[g.shape]
    if g.two_hand == "base":
        (bx, by), broll = ND_BASE
        s[:, _C["nd_x"]], s[:, _C["nd_y"]], s[:, _C["nd_roll"]] = bx, by, np.radians(broll)
        s[:, _C["nd_yaw"]] = 0.0
        s[:, _ND_SHAPE] = HAND_SHAPES["flat"]
    elif g.two_hand == "mirror":
        s[:, _C["nd_x"]] = -s[:, _C["dom_x"]]
        s[:, _C["nd_y"]] = s[:, _C["dom_y"]]
        s[:, _C["nd_roll"]] = s[:, _C["dom_roll"]]
        s[:, _C["nd_yaw"]] = s[:, _C["dom_yaw"]]
        s[:, _ND_SHAPE] = s[:, _DOM_SHAPE]
    if g.category == "neg":  # non-manual marker: head shake
        s[:, _C["head_yaw"]] = 0.35 * np.sin(4 * np.pi * u)
    if g.mouth == 1:
        s[:, _C["mouth_open"]] = np.sin(np.pi * u)
    elif g.mouth == 2:
        s[:, _C["mouth_open"]] = np.sin(2 * np.pi * u) ** 2
    elif g.mouth == 3:
        s[:, _C["mouth_open"]] = 0.4 * np.sin(np.pi * u)
        s[:, _C["mouth_round"]] = np.sin(np.pi * u)
    return s


def gloss_geometry(g: Gloss, n: int = 12) -> dict[str, np.ndarray]:
    """Citation form of a gloss in body units, for inspecting and testing the lexicon.

    Returns ``wrist`` [n, 2] (dominant wrist path), ``hand_local`` [n, 21, 3] (dominant hand in
    its own frame: finger configuration only) and ``hand`` [n, 21, 3] (posed hand + wrist).
    """
    s = gloss_track(g, n)
    local = hand_points(s[:, _DOM_SHAPE])
    posed = hand_points(s[:, _DOM_SHAPE], s[:, _C["dom_roll"]], s[:, _C["dom_yaw"]]) * HAND_UNIT
    wrist = s[:, [_C["dom_x"], _C["dom_y"]]]
    posed[..., :2] += wrist[:, None]
    return {"wrist": wrist, "hand_local": local, "hand": posed}


def _smoothstep(m: int) -> np.ndarray:
    t = np.arange(1, m + 1) / (m + 1)
    return t * t * (3 - 2 * t)


def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth [T, C] along time (edge-padded): co-articulation blends neighbouring glosses."""
    if sigma <= 0.05:
        return x
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([np.repeat(x[:1], r, 0), x, np.repeat(x[-1:], r, 0)])
    out = np.zeros_like(x)
    for i, w in enumerate(k):
        out += w * padded[i:i + len(x)]
    return out


def plan_utterance(glosses: list[Gloss], signer: Signer, cfg: SynthConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Per-frame state [T, _NS] of a sentence and the true gloss spans (name, start, end).

    Rest -> transition -> gloss -> transition -> ... -> rest. Transitions are eased
    interpolations whose length grows with the distance travelled; difficulty adds per-gloss
    variation in tempo, amplitude, position, orientation and finger flexion, and a temporal
    blur of the whole track (co-articulation: neighbouring glosses bleed into each other).
    A few glosses (more at higher difficulty) are sloppy, as in real signing: a reduced
    movement, or a hand shape assimilated towards a neighbouring gloss's. Those tokens are
    genuinely ambiguous within a minimal pair, so no model reaches 0% WER.
    """
    d = cfg.difficulty
    tempo = signer.speed * (1 + 0.15 * d * rng.uniform(-1, 1))
    parts = [np.tile(_rest_state(), (int(rng.integers(2, 5)), 1))]
    spans = []
    t = len(parts[0])
    prev = parts[0][-1]
    for i, g in enumerate(glosses):
        n = max(4, int(round(cfg.frames_per_gloss * MOVE_DURATION[g.movement] * tempo
                             * (1 + 0.3 * d * rng.uniform(-1, 1)))))
        amp = signer.amplitude * (1 + 0.2 * d * rng.uniform(-1, 1))
        sloppy, assimilate, weight = rng.random(), rng.random(), rng.uniform(0.5, 0.8)
        if sloppy < 0.1 * d:  # reduced form: the movement is barely made
            amp *= 0.35
        tr = gloss_track(g, n, amp)
        if assimilate < 0.12 * d and len(glosses) > 1:  # hand shape drifts towards a neighbour's
            other = glosses[i + 1] if i + 1 < len(glosses) else glosses[i - 1]
            tr[:, _DOM_SHAPE] += weight * (np.asarray(HAND_SHAPES[other.shape]) - tr[:, _DOM_SHAPE])
        shift = 0.06 * d * rng.normal(size=2)
        tr[:, _C["dom_x"]] += shift[0]
        tr[:, _C["dom_y"]] += shift[1]
        if g.two_hand == "mirror":
            tr[:, _C["nd_x"]] -= shift[0]
            tr[:, _C["nd_y"]] += shift[1]
        tr[:, _C["dom_roll"]] += np.radians(8.0) * d * rng.normal()
        flex = tr[:, _DOM_SHAPE]
        flex[:, :5] = np.clip(flex[:, :5] + 0.06 * d * rng.normal(size=5), 0, 1)
        dist = float(np.hypot(*(tr[0, [_C["dom_x"], _C["dom_y"]]] - prev[[_C["dom_x"], _C["dom_y"]]])))
        m = max(2, int(round(min(6.0, 1.5 + 3.0 * dist) * tempo)))
        parts.append(prev + _smoothstep(m)[:, None] * (tr[0] - prev))
        t += m
        spans.append((g.name, t, t + n))
        parts.append(tr)
        t += n
        prev = tr[-1]
    rest = _rest_state()
    dist = float(np.hypot(*(rest[[_C["dom_x"], _C["dom_y"]]] - prev[[_C["dom_x"], _C["dom_y"]]])))
    m = max(2, int(round(min(6.0, 1.5 + 3.0 * dist) * tempo)))
    parts.append(prev + _smoothstep(m)[:, None] * (rest - prev))
    parts.append(np.tile(rest, (int(rng.integers(2, 5)), 1)))
    state = _gaussian_smooth(np.concatenate(parts), 1.4 * d)
    return state, spans


# ---------------------------------------------------------------------------------------------
# Skeleton: state -> MediaPipe Holistic keypoints (normalised frame coordinates)
# ---------------------------------------------------------------------------------------------
def _elbow(shoulder: np.ndarray, wrist: np.ndarray, outward: float) -> np.ndarray:
    """Two-link inverse kinematics in 3D: elbow [T, 3] given shoulder and wrist [T, 3].

    Of the circle of valid elbows, take the one nearest a pole pointing down, outwards and
    back, as a relaxed arm does; forearm foreshortening in z keeps the 2D picture natural.
    """
    v = wrist - shoulder
    dist = np.clip(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6, None)
    u = v / dist
    dc = np.clip(dist, abs(_UPPER_ARM - _FOREARM) + 1e-3, _UPPER_ARM + _FOREARM - 1e-3)
    a = (_UPPER_ARM ** 2 - _FOREARM ** 2 + dc ** 2) / (2 * dc)
    h = np.sqrt(np.clip(_UPPER_ARM ** 2 - a ** 2, 0, None))
    pole = np.array([0.5 * outward, 1.0, 0.3])
    perp = pole - (u @ pole)[:, None] * u  # pole direction, orthogonal to the shoulder-wrist line
    perp /= np.clip(np.linalg.norm(perp, axis=-1, keepdims=True), 1e-6, None)
    return shoulder + a * u + h * perp


def skeleton(state: np.ndarray, signer: Signer, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Clean keypoints [T, 543, 3]: x, y in [0, 1] of the frame, z relative depth (same scale).

    Body units are mapped to the frame by the signer's size and position plus a slow sway.
    """
    t = len(state)
    width = 0.42 * signer.scale  # shoulder width in frame units
    phase = rng.uniform(0, 2 * np.pi, size=2)
    k = np.arange(t)
    sway = signer.sway * (0.5 + difficulty) * np.stack(
        [np.sin(2 * np.pi * k / 60 + phase[0]), 0.4 * np.sin(2 * np.pi * k / 45 + phase[1])], -1)
    origin = np.array([0.5 + signer.offset[0], 0.46 + signer.offset[1]]) + width * sway  # [T, 2]

    def to_frame(p_body: np.ndarray) -> np.ndarray:  # [T, 2] body units -> frame units
        return origin + width * p_body

    kp = np.zeros((t, NUM_POINTS, 3))
    pose = kp[:, : layouts.POSE[1]]
    sh_r, sh_l = np.array([-_SHOULDER[0], _SHOULDER[1]]), np.array(_SHOULDER)
    hip_r, hip_l = np.array([-_HIP[0], _HIP[1]]), np.array(_HIP)
    pose[:, 12, :2], pose[:, 11, :2] = to_frame(sh_r), to_frame(sh_l)
    pose[:, 24, :2], pose[:, 23, :2] = to_frame(hip_r), to_frame(hip_l)

    # Hands: dominant = signer's right (image left) = MediaPipe RIGHT_HAND; the left mirrors x.
    hands = {}
    for side, pre, mirror in (("right", "dom", 1.0), ("left", "nd", -1.0)):
        local = hand_points(state[:, _DOM_SHAPE if pre == "dom" else _ND_SHAPE],
                            state[:, _C[f"{pre}_roll"]], state[:, _C[f"{pre}_yaw"]])
        local[..., 0] *= mirror
        wrist_b = state[:, [_C[f"{pre}_x"], _C[f"{pre}_y"]]]  # [T, 2] body units
        pts = np.zeros((t, 21, 3))
        pts[..., :2] = to_frame(wrist_b)[:, None] + width * HAND_UNIT * local[..., :2]
        pts[..., 2] = width * HAND_UNIT * local[..., 2]
        hands[side] = (wrist_b, pts)
    kp[:, slice(*layouts.RIGHT_HAND)] = hands["right"][1]
    kp[:, slice(*layouts.LEFT_HAND)] = hands["left"][1]

    # Arms (pose 13-22): elbow by IK; wrist comes forward as the hand rises.
    for side, shoulder_b, sign, ids in (("right", sh_r, -1.0, (12, 14, 16, 18, 20, 22)),
                                        ("left", sh_l, 1.0, (11, 13, 15, 17, 19, 21))):
        wrist_b, pts = hands[side]
        _, elbow_i, wrist_i, pinky_i, index_i, thumb_i = ids
        rise = np.clip((REST_POS[1] - wrist_b[:, 1]) / 1.4, 0, 1)
        wrist3 = np.concatenate([wrist_b, -0.5 * rise[:, None]], -1)  # raised hands come forward
        shoulder3 = np.broadcast_to(np.r_[shoulder_b, 0.0], wrist3.shape)
        elbow3 = _elbow(shoulder3, wrist3, sign)
        wz = width * wrist3[:, 2]
        pose[:, elbow_i, :2], pose[:, elbow_i, 2] = to_frame(elbow3[:, :2]), width * elbow3[:, 2]
        pose[:, wrist_i, :2], pose[:, wrist_i, 2] = pts[:, 0, :2], wz
        for pid, hid in ((pinky_i, 17), (index_i, 5), (thumb_i, 2)):
            pose[:, pid, :2], pose[:, pid, 2] = pts[:, hid, :2], wz + pts[:, hid, 2]

    # Face: template scaled to the head, head shake and mouthing from the state.
    face_u = face_points(state[:, _C["head_yaw"]], state[:, _C["mouth_open"]], state[:, _C["mouth_round"]])
    fscale = width * _FACE_HALF_WIDTH
    nod = 0.02 * np.sin(2 * np.pi * k / 50 + phase[1])
    centre = to_frame(np.stack([np.zeros(t), np.full(t, _FACE_CENTRE[1]) + nod], -1))
    face = kp[:, slice(*layouts.FACE)]
    face[..., :2] = centre[:, None] + fscale * face_u[..., :2]
    face[..., 2] = fscale * face_u[..., 2]

    # Pose head points from the face mesh (nose, eyes, ears, mouth corners).
    eye = lambda up, low: 0.5 * (face[:, up[4]] + face[:, low[4]])  # noqa: E731
    pose[:, 0] = face[:, 1]
    pose[:, 1], pose[:, 2], pose[:, 3] = face[:, 362], eye(LEFT_EYE_UPPER, LEFT_EYE_LOWER), face[:, 263]
    pose[:, 4], pose[:, 5], pose[:, 6] = face[:, 133], eye(RIGHT_EYE_UPPER, RIGHT_EYE_LOWER), face[:, 33]
    pose[:, 7] = face[:, 454] + np.array([0.08 * fscale, -0.25 * fscale, 0.3 * fscale])
    pose[:, 8] = face[:, 234] + np.array([-0.08 * fscale, -0.25 * fscale, 0.3 * fscale])
    pose[:, 9], pose[:, 10] = face[:, 291], face[:, 61]
    pose[:, :11, 2] -= 0.3 * width  # the head is in front of the hips
    return kp


# ---------------------------------------------------------------------------------------------
# Detection noise
# ---------------------------------------------------------------------------------------------
_LEGS = np.arange(25, 33)  # knees, ankles, heels, feet: below the frame, never detected


def detect(kp: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a landmark detector: jitter, dropped hands (runs of frames), legs out of view.

    A hand's detection is a two-state Markov chain whose chance of losing the hand grows with
    the hand's speed (motion blur), closeness to the face or the other hand, and difficulty.
    At difficulty 0 every hand is detected and nothing is jittered.
    Returns (keypoints float32 [T, 543, 3] on a 1/4096 grid, mask bool [T, 543]).
    """
    d = cfg.difficulty
    t = len(kp)
    out = kp.copy()
    mask = np.ones((t, NUM_POINTS), dtype=bool)
    mask[:, _LEGS] = False
    width = float(np.linalg.norm(kp[0, 11, :2] - kp[0, 12, :2]))
    if d > 0:
        for (a, b), sigma, common in ((layouts.POSE, 0.004, 0.003), (layouts.FACE, 0.0015, 0.003),
                                      (layouts.LEFT_HAND, 0.004, 0.005), (layouts.RIGHT_HAND, 0.004, 0.005)):
            out[:, a:b] += d * sigma * rng.normal(size=(t, b - a, 3))
            out[:, a:b, :2] += d * common * rng.normal(size=(t, 1, 2))
    nose = kp[:, 0, :2]
    wrists = {h: kp[:, h[0], :2] for h in (layouts.LEFT_HAND, layouts.RIGHT_HAND)}
    for (a, b), other in ((layouts.LEFT_HAND, layouts.RIGHT_HAND), (layouts.RIGHT_HAND, layouts.LEFT_HAND)):
        w = wrists[(a, b)]
        speed = np.r_[0.0, np.linalg.norm(np.diff(w, axis=0), axis=-1)] / width  # body units / frame
        near_face = np.linalg.norm(w - nose, axis=-1) < 0.45 * width
        near_other = np.linalg.norm(w - wrists[other], axis=-1) < 0.3 * width
        low = w[:, 1] > 0.88
        p_lose = d * (0.015 + 0.6 * np.clip(speed, 0, 0.3) + 0.08 * near_face + 0.08 * near_other + 0.04 * low)
        u = rng.random(t)
        seen = np.ones(t, dtype=bool)
        state = bool(rng.random() >= p_lose[0])
        for i in range(t):
            state = (u[i] >= p_lose[i]) if state else (u[i] < 0.45)
            seen[i] = state
        inside = ((w >= 0) & (w <= 1)).all(-1)  # a hand whose wrist left the frame is not found
        mask[:, a:b] &= (seen & inside)[:, None]
    out[..., :2] = np.clip(out[..., :2], 0.0, 1.0)
    out[~mask] = 0.0
    out = np.round(out * _QUANT) / _QUANT
    return out.astype(np.float32), mask


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel accurate drawing
_AA = cv2.LINE_AA


def _background(rng: np.random.Generator, size: int, avoid: list[tuple[int, int, int]]) -> np.ndarray:
    """A plain, gradient, striped or blotchy backdrop whose colour keeps clear of the signer's."""
    for _ in range(20):
        base = np.array(_bgr(_hsv_rgb(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.45, 0.95))), float)
        if min(np.abs(base - np.array(c, float)).sum() for c in avoid) > 120:
            break
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:
        field = np.zeros((size, size))
    elif kind == 1:
        field = (yy - 0.5) * rng.uniform(0.3, 0.6)
    elif kind == 2:
        field = 0.12 * np.sin(2 * np.pi * (xx * rng.uniform(2, 6) + rng.random()))
    else:
        small = rng.normal(size=(6, 6))
        field = 0.12 * cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    img = base[None, None] * (1 + field[..., None])
    return np.clip(img, 0, 255).astype(np.uint8)


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)  # type: ignore[return-value]


_FINGER_CHAINS = np.array([[1, 2, 3, 4]] + [[5 + 4 * j + k for k in range(4)] for j in range(4)])
_PALM = np.array([0, 1, 5, 9, 13, 17])


class _Painter:
    """Draws the frames of one utterance from its clean keypoints (the geometry of the npz).

    Everything that can be is computed once for the whole utterance in numpy, so the per-frame
    work is only the OpenCV drawing calls.
    """

    def __init__(self, signer: Signer, size: int, kp: np.ndarray) -> None:
        self.s = signer
        self.skin_dark = _shade(signer.skin, 0.62)
        self.sleeve = _shade(signer.shirt, 0.82)
        self.lip = _bgr((150, 60, 60)) if sum(signer.skin) > 450 else _bgr((95, 45, 40))
        self.mouth = (30, 20, 45)
        self.eye = (35, 30, 30)
        unit = 1 << _SHIFT
        self.fx = np.round(kp[..., :2] * size * unit).astype(np.int32)  # [T, 543, 2] fixed point
        self.ix = {name: np.asarray(ix) + layouts.FACE[0] for name, ix in (
            ("oval", FACE_OVAL), ("eye_r", RIGHT_EYE_UPPER + RIGHT_EYE_LOWER[::-1]),
            ("eye_l", LEFT_EYE_UPPER + LEFT_EYE_LOWER[::-1]), ("brow_r", RIGHT_BROW[0]),
            ("brow_l", LEFT_BROW[0]), ("nose", NOSE_BRIDGE[:7]),
            ("lips", LIPS_OUTER_UPPER + LIPS_OUTER_LOWER[::-1]),
            ("mouth", LIPS_INNER_UPPER + LIPS_INNER_LOWER[::-1]))}
        w_px = np.linalg.norm(kp[:, 11, :2] - kp[:, 12, :2], axis=-1) * size  # shoulder width [T]
        oval = self.fx[:, self.ix["oval"]].astype(np.float64)  # [T, 36, 2]
        centre, half = oval.mean(1), (oval.max(1) - oval.min(1)) / 2
        self.hair = np.stack([centre[:, 0], centre[:, 1] - 0.16 * half[:, 1],
                              half[:, 0] * 1.12 * signer.hair_size, half[:, 1] * 1.04], -1).astype(int).tolist()
        mid = (self.fx[:, 11] + self.fx[:, 12]) // 2
        nw = (0.11 * w_px * unit).astype(np.int32)
        top = centre[:, 1].astype(np.int32)
        self.neck = np.stack([np.stack([mid[:, 0] - nw, top], -1), np.stack([mid[:, 0] + nw, top], -1),
                              np.stack([mid[:, 0] + nw, mid[:, 1]], -1), np.stack([mid[:, 0] - nw, mid[:, 1]], -1)],
                             1).astype(np.int32)  # [T, 4, 2]
        self.r_shoulder = (0.13 * w_px * unit).astype(int).tolist()
        self.r_ear = (0.05 * w_px * unit).astype(int).tolist()
        self.thick = np.stack([np.maximum(2, np.round(0.2 * w_px)), np.maximum(2, np.round(0.16 * w_px)),
                               np.maximum(1, np.round(0.035 * w_px))], -1).astype(int).tolist()
        # Finger drawing order per frame and hand: far fingers first, near ones on top.
        self.order = {}
        for h0 in (layouts.LEFT_HAND[0], layouts.RIGHT_HAND[0]):
            zc = kp[:, h0 + _FINGER_CHAINS, 2].mean(-1)  # [T, 5]
            self.order[h0] = np.argsort(-zc, axis=1, kind="stable")

    def draw(self, img: np.ndarray, t: int) -> None:
        """Paint frame ``t`` onto ``img`` (BGR uint8, the background)."""
        fx, s, ix = self.fx[t], self.s, self.ix
        pts = fx.tolist()
        px = lambda i: tuple(pts[i])  # noqa: E731
        poly = lambda i: fx[i].reshape(-1, 1, 2)  # noqa: E731
        thick_u, thick_f, finger = self.thick[t]
        hx, hy, ha, hb = self.hair[t]
        # Hair (behind the head), neck, torso, shoulders.
        cv2.ellipse(img, (hx, hy), (ha, hb), 0, 0, 360, s.hair, -1, _AA, _SHIFT)
        cv2.fillPoly(img, [self.neck[t].reshape(-1, 1, 2)], self.skin_dark, _AA, _SHIFT)
        cv2.fillPoly(img, [poly([12, 11, 23, 24])], s.shirt, _AA, _SHIFT)
        cv2.circle(img, px(11), self.r_shoulder[t], s.shirt, -1, _AA, _SHIFT)
        cv2.circle(img, px(12), self.r_shoulder[t], s.shirt, -1, _AA, _SHIFT)
        # Head: ears, face, brows, eyes, nose, lips.
        cv2.circle(img, px(7), self.r_ear[t], self.skin_dark, -1, _AA, _SHIFT)
        cv2.circle(img, px(8), self.r_ear[t], self.skin_dark, -1, _AA, _SHIFT)
        cv2.fillPoly(img, [poly(ix["oval"])], s.skin, _AA, _SHIFT)
        cv2.polylines(img, [poly(ix["brow_r"]), poly(ix["brow_l"])], False, s.hair, 1, _AA, _SHIFT)
        cv2.fillPoly(img, [poly(ix["eye_r"]), poly(ix["eye_l"])], self.eye, _AA, _SHIFT)
        cv2.polylines(img, [poly(ix["nose"])], False, self.skin_dark, 1, _AA, _SHIFT)
        cv2.fillPoly(img, [poly(ix["lips"])], self.lip, _AA, _SHIFT)
        cv2.fillPoly(img, [poly(ix["mouth"])], self.mouth, _AA, _SHIFT)
        # Arms and hands: the non-dominant (left) side first, the dominant hand on top.
        for shoulder, elbow, wrist, h0 in ((11, 13, 15, layouts.LEFT_HAND[0]), (12, 14, 16, layouts.RIGHT_HAND[0])):
            cv2.line(img, px(shoulder), px(elbow), self.sleeve, thick_u, _AA, _SHIFT)
            cv2.line(img, px(elbow), px(wrist), self.sleeve, thick_f, _AA, _SHIFT)
            hand = fx[h0:h0 + 21]
            palm = hand[_PALM].reshape(-1, 1, 2)
            cv2.fillPoly(img, [palm], s.skin, _AA, _SHIFT)
            cv2.polylines(img, [palm], True, self.skin_dark, 1, _AA, _SHIFT)
            for c in self.order[h0][t]:
                line = hand[_FINGER_CHAINS[c]].reshape(-1, 1, 2)
                cv2.polylines(img, [line], False, self.skin_dark, finger + 2, _AA, _SHIFT)
                cv2.polylines(img, [line], False, s.skin, finger, _AA, _SHIFT)


class _Camera:
    """Video degradation scaled by difficulty: blur, flicker of illumination, sensor noise, JPEG."""

    def __init__(self, difficulty: float, size: int, rng: np.random.Generator, t: int) -> None:
        self.d = difficulty
        self.blur = 0.9 * difficulty * size / 128
        walk = np.cumsum(rng.normal(size=(t, 2)), 0) / np.sqrt(np.arange(1, t + 1))[:, None]
        self.gain = 1 + 0.12 * difficulty * np.tanh(walk[:, 0])
        self.bias = 12 * difficulty * np.tanh(walk[:, 1])
        self.quality = int(95 - 50 * difficulty)
        # Sensor noise: one field per utterance, a random window of it per frame (cheap).
        self.margin = 32
        bank = rng.normal(0.0, 6.0 * difficulty, size=(size + self.margin, size + self.margin, 3))
        self.noise = np.round(bank).astype(np.int16)
        self.offsets = rng.integers(0, self.margin, size=(t, 2))
        self.size = size

    def __call__(self, img: np.ndarray, i: int) -> np.ndarray:
        if self.d <= 0:
            return img
        if self.blur > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), self.blur)
        img = cv2.convertScaleAbs(img, alpha=float(self.gain[i]), beta=float(self.bias[i]))
        oy, ox = self.offsets[i]
        img = cv2.add(img, self.noise[oy:oy + self.size, ox:ox + self.size], dtype=cv2.CV_8U)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else img


def render_video(path: Path, kp_clean: np.ndarray, signer: Signer, cfg: SynthConfig,
                 rng: np.random.Generator) -> None:
    """Write the mp4 (mp4v) of one utterance: frame t is drawn from kp_clean[t]."""
    size = cfg.frame_size
    bg = _background(rng, size, [signer.shirt, signer.skin])
    painter = _Painter(signer, size, kp_clean)
    camera = _Camera(cfg.difficulty, size, rng, len(kp_clean))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(cfg.fps), (size, size), True)
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an mp4v writer; check the opencv-contrib-python install")
    try:
        for i in range(len(kp_clean)):
            img = bg.copy()
            painter.draw(img, i)
            writer.write(camera(img, i))
    finally:
        writer.release()


# ---------------------------------------------------------------------------------------------
# Corpus writing
# ---------------------------------------------------------------------------------------------
def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Compressed npz with fixed zip timestamps: the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)


@dataclass(frozen=True)
class _Item:
    id: str
    split: str
    signer: int
    glosses: tuple[str, ...]


def plan_corpus(cfg: SynthConfig) -> list[_Item]:
    """Every utterance's id, split, signer and sentence (cheap; no rendering)."""
    lexicon = build_lexicon(cfg.seed, cfg.num_glosses)
    grammar = Grammar(lexicon, cfg.seed)
    seen_signers = cfg.num_signers - cfg.heldout_signers
    sw = np.random.default_rng([cfg.seed, 14]).uniform(0.6, 1.4, size=cfg.num_signers)
    items: list[_Item] = []
    train_vocab: set[str] = set()
    counts = (cfg.num_train, cfg.num_dev, cfg.num_test)
    for si, (split, count) in enumerate(zip(SPLIT_NAMES, counts)):
        rng = np.random.default_rng([cfg.seed, 15, si])
        pool = np.arange(seen_signers) if split == "train" or not cfg.heldout_signers else \
            np.arange(seen_signers, cfg.num_signers)
        p = sw[pool] / sw[pool].sum()
        for i in range(count):
            words = grammar.sentence(rng, cfg.min_glosses, cfg.max_glosses)
            if split != "train":  # dev/test never need a gloss the train split lacks
                for _ in range(300):
                    if set(words) <= train_vocab:
                        break
                    words = grammar.sentence(rng, cfg.min_glosses, cfg.max_glosses)
            else:
                train_vocab.update(words)
            signer = int(pool[int(rng.choice(len(pool), p=p))])
            items.append(_Item(f"{split}_{i + 1:04d}", split, signer, tuple(words)))
    return items


def _render_item(item: _Item, split_index: int, index: int, cfg: SynthConfig, signers: list[Signer],
                 by_name: dict[str, Gloss], root: Path) -> dict[str, Any]:
    rng = np.random.default_rng([cfg.seed, 16, split_index, index])
    signer = signers[item.signer]
    state, spans = plan_utterance([by_name[w] for w in item.glosses], signer, cfg, rng)
    kp_clean = skeleton(state, signer, rng, cfg.difficulty)
    kp, mask = detect(kp_clean, cfg, np.random.default_rng([cfg.seed, 17, split_index, index]))
    write_npz(root / "keypoints" / f"{item.id}.npz", {"keypoints": kp, "mask": mask})
    render_video(root / "videos" / f"{item.id}.mp4", kp_clean, signer, cfg,
                 np.random.default_rng([cfg.seed, 18, split_index, index]))
    return {"id": item.id, "num_frames": len(kp), "spans": [[g, s, e] for g, s, e in spans],
            "hand_seen": [float(mask[:, layouts.RIGHT_HAND[0]].mean()), float(mask[:, layouts.LEFT_HAND[0]].mean())]}


def _config_record(cfg: SynthConfig) -> dict[str, Any]:
    return {"generator": "synthsign", "format_version": FORMAT_VERSION, "config": cfg.to_dict()}


def is_complete(out: str | os.PathLike, cfg: SynthConfig) -> bool:
    """True when ``out`` holds a finished corpus generated with exactly ``cfg``."""
    out = Path(out)
    try:
        meta = json.loads((out / "synthsign.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    record = _config_record(cfg)
    return (out / ".done").is_file() and all(meta.get(k) == v for k, v in record.items())


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("synthsign {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), transient=False)


def generate(cfg: SynthConfig, out: str | os.PathLike, progress: bool = True) -> Path:
    """Generate the corpus into ``out`` (idempotent) and return its path.

    A folder already holding a finished corpus of the same config is returned untouched. A
    synthsign folder of another config (or an unfinished one) is replaced: the new corpus is
    written into a temporary sibling folder and swapped in only once complete, so an
    interrupted run never leaves a half-written corpus under ``out``. A non-empty folder that
    is not a synthsign corpus is refused rather than deleted.
    """
    out = Path(out)
    if is_complete(out, cfg):
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "synthsign.json").exists())):
        raise FileExistsError(f"{out}: exists and is not a synthsign corpus; pass another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the corpus is an ordinary folder
        _write_corpus(cfg, tmp, progress)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "corpus")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_corpus(cfg: SynthConfig, root: Path, progress: bool) -> None:
    started = time.perf_counter()
    (root / "videos").mkdir()
    (root / "keypoints").mkdir()
    lexicon = build_lexicon(cfg.seed, cfg.num_glosses)
    by_name = {g.name: g for g in lexicon}
    signers = [make_signer(cfg.seed, i) for i in range(cfg.num_signers)]
    items = plan_corpus(cfg)
    split_index = {s: i for i, s in enumerate(SPLIT_NAMES)}
    results = []
    bar = _progress(progress)
    task = bar.add_task("rendering", total=len(items)) if bar else None
    if bar:
        bar.start()
    try:
        for item in items:
            index = int(item.id.rsplit("_", 1)[1]) - 1
            results.append(_render_item(item, split_index[item.split], index, cfg, signers, by_name, root))
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()
    # num_frames spares the reader opening every keypoint file to count frames (fast re-runs)
    frames_of = {r["id"]: r["num_frames"] for r in results}
    rows = ["id|split|signer|glosses|video|fps|num_frames"]
    rows += [f"{it.id}|{it.split}|{signers[it.signer].name}|{' '.join(it.glosses)}|videos/{it.id}.mp4|{cfg.fps}|"
             f"{frames_of[it.id]}" for it in items]
    (root / "corpus.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "alignments.jsonl").write_text(
        "".join(json.dumps({"id": r["id"], "num_frames": r["num_frames"], "spans": r["spans"]}) + "\n"
                for r in results), encoding="utf-8")
    frames = np.array([r["num_frames"] for r in results])
    seen = np.array([r["hand_seen"] for r in results])
    weights = frames / frames.sum()
    meta = {
        **_config_record(cfg),
        "layout": layouts.HOLISTIC_543,
        "dominant_hand": "right",
        "lexicon": [asdict(g) for g in lexicon],
        "minimal_pairs": [[a.name, b.name, kind] for a, b, kind in minimal_pairs(lexicon)],
        "signers": [asdict(s) for s in signers],
        "stats": {
            "utterances": {s: sum(it.split == s for it in items) for s in SPLIT_NAMES},
            "frames_total": int(frames.sum()),
            "frames_mean": round(float(frames.mean()), 2),
            "frames_min": int(frames.min()),
            "frames_max": int(frames.max()),
            "right_hand_detected": round(float(weights @ seen[:, 0]), 4),
            "left_hand_detected": round(float(weights @ seen[:, 1]), 4),
            "seconds": round(time.perf_counter() - started, 1),
        },
    }
    (root / "synthsign.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (root / ".done").write_text(f"{len(items)} utterances\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _load_yaml_config(path: str) -> dict[str, Any]:
    from preprocess.configs import check_keys, load_yaml

    data = load_yaml(path, "synthsign config")
    check_keys(data, {f.name for f in fields(SynthConfig)} | {"preset"}, str(path), "synthsign fields")
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m preprocess.synthsign",
                                 description="Generate the synthsign corpus (videos + MediaPipe-layout keypoints).")
    ap.add_argument("--out", default="data/synthsign", help="output folder (default: data/synthsign)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="size preset (default: default)")
    ap.add_argument("--config", help="YAML file of SynthConfig fields (may name a preset)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in fields(SynthConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=None,
                        help=f"override SynthConfig.{f.name} (default {f.default})")
    args = ap.parse_args(argv)
    try:
        values: dict[str, Any] = _load_yaml_config(args.config) if args.config else {}
        name = args.preset or values.pop("preset", None) or "default"
        values.pop("preset", None)
        values.update({f.name: getattr(args, f.name) for f in fields(SynthConfig)
                       if getattr(args, f.name) is not None})
        cfg = preset(name, **values)
        if is_complete(args.out, cfg):
            print(f"synthsign: {args.out} is up to date ({cfg.num_train + cfg.num_dev + cfg.num_test} utterances)")
            return 0
        out = generate(cfg, args.out, progress=not args.quiet)
    except (ValueError, FileExistsError, TypeError) as e:
        print(f"synthsign: error: {e}", file=sys.stderr)
        return 2
    stats = json.loads((out / "synthsign.json").read_text(encoding="utf-8"))["stats"]
    print(f"synthsign: wrote {out}: {stats['utterances']}, {stats['frames_total']} frames "
          f"(mean {stats['frames_mean']}), hands detected R {stats['right_hand_detected']:.1%} "
          f"L {stats['left_hand_detected']:.1%}, {stats['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
