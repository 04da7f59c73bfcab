"""KD-MSLRT landmark augmentations, applied to one utterance's cached arrays before batching.

Left/right swap, one random affine map per clip, a monotone time warp, runs of hidden frames
and dropped points, on ``kp [T, K, 3]`` + ``mask [T, K]``. Students read them through the
distillation data path; each step is also a deterministic static method, so the teacher
cache can apply the time warp alone and record its source positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from preprocess.layouts import mirror_permutation


@dataclass(frozen=True)
class LandmarkAugmentConfig:
    """Random landmark augmentations; each step runs with its probability (0 disables it)."""

    swap_prob: float = 0.5  # left/right swap: mirror x and relabel left <-> right points
    affine_prob: float = 0.8  # one random affine map of (x, y) per clip (rotation, scale, shear, shift)
    rotate_deg: float = 10.0  # rotation angle drawn from [-rotate_deg, rotate_deg] degrees
    scale: float = 0.1  # isotropic scale drawn from [1 - scale, 1 + scale] (z scaled too)
    shear: float = 0.1  # shear factors drawn from [-shear, shear]
    translate: float = 0.05  # shift of x and y drawn from [-translate, translate] (frame units)
    time_warp_prob: float = 0.5  # monotone time warp that keeps T (some parts faster, some slower)
    time_warp: float = 0.2  # largest displacement of the warp's knot, as a fraction of T
    time_mask_prob: float = 0.5  # hide runs of frames (all points masked)
    time_mask_num: int = 2  # number of runs
    time_mask_frac: float = 0.1  # longest run as a fraction of T (at least 1 frame)
    point_drop: float = 0.05  # probability that a visible point is dropped in a frame

    def __post_init__(self) -> None:
        for name in ("swap_prob", "affine_prob", "time_warp_prob", "time_mask_prob", "point_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"landmark augment {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("rotate_deg", "shear", "translate", "time_mask_num"):
            if getattr(self, name) < 0:
                raise ValueError(f"landmark augment {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"landmark augment scale must be in [0, 1), got {self.scale}")
        if not 0.0 <= self.time_warp < 0.5:
            raise ValueError(f"landmark augment time_warp must be in [0, 0.5), got {self.time_warp}")
        if not 0.0 <= self.time_mask_frac <= 1.0:
            raise ValueError(f"landmark augment time_mask_frac must be in [0, 1], got {self.time_mask_frac}")


class LandmarkAugment:
    """KD-MSLRT landmark augmentations on one clip: ``kp [T, K, 3]`` + ``mask [T, K]``.

    Works on numpy arrays or torch tensors and returns the same type and dtype (float16
    caches are processed in float32). Every random step is also a public deterministic
    method (``swap``, ``affine``, ``time_warp``, ``time_mask``, ``drop_points``) so tests and
    other pipelines can apply exactly one transformation. Points that are masked or dropped
    get coordinates 0 (models never read them). x, y are frame-normalised ([0, 1]); the
    affine maps rotate/scale about the frame centre (0.5, 0.5).

    Args:
        layout: layout name of the cached keypoints (for the left/right relabelling).
        num_points: K.
        cfg: probabilities and magnitudes.
    """

    def __init__(self, layout: str, num_points: int, cfg: LandmarkAugmentConfig = LandmarkAugmentConfig()) -> None:
        self.cfg = cfg
        self.num_points = num_points
        self.perm = mirror_permutation(layout, num_points)

    # ---- deterministic steps (numpy float32 in, numpy out) -------------------------------
    def swap(self, kp: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Horizontal mirror: x -> 1 - x, then left/right points swap labels. An involution."""
        out = kp.copy()
        out[..., 0] = 1.0 - out[..., 0]
        return out[:, self.perm], mask[:, self.perm]

    @staticmethod
    def affine(kp: np.ndarray, mask: np.ndarray, matrix: np.ndarray, offset: np.ndarray, z_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) -> matrix @ ((x, y) - c) + c + offset with c = (0.5, 0.5); z -> z * z_scale."""
        out = kp.copy()
        centre = np.array([0.5, 0.5], dtype=kp.dtype)
        out[..., :2] = (kp[..., :2] - centre) @ np.asarray(matrix, dtype=kp.dtype).T + centre + np.asarray(offset, dtype=kp.dtype)
        out[..., 2] = kp[..., 2] * z_scale
        return out, mask

    @staticmethod
    def time_mask(kp: np.ndarray, mask: np.ndarray, start: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Hide frames [start, start + width): every point masked, coordinates 0."""
        out, m = kp.copy(), mask.copy()
        out[start : start + width] = 0.0
        m[start : start + width] = False
        return out, m

    @staticmethod
    def time_warp(kp: np.ndarray, mask: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Resample frames at (fractional) source positions ``source`` [T] (same T out).

        Coordinates interpolate linearly between the two neighbouring frames where a point is
        visible in both; otherwise the nearest frame is copied (mask included).
        """
        t = kp.shape[0]
        pos = np.clip(np.asarray(source, dtype=np.float64), 0, t - 1)
        i0 = np.floor(pos).astype(np.int64)
        i1 = np.minimum(i0 + 1, t - 1)
        near = np.rint(pos).astype(np.int64)
        w = (pos - i0).astype(kp.dtype)[:, None, None]  # [T, 1, 1]
        both = (mask[i0] & mask[i1])[..., None]  # [T, K, 1]
        lerp = (1 - w) * kp[i0] + w * kp[i1]
        out = np.where(both, lerp, kp[near])
        return out.astype(kp.dtype), mask[near].copy()

    @staticmethod
    def splice(kp: np.ndarray, mask: np.ndarray, other_kp: np.ndarray, other_mask: np.ndarray, cut: int,
               start: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [0, cut) of this clip, then ``other``'s frames from ``start`` on, to the same T.

        A sequence-level mixup: the glosses after the cut follow ones they never follow in the
        corpus. An ``other`` too short to fill the rest is read cyclically.
        """
        t, n = kp.shape[0], kp.shape[0] - cut
        if not 0 <= cut <= t or len(other_kp) < 1:
            raise ValueError(f"splice: cut {cut} outside [0, {t}] or an empty other clip")
        idx = (start + np.arange(n)) % len(other_kp)  # [n] frames of other
        return (np.concatenate([kp[:cut], other_kp[idx].astype(kp.dtype)]),
                np.concatenate([mask[:cut], other_mask[idx]]))

    @staticmethod
    def drop_points(kp: np.ndarray, mask: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask the points where ``drop`` [T, K] is True (coordinates 0)."""
        out = np.where(drop[..., None], 0.0, kp).astype(kp.dtype)
        return out, mask & ~drop

    # ---- random composition -----------------------------------------------------------
    def __call__(self, kp: Any, mask: Any, rng: np.random.Generator | None = None) -> tuple[Any, Any]:
        """Augment one clip.

        Args:
            kp: [T, K, 3] numpy array or torch tensor (NaN allowed where masked).
            mask: [T, K] bool, True where detected.
            rng: numpy Generator (seed it per item for reproducible epochs).

        Returns:
            (kp, mask) of the same shapes, types and dtypes.
        """
        rng = rng if rng is not None else np.random.default_rng()
        is_torch = isinstance(kp, Tensor)
        k_np = kp.detach().cpu().numpy() if is_torch else np.asarray(kp)
        m_np = (mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)).astype(bool)
        if k_np.ndim != 3 or k_np.shape[1] != self.num_points or m_np.shape != k_np.shape[:2]:
            raise ValueError(
                f"landmark augment expects kp [T, {self.num_points}, 3] and mask [T, {self.num_points}], "
                f"got {k_np.shape} and {m_np.shape}"
            )
        dtype = k_np.dtype
        x = np.where(m_np[..., None], k_np.astype(np.float32), 0.0).astype(np.float32)  # NaN-free work copy
        m = m_np.copy()
        c = self.cfg
        t = x.shape[0]
        if rng.random() < c.swap_prob:
            x, m = self.swap(x, m)
        if rng.random() < c.affine_prob:
            angle = math.radians(rng.uniform(-c.rotate_deg, c.rotate_deg))
            s = rng.uniform(1 - c.scale, 1 + c.scale)
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            shear = np.array([[1.0, rng.uniform(-c.shear, c.shear)], [rng.uniform(-c.shear, c.shear), 1.0]])
            x, m = self.affine(x, m, s * rot @ shear, rng.uniform(-c.translate, c.translate, size=2), z_scale=s)
        if t > 2 and rng.random() < c.time_warp_prob:
            knot = rng.uniform(0.25, 0.75) * (t - 1)
            moved = float(np.clip(knot + rng.uniform(-c.time_warp, c.time_warp) * t, 1, t - 2))
            out_steps = np.arange(t, dtype=np.float64)
            source = np.interp(out_steps, [0, moved, t - 1], [0, knot, t - 1])  # output step -> source frame
            x, m = self.time_warp(x, m, source)
        if rng.random() < c.time_mask_prob:
            longest = max(1, int(round(c.time_mask_frac * t)))
            for _ in range(c.time_mask_num):
                width = int(rng.integers(1, longest + 1))
                start = int(rng.integers(0, max(1, t - width + 1)))
                x, m = self.time_mask(x, m, start, width)
        if c.point_drop > 0:
            x, m = self.drop_points(x, m, rng.random(m.shape) < c.point_drop)
        x = np.where(m[..., None], x, 0.0).astype(dtype)
        if is_torch:
            return torch.from_numpy(x).to(kp.device), torch.from_numpy(m).to(kp.device)
        return x, m
