"""What a landmark model reads of the cached keypoints: subset, normalisation and motion.

Teachers (``KeypointEncoder``) and the landmark student share this one module, so a
normalisation chosen in a config is the same in training, in the checkpoint (the config is
saved there) and in the exported ONNX graph (it is part of ``forward``).

Normalisation (``KeypointNormConfig``):

- ``center``: ``auto`` keeps the body frame of MediaPipe layouts (shoulder midpoint, per
  frame; other layouts: the mean of the visible points, per frame); ``mean`` is the latter for
  every layout; ``point`` centres on one point of the cached layout (``center_point``, e.g. the
  nose of a 3-point hand-track corpus), falling back to that point's mean over the clip on
  frames where it is missing; ``none`` keeps frame coordinates.
- ``scale``: ``auto`` is the shoulder width (MediaPipe) or the per-frame spread of the points;
  ``frame`` the per-frame spread; ``utterance`` one spread for the whole clip (signers differ
  in size and distance; the hands' own motion is kept); ``none`` keeps units.
- ``deltas``: 1 adds each point's velocity, 2 also its acceleration (frame differences of the
  normalised coordinates, zero where the point is missing in a neighbouring frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.encoders import gather_prefix, keypoint_gather, normalise_gathered, take_points
from preprocess.layouts import HOLISTIC_543

CENTERS = ("auto", "mean", "point", "none")
SCALES = ("auto", "frame", "utterance", "none")


@dataclass(frozen=True)
class KeypointNormConfig:
    center: str = "auto"  # "auto" | "mean" | "point" | "none" (see the module docstring)
    center_point: int = -1  # index into the cached layout of the centre point (center "point")
    scale: str = "auto"  # "auto" | "frame" | "utterance" | "none"
    deltas: int = 0  # 0: positions; 1: + velocity; 2: + velocity and acceleration

    def __post_init__(self) -> None:
        if self.center not in CENTERS:
            raise ValueError(f"keypoint center must be one of {CENTERS}, got {self.center!r}")
        if self.scale not in SCALES:
            raise ValueError(f"keypoint scale must be one of {SCALES}, got {self.scale!r}")
        if self.center == "point" and self.center_point < 0:
            raise ValueError("keypoint center 'point' needs center_point: the index of the reference point "
                             "in the cached layout (e.g. the nose)")
        if self.center != "point" and self.center_point >= 0:
            raise ValueError(f"center_point {self.center_point} is given but center is {self.center!r}; "
                             "set center: point or drop center_point")
        if self.deltas not in (0, 1, 2):
            raise ValueError(f"keypoint deltas must be 0, 1 or 2, got {self.deltas!r}")

    @property
    def legacy(self) -> bool:
        """True for the per-frame normalisation models had before these options existed."""
        return (self.center, self.scale) == ("auto", "auto")

    @property
    def channels(self) -> int:
        """Input values per point: (x, y, z, mask) plus 3 per delta order."""
        return 4 + 3 * self.deltas


def _time_diff(rows: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
    """First difference along time of ``rows`` [B, T, C, K] where both frames are ``ok`` [B, T, 1, K]."""
    prev = torch.cat([rows[:, :1], rows[:, :-1]], dim=1)  # [B, T, C, K], frame t-1 (t=0: itself)
    ok_prev = torch.cat([torch.zeros_like(ok[:, :1]), ok[:, :-1]], dim=1)  # frame 0 has no predecessor
    both = ok & ok_prev
    return torch.where(both, rows - prev, torch.zeros_like(rows)), both


class KeypointInput(nn.Module):
    """Gather, normalise and describe the points of a padded keypoint batch.

    Args:
        indices: [K'] the points (into the cached layout) the model reads.
        layout: the cache's layout name.
        num_points: K of the cached layout (to check ``center_point``).
        norm: normalisation and motion features.
    """

    def __init__(self, indices: Tensor | list[int], layout: str, num_points: int,
                 norm: KeypointNormConfig = KeypointNormConfig()) -> None:
        super().__init__()
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        holistic = layout == HOLISTIC_543
        gather, self.anchors = keypoint_gather(idx, holistic)
        self.center_pos: int | None = None
        if norm.center == "point":
            if not 0 <= norm.center_point < num_points:
                raise ValueError(f"keypoint center_point {norm.center_point} is not a point of the cached layout "
                                 f"{layout!r} ({num_points} points: 0..{num_points - 1})")
            g = gather.tolist()
            if norm.center_point not in g:
                g.append(norm.center_point)
            gather = torch.tensor(g, dtype=torch.long)
            self.center_pos = g.index(norm.center_point)
        self.register_buffer("indices", idx, persistent=False)
        self.register_buffer("gather", gather, persistent=False)  # every point forward reads
        self.prefix = gather_prefix(gather)
        self.num_selected = idx.numel()
        self.norm = norm
        self.out_dim = idx.numel() * norm.channels

    def normalise(self, pts: Tensor, mask: Tensor, valid: Tensor, eps: float = 1e-3) -> Tensor:
        """[B, T, P, 3] gathered points, [B, T, P] mask, [B, T] valid frames -> [B, T, 3, K'] rows."""
        if self.norm.legacy:
            return normalise_gathered(pts, mask, self.num_selected, self.anchors, eps)
        n = self.num_selected
        c = pts.transpose(2, 3)  # [B, T, P, 3] -> [B, T, 3, P]
        mk = (mask & valid.unsqueeze(-1)).unsqueeze(2)  # [B, T, 1, P]
        full = torch.where(mk, c, torch.zeros_like(c))
        sel, m = full[..., :n], mk[..., :n].to(c.dtype)  # [B, T, 3, K'], [B, T, 1, K']
        xy = sel[:, :, :2]  # [B, T, 2, K']
        mode = self.norm.center
        if mode == "point":
            ref = full[:, :, :2, self.center_pos : self.center_pos + 1]  # [B, T, 2, 1]
            seen = mk[:, :, :, self.center_pos : self.center_pos + 1].to(c.dtype)  # [B, T, 1, 1]
            clip_mean = (ref * seen).sum(dim=1, keepdim=True) / seen.sum(dim=1, keepdim=True).clamp(min=1)
            centre = torch.where(seen > 0, ref, clip_mean)  # [B, T, 2, 1]
        elif mode == "none":
            centre = torch.zeros_like(xy[..., :1])
        else:  # "mean", or "auto" with a per-frame/utterance/no scale: the visible points' mean per frame
            count = m.sum(dim=3, keepdim=True)  # [B, T, 1, 1]
            centre = (xy * m).sum(dim=3, keepdim=True) / count.clamp(min=1)
        d = (xy - centre) * m  # [B, T, 2, K'], zero where missing
        if self.norm.scale in ("frame", "auto"):
            count = m.sum(dim=3, keepdim=True)
            scale = ((d**2).sum(dim=(2, 3), keepdim=True) / (2 * count).clamp(min=1)).sqrt()  # [B, T, 1, 1]
        elif self.norm.scale == "utterance":
            count = m.sum(dim=(1, 3), keepdim=True)  # [B, 1, 1, 1]
            scale = ((d**2).sum(dim=(1, 2, 3), keepdim=True) / (2 * count).clamp(min=1)).sqrt()
        else:
            scale = torch.ones_like(centre[:, :, :1])
        scale = scale.clamp(min=eps)
        out = torch.cat([d / scale, sel[:, :, 2:] / scale], dim=2)  # [B, T, 3, K']
        return out.clamp(-10.0, 10.0) * m

    def take(self, keypoints: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The read points only, first (per-point work then touches ~P points, not all K):
        [B, T, K, 3] (+ [B, T, K] mask, or None) -> float [B, T, P, 3] and bool [B, T, P]."""
        kp = take_points(keypoints, self.gather, self.prefix).float()  # [B, T, P, 3]
        finite = torch.isfinite(kp).all(dim=-1)  # [B, T, P]
        return kp, finite if mask is None else take_points(mask, self.gather, self.prefix).bool() & finite

    def forward(self, keypoints: Tensor, mask: Tensor | None, lengths: Tensor) -> Tensor:
        """Args:
            keypoints: [B, T, K, 3] raw cache coordinates (NaN allowed where missing).
            mask: [B, T, K] bool, True where detected (None: the finite points).
            lengths: [B] valid frames.

        Returns:
            [B, T, K' * channels], point-major: per point (x, y, z, mask[, velocity xyz[, acceleration xyz]]).
        """
        return self.features(*self.take(keypoints, mask), lengths)

    def features(self, kp: Tensor, mk: Tensor, lengths: Tensor) -> Tensor:
        """``forward`` on points already taken (``take``): [B, T, P, 3], [B, T, P] -> [B, T, K' * channels]."""
        b, t = kp.shape[:2]
        valid = torch.arange(t, device=kp.device)[None, :] < lengths.to(kp.device)[:, None]  # [B, T]
        rows = self.normalise(kp, mk, valid)  # [B, T, 3, K']
        ok = (mk[..., : self.num_selected] & valid.unsqueeze(-1)).unsqueeze(2)  # [B, T, 1, K']
        parts = [rows, ok.to(rows.dtype)]
        if self.norm.deltas:
            vel, ok_v = _time_diff(rows, ok)
            parts.append(vel)
            if self.norm.deltas > 1:
                parts.append(_time_diff(vel, ok_v)[0])
        x = torch.cat(parts, dim=2)  # [B, T, channels, K']
        return x.transpose(2, 3).reshape(b, t, -1)  # [B, T, K', channels] -> [B, T, K' * channels]
