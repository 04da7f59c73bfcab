"""Keypoint layouts: which point is which, the subsets models use, and left/right mirroring.

The cache always stores the layout named in its meta.json; models pick a subset by name
(e.g. ``mediapipe_92``) so one cache serves every landmark model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# MediaPipe Holistic, concatenated in the pose-format order: POSE 33, FACE 468, LEFT 21, RIGHT 21.
POSE, FACE, LEFT_HAND, RIGHT_HAND = (0, 33), (33, 501), (501, 522), (522, 543)
HOLISTIC_543 = "mediapipe_holistic_543"

# Upper-body pose points kept by the 92-point subset: eyes, ears, shoulders, elbows, wrists.
POSE_10 = (2, 5, 7, 8, 11, 12, 13, 14, 15, 16)
# The 40 lip points of the MediaPipe face mesh (unique indices of FACEMESH_LIPS).
LIPS_40 = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
)
# Mirror pairs of the 33 pose points (left <-> right of the body).
_POSE_PAIRS = tuple((a, a + 3) for a in (1, 2, 3)) + tuple(
    (a, a + 1) for a in (7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
)


@dataclass(frozen=True)
class Subset:
    name: str
    indices: tuple[int, ...]  # indices into the 543-point holistic layout

    @property
    def size(self) -> int:
        return len(self.indices)


def _holistic_subsets() -> dict[str, Subset]:
    lips = tuple(FACE[0] + i for i in LIPS_40)
    hands = tuple(range(LEFT_HAND[0], RIGHT_HAND[1]))
    return {
        HOLISTIC_543: Subset(HOLISTIC_543, tuple(range(543))),
        "mediapipe_92": Subset("mediapipe_92", POSE_10 + lips + hands),
        "mediapipe_hands_pose": Subset("mediapipe_hands_pose", tuple(range(33)) + hands),
    }


SUBSETS = _holistic_subsets()


def subset_indices(layout: str, subset: str | None, num_points: int) -> np.ndarray:
    """Indices selecting ``subset`` from a cache stored in ``layout`` with ``num_points`` points.

    ``subset=None`` or ``"all"`` keeps every point, which is how custom layouts are used.
    """
    if subset in (None, "all"):
        return np.arange(num_points)
    if layout != HOLISTIC_543:
        raise ValueError(
            f"keypoint subset {subset!r} needs layout {HOLISTIC_543!r}, but the cache has {layout!r}; "
            "use subset: all for custom layouts"
        )
    if subset not in SUBSETS:
        raise ValueError(f"unknown keypoint subset {subset!r}; known: {sorted(SUBSETS)} or 'all'")
    return np.asarray(SUBSETS[subset].indices)


def mirror_permutation(layout: str, num_points: int) -> np.ndarray:
    """Permutation p such that ``kp[:, p]`` relabels points after a horizontal flip.

    Hands swap and paired body points swap; face points keep their index (the face mesh is
    close to symmetric and models only use its lips). Unknown layouts are left unpermuted.
    """
    perm = np.arange(num_points)
    if layout != HOLISTIC_543:
        return perm
    for a, b in _POSE_PAIRS:
        perm[a], perm[b] = b, a
    left = np.arange(*LEFT_HAND)
    right = np.arange(*RIGHT_HAND)
    perm[left], perm[right] = right, left
    return perm


def layout_name(num_points: int) -> str:
    """Layout name for a keypoint array of ``num_points`` points (``custom_<K>`` unless it is the 543-point Holistic layout)."""
    return HOLISTIC_543 if num_points == 543 else f"custom_{num_points}"
