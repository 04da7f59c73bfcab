"""Motion: a gloss's citation track and a sentence's per-frame state (transitions, variation, blur).

The state of one frame is a vector: wrist positions, roll and yaw of both hands, head yaw,
mouth opening and rounding, then both hands' shape parameters (see ``CHANNELS``).
"""
from __future__ import annotations

import math

import numpy as np

from preprocess.synthsign.config import SynthConfig
from preprocess.synthsign.geometry import HAND_UNIT, hand_points
from preprocess.synthsign.lexicon import (HAND_SHAPES, LOCATIONS, MOVE_DURATION, MOVEMENTS, ND_BASE, ORIENTATIONS,
                                          REST_POS, REST_ROLL, REST_SHAPE, Gloss)
from preprocess.synthsign.signer import Signer


CHANNELS = ("dom_x", "dom_y", "dom_roll", "dom_yaw", "nd_x", "nd_y", "nd_roll", "nd_yaw",
             "head_yaw", "mouth_open", "mouth_round")
# State vector per frame: the channels above, then dominant shape (7), then non-dominant shape (7).
STATE_SIZE = len(CHANNELS) + 14
DOM_SHAPE, ND_SHAPE = slice(len(CHANNELS), len(CHANNELS) + 7), slice(len(CHANNELS) + 7, STATE_SIZE)
CH = {name: i for i, name in enumerate(CHANNELS)}


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
    s = np.zeros(STATE_SIZE)
    s[CH["dom_x"]], s[CH["dom_y"]] = REST_POS
    s[CH["nd_x"]], s[CH["nd_y"]] = -REST_POS[0], REST_POS[1]
    s[CH["dom_roll"]] = s[CH["nd_roll"]] = np.radians(REST_ROLL)
    s[DOM_SHAPE] = s[ND_SHAPE] = REST_SHAPE
    return s


def gloss_track(g: Gloss, n: int, amplitude: float = 1.0) -> np.ndarray:
    """The citation form of a gloss over ``n`` frames: state [n, STATE_SIZE] (no randomness).

    Dominant wrist = location + amplitude * movement; the other hand rests, holds a flat base
    or mirrors the dominant hand about the body midline.
    """
    u = np.linspace(0.0, 1.0, n)
    dx, dy, droll = _movement(g.movement, u)
    s = np.tile(_rest_state(), (n, 1))
    lx, ly = LOCATIONS[g.location]
    roll, yaw = (np.radians(v) for v in ORIENTATIONS[g.orientation])
    s[:, CH["dom_x"]] = lx + amplitude * dx
    s[:, CH["dom_y"]] = ly + amplitude * dy
    s[:, CH["dom_roll"]] = roll + amplitude * droll
    s[:, CH["dom_yaw"]] = yaw
    s[:, DOM_SHAPE] = HAND_SHAPES[g.shape]
    if g.two_hand == "base":
        (bx, by), broll = ND_BASE
        s[:, CH["nd_x"]], s[:, CH["nd_y"]], s[:, CH["nd_roll"]] = bx, by, np.radians(broll)
        s[:, CH["nd_yaw"]] = 0.0
        s[:, ND_SHAPE] = HAND_SHAPES["flat"]
    elif g.two_hand == "mirror":
        s[:, CH["nd_x"]] = -s[:, CH["dom_x"]]
        s[:, CH["nd_y"]] = s[:, CH["dom_y"]]
        s[:, CH["nd_roll"]] = s[:, CH["dom_roll"]]
        s[:, CH["nd_yaw"]] = s[:, CH["dom_yaw"]]
        s[:, ND_SHAPE] = s[:, DOM_SHAPE]
    if g.category == "neg":  # non-manual marker: head shake
        s[:, CH["head_yaw"]] = 0.35 * np.sin(4 * np.pi * u)
    if g.mouth == 1:
        s[:, CH["mouth_open"]] = np.sin(np.pi * u)
    elif g.mouth == 2:
        s[:, CH["mouth_open"]] = np.sin(2 * np.pi * u) ** 2
    elif g.mouth == 3:
        s[:, CH["mouth_open"]] = 0.4 * np.sin(np.pi * u)
        s[:, CH["mouth_round"]] = np.sin(np.pi * u)
    return s


def gloss_geometry(g: Gloss, n: int = 12) -> dict[str, np.ndarray]:
    """Citation form of a gloss in body units, for inspecting and testing the lexicon.

    Returns ``wrist`` [n, 2] (dominant wrist path), ``hand_local`` [n, 21, 3] (dominant hand in
    its own frame: finger configuration only) and ``hand`` [n, 21, 3] (posed hand + wrist).
    """
    s = gloss_track(g, n)
    local = hand_points(s[:, DOM_SHAPE])
    posed = hand_points(s[:, DOM_SHAPE], s[:, CH["dom_roll"]], s[:, CH["dom_yaw"]]) * HAND_UNIT
    wrist = s[:, [CH["dom_x"], CH["dom_y"]]]
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
    """Per-frame state [T, STATE_SIZE] of a sentence and the true gloss spans (name, start, end).

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
            tr[:, DOM_SHAPE] += weight * (np.asarray(HAND_SHAPES[other.shape]) - tr[:, DOM_SHAPE])
        shift = 0.06 * d * rng.normal(size=2)
        tr[:, CH["dom_x"]] += shift[0]
        tr[:, CH["dom_y"]] += shift[1]
        if g.two_hand == "mirror":
            tr[:, CH["nd_x"]] -= shift[0]
            tr[:, CH["nd_y"]] += shift[1]
        tr[:, CH["dom_roll"]] += np.radians(8.0) * d * rng.normal()
        flex = tr[:, DOM_SHAPE]
        flex[:, :5] = np.clip(flex[:, :5] + 0.06 * d * rng.normal(size=5), 0, 1)
        dist = float(np.hypot(*(tr[0, [CH["dom_x"], CH["dom_y"]]] - prev[[CH["dom_x"], CH["dom_y"]]])))
        m = max(2, int(round(min(6.0, 1.5 + 3.0 * dist) * tempo)))
        parts.append(prev + _smoothstep(m)[:, None] * (tr[0] - prev))
        t += m
        spans.append((g.name, t, t + n))
        parts.append(tr)
        t += n
        prev = tr[-1]
    rest = _rest_state()
    dist = float(np.hypot(*(rest[[CH["dom_x"], CH["dom_y"]]] - prev[[CH["dom_x"], CH["dom_y"]]])))
    m = max(2, int(round(min(6.0, 1.5 + 3.0 * dist) * tempo)))
    parts.append(prev + _smoothstep(m)[:, None] * (rest - prev))
    parts.append(np.tile(rest, (int(rng.integers(2, 5)), 1)))
    state = _gaussian_smooth(np.concatenate(parts), 1.4 * d)
    return state, spans
