"""Signers: body size, position, tempo, signing style and colours, derived from the seed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np


_SKIN = ((255, 220, 185), (240, 198, 160), (224, 172, 135), (198, 134, 98), (160, 105, 70),
         (112, 74, 52))  # RGB
_HAIR = ((25, 20, 20), (70, 45, 30), (120, 80, 45), (200, 170, 100), (150, 150, 150),
         (150, 60, 30))  # RGB


def bgr(rgb: Iterable[float]) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(round(c), 0, 255)) for c in rgb)
    return (b, g, r)


def hsv_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
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
    shirt = hsv_rgb(rng.random(), rng.uniform(0.35, 0.9), rng.uniform(0.25, 0.75))
    return Signer(
        name=f"signer{index + 1:02d}",
        scale=float(rng.uniform(0.9, 1.05)),
        offset=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.02, 0.03))),
        speed=float(rng.uniform(0.8, 1.25)),
        amplitude=float(rng.uniform(0.8, 1.2)),
        sway=float(rng.uniform(0.0, 0.03)),
        skin=bgr(_SKIN[int(rng.integers(len(_SKIN)))]),
        hair=bgr(_HAIR[int(rng.integers(len(_HAIR)))]),
        shirt=bgr(shirt),
        hair_size=float(rng.uniform(0.95, 1.2)),
    )
