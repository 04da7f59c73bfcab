"""Skeleton: a per-frame state -> MediaPipe Holistic keypoints (normalised frame coordinates)."""
from __future__ import annotations

import numpy as np

from preprocess import layouts
from preprocess.synthsign.config import NUM_POINTS
from preprocess.synthsign.geometry import (HAND_UNIT, LEFT_EYE_LOWER, LEFT_EYE_UPPER, RIGHT_EYE_LOWER, RIGHT_EYE_UPPER,
                                           face_points, hand_points)
from preprocess.synthsign.lexicon import REST_POS
from preprocess.synthsign.motion import CH, DOM_SHAPE, ND_SHAPE
from preprocess.synthsign.signer import Signer

# Body geometry (body units).
_SHOULDER = (0.5, 0.0)
_HIP = (0.40, 1.15)
_UPPER_ARM, _FOREARM = 0.78, 0.70
_FACE_CENTRE = (0.0, -0.55)
_FACE_HALF_WIDTH = 0.22  # body units per face unit


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
        local = hand_points(state[:, DOM_SHAPE if pre == "dom" else ND_SHAPE],
                            state[:, CH[f"{pre}_roll"]], state[:, CH[f"{pre}_yaw"]])
        local[..., 0] *= mirror
        wrist_b = state[:, [CH[f"{pre}_x"], CH[f"{pre}_y"]]]  # [T, 2] body units
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
    face_u = face_points(state[:, CH["head_yaw"]], state[:, CH["mouth_open"]], state[:, CH["mouth_round"]])
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
