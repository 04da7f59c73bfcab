"""A simulated landmark detector: what MediaPipe would report for the clean keypoints."""
from __future__ import annotations

import numpy as np

from preprocess import layouts
from preprocess.synthsign.config import NUM_POINTS, SynthConfig


_QUANT = 4096.0  # keypoints are stored on a 1/4096 grid: exact in float32, compresses better


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
