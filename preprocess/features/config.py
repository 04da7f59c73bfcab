"""The types of a feature run: what it stores, what every worker shares, what each job reports.

``FeatureConfig`` (hashed into every cache file), ``Plan`` (dataset-wide decisions, picklable)
and ``Result`` (one utterance's outcome, sent back from the worker).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from preprocess.configs import UserError, check_keys, from_dict
from preprocess.flow import FlowConfig

LANDMARK_MODES = ("auto", "mediapipe", "file", "none")
STAGES = ("decode", "landmarks", "flow", "write")
# FlowConfig fields that change the stored flow, per method family (device and batch do not).
_FLOW_HASHED = {"common": ("method", "size", "dtype", "clip"), "dis": ("dis_preset",),
                "raft": ("raft_weights", "raft_iters")}


@dataclass(frozen=True)
class FeatureConfig:
    """What goes into every cache file of a dataset; its hash marks the files it wrote."""

    rgb_size: int = 112  # side of the square RGB crop stored (short side resized, centre crop); 0 = no RGB
    landmarks: str = "auto"  # "auto": the utterance's keypoint file if any, else MediaPipe | "mediapipe" | "file" | "none"
    flow: FlowConfig = field(default_factory=FlowConfig)  # optical flow (method "none" = no flow stream)
    max_frames: int = 0  # keep at most this many frames per utterance (0 = all)

    def __post_init__(self) -> None:
        if self.rgb_size < 0:
            raise ValueError(f"rgb_size must be >= 0 (0 = no RGB), got {self.rgb_size}")
        if self.landmarks not in LANDMARK_MODES:
            raise ValueError(f"landmarks must be one of {LANDMARK_MODES}, got {self.landmarks!r}")
        if self.max_frames < 0:
            raise ValueError(f"max_frames must be >= 0 (0 = all), got {self.max_frames}")

    @staticmethod
    def from_dict(d: Mapping[str, Any] | None, **overrides: Any) -> "FeatureConfig":
        """Build from a dataset YAML's ``features:`` mapping, then apply ``overrides``.

        Flow options may be nested (``flow: {method: dis, size: 56}``), flat with a ``flow_``
        prefix (``flow_method``, ``flow_size``, ``raft_weights``), or ``flow: dis`` for the
        method alone. Overrides use the flat names (the command line's).
        """
        top: dict[str, Any] = {}
        flow: dict[str, Any] = {}
        for key, value in {**(d or {}), **overrides}.items():
            if key == "flow" and isinstance(value, Mapping):
                flow.update(value)
            elif key == "flow":
                flow["method"] = "none" if value in (None, False) else str(value)
            elif key.startswith("flow_"):
                flow[key[len("flow_"):]] = value
            elif key in ("raft_weights", "device", "dis_preset", "raft_iters", "raft_batch"):
                flow[key] = value
            else:
                top[key] = value
        if top.get("max_frames") is None:
            top.pop("max_frames", None)
        check_keys(top, {f.name for f in fields(FeatureConfig)} - {"flow"}, "", "feature option(s)")
        return from_dict(FeatureConfig, {**top, "flow": from_dict(FlowConfig, flow, section="flow")})

    def hashed(self) -> dict[str, Any]:
        """The fields that change the bytes written (RAFT's device or batch size do not)."""
        f = self.flow
        keys = () if not f.enabled else _FLOW_HASHED["common"] + (
            _FLOW_HASHED["raft"] if f.is_raft else _FLOW_HASHED["dis"] if f.method == "dis" else ())
        return {"rgb_size": self.rgb_size, "landmarks": self.landmarks, "max_frames": self.max_frames,
                "flow": {k: getattr(f, k) for k in keys} if f.enabled else "none"}


class UtteranceError(UserError):
    """One utterance cannot be extracted; the message names the file and the fix."""


@dataclass(frozen=True)
class Plan:
    """Dataset-wide decisions every worker shares (picklable)."""

    cache_root: str  # the cache folder (files go to <cache_root>/<dataset>/<split>/<id>.npz)
    dataset: str  # dataset name, the cache sub-folder
    cfg: FeatureConfig  # effective config (RGB/flow off for keypoint-only corpora)
    chash: str  # config hash stored in every file
    layout: str | None  # keypoint layout every file must have (None = no keypoints)
    num_keypoints: int  # points per frame of that layout (0 = no keypoints)
    root: str  # dataset root, for relative paths in the manifest
    use_mediapipe: bool  # some utterance needs MediaPipe (workers build an extractor)


@dataclass
class Result:
    """What one utterance's extraction reports back to the driver."""

    id: str
    split: str
    ok: bool
    message: str = ""
    frames: int = 0
    times: dict[str, float] = field(default_factory=dict)
    hand_rate: float | None = None  # MediaPipe utterances only
    nbytes: int = 0
    source: str | None = None
