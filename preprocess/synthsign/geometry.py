"""Geometry in the MediaPipe layouts: the hand skeleton (21 points) and the face mesh (468 points)."""
from __future__ import annotations

import numpy as np

# Hand skeleton (right hand, palm to camera, fingers up; units: wrist to middle tip ~0.92).
_THUMB_CMC = (-0.09, -0.10)
_THUMB_LEN = (0.16, 0.12, 0.10)
_FINGER_MCP = ((-0.13, -0.44), (-0.04, -0.46), (0.05, -0.44), (0.13, -0.40))
_FINGER_LEN = ((0.22, 0.13, 0.10), (0.24, 0.15, 0.10), (0.22, 0.14, 0.10), (0.17, 0.11, 0.09))
_SPREAD0 = (-2.0, 0.0, 2.0, 4.0)  # finger angles (deg, + = away from the thumb) at spread 0
_SPREAD1 = (-18.0, 4.0, 14.0, 26.0)  # ... at spread 1
_FLEX_MAX = (85.0, 100.0, 70.0)  # MCP, PIP, DIP flexion at flex 1
HAND_UNIT = 0.46  # body units per hand unit: the straight hand is ~0.42 shoulder widths long


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
