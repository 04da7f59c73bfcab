"""The painter: draws the cartoon signer of one utterance, frame by frame, from its clean keypoints."""
from __future__ import annotations

import cv2
import numpy as np

from preprocess import layouts
from preprocess.synthsign.geometry import (FACE_OVAL, LEFT_BROW, LEFT_EYE_LOWER, LEFT_EYE_UPPER, LIPS_INNER_LOWER,
                                           LIPS_INNER_UPPER, LIPS_OUTER_LOWER, LIPS_OUTER_UPPER, NOSE_BRIDGE,
                                           RIGHT_BROW, RIGHT_EYE_LOWER, RIGHT_EYE_UPPER)
from preprocess.synthsign.signer import Signer, bgr, hsv_rgb


_SHIFT = 4  # cv2 fixed-point bits: sub-pixel accurate drawing
_AA = cv2.LINE_AA


def background(rng: np.random.Generator, size: int, avoid: list[tuple[int, int, int]]) -> np.ndarray:
    """A plain, gradient, striped or blotchy backdrop whose colour keeps clear of the signer's."""
    for _ in range(20):
        base = np.array(bgr(hsv_rgb(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.45, 0.95))), float)
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


class Painter:
    """Draws the frames of one utterance from its clean keypoints (the geometry of the npz).

    Everything that can be is computed once for the whole utterance in numpy, so the per-frame
    work is only the OpenCV drawing calls.
    """

    def __init__(self, signer: Signer, size: int, kp: np.ndarray) -> None:
        self.s = signer
        self.skin_dark = _shade(signer.skin, 0.62)
        self.sleeve = _shade(signer.shirt, 0.82)
        self.lip = bgr((150, 60, 60)) if sum(signer.skin) > 450 else bgr((95, 45, 40))
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
