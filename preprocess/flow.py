"""Dense optical flow per video at a reduced resolution, and its compact storage in the cache.

``flow[t]`` is the displacement from frame t to frame t+1 in pixels of the resized frame
(channel 0 = x to the right, channel 1 = y downward); the last entry is zero so flow and RGB
share one time axis. OpenCV DIS is the default: fast and offline. TV-L1 (opencv-contrib) and
Farneback are classic alternatives; RAFT (torchvision) is the most accurate but needs its
weights as a local file (nothing can be downloaded here) and frames of at least 128x128.

Storage: int8 with ``scale = clip / 127`` pixels per step (or float16), values clipped to
``+-clip``; the driver records :func:`flow_scale` in meta.json so readers can dequantize.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from preprocess.device import DEVICE_CHOICES, is_device_name
from preprocess.video import resize_crop

METHODS = ("dis", "tvl1", "farneback", "raft_small", "raft_large", "none")
DTYPES = ("int8", "float16")
DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
RAFT_MIN_SIZE = 128  # RAFT's 1/8-resolution correlation pyramid needs at least this many pixels


@dataclass(frozen=True)
class FlowConfig:
    method: str = "dis"  # one of METHODS; "none" stores no flow
    size: int = 56  # frames are centre-cropped and resized to size x size before flow
    dtype: str = "int8"  # storage dtype in the cache: "int8" (scale clip/127) or "float16"
    clip: float = 16.0  # displacements are clipped to +-clip pixels before storage
    raft_weights: str | None = None  # RAFT checkpoint file; None: look in torch.hub.get_dir()/checkpoints
    device: str = "auto"  # RAFT device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N"
    dis_preset: str = "fast"  # DIS speed/quality preset: "ultrafast" | "fast" | "medium"
    raft_iters: int = 12  # RAFT refinement iterations; the last one's flow is kept
    raft_batch: int = 8  # frame pairs per RAFT forward pass

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"flow method {self.method!r} is unknown; choose one of {METHODS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"flow dtype {self.dtype!r} is unknown; choose one of {DTYPES}")
        if not is_device_name(self.device):
            raise ValueError(f"flow device {self.device!r} is unknown; choose one of {DEVICE_CHOICES} (or cuda:N)")
        if self.dis_preset not in DIS_PRESETS:
            raise ValueError(f"dis_preset {self.dis_preset!r} is unknown; choose one of {tuple(DIS_PRESETS)}")
        if self.size < 8:
            raise ValueError(f"flow size must be >= 8 pixels, got {self.size}")
        if not self.clip > 0:
            raise ValueError(f"flow clip must be > 0 pixels, got {self.clip}")
        if self.raft_iters < 1 or self.raft_batch < 1:
            raise ValueError(f"raft_iters and raft_batch must be >= 1, got {self.raft_iters}, {self.raft_batch}")
        if self.is_raft and (self.size < RAFT_MIN_SIZE or self.size % 8):
            raise ValueError(
                f"flow size {self.size} is too small for {self.method}: RAFT needs frames of at least "
                f"{RAFT_MIN_SIZE}x{RAFT_MIN_SIZE} and a multiple of 8; use size>=128 or method='dis'"
            )

    @property
    def is_raft(self) -> bool:
        return self.method.startswith("raft")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flow_scale(cfg: FlowConfig) -> float:
    """Pixels per stored unit: ``clip / 127`` for int8, 1.0 for float16."""
    return cfg.clip / 127.0 if cfg.dtype == "int8" else 1.0


def quantize_flow(flow: np.ndarray, cfg: FlowConfig) -> np.ndarray:
    """float32 flow [T, 2, h, w] -> int8 (rounded to ``flow_scale``) or float16, clipped to +-clip."""
    clipped = np.clip(flow, -cfg.clip, cfg.clip)
    if cfg.dtype == "int8":
        return np.rint(clipped / flow_scale(cfg)).astype(np.int8)
    return clipped.astype(np.float16)


def dequantize_flow(q: np.ndarray, scale: float) -> np.ndarray:
    """Stored flow (int8 or float16) -> float32 pixels; ``scale`` as recorded in meta.json."""
    return q.astype(np.float32) * np.float32(scale)


def compute_flow(frames: np.ndarray, cfg: FlowConfig) -> np.ndarray:
    """Optical flow between consecutive frames of one video.

    Args:
        frames: uint8 RGB [T, H, W, 3]; centre-cropped and resized to ``cfg.size`` first
            (the same geometry as :func:`preprocess.video.resize_crop` gives the RGB stream).
        cfg: the flow configuration.

    Returns:
        float32 [T, 2, size, size]: ``out[t]`` = displacement (x, y) from frame t to t+1 in
        pixels of the resized frame; ``out[T-1]`` is zero.
    """
    if not cfg.enabled:
        raise ValueError("flow method 'none' computes no flow; skip the flow stage (FlowConfig.enabled)")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, s = frames.shape[0], cfg.size
    out = np.zeros((t, 2, s, s), dtype=np.float32)
    if t < 2:
        return out
    small = resize_crop(frames, s)  # [T, s, s, 3]
    estimator = _estimator(cfg)
    out[:-1] = estimator(small)
    return out


# --- estimators: small [T, s, s, 3] uint8 -> flow [T-1, 2, s, s] float32 ------------------------

@functools.lru_cache(maxsize=4)
def _estimator(cfg: FlowConfig) -> Callable[[np.ndarray], np.ndarray]:
    """One estimator per configuration and process, so DIS/TV-L1 objects and RAFT are reused."""
    if cfg.is_raft:
        return _RaftFlow(cfg)
    if cfg.method == "dis":
        algo = cv2.DISOpticalFlow_create(DIS_PRESETS[cfg.dis_preset])
        return _OpenCVFlow(lambda a, b: algo.calc(a, b, None))
    if cfg.method == "tvl1":
        if not hasattr(cv2, "optflow"):
            raise ValueError("flow method 'tvl1' needs opencv-contrib-python (cv2.optflow); use method='dis'")
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return _OpenCVFlow(lambda a, b: tvl1.calc(a, b, None))
    if cfg.method == "farneback":
        return _OpenCVFlow(
            lambda a, b: cv2.calcOpticalFlowFarneback(
                a, b, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0
            )
        )
    raise ValueError(f"flow method {cfg.method!r} has no estimator")  # pragma: no cover


class _OpenCVFlow:
    """Pairwise OpenCV flow on grayscale frames."""

    def __init__(self, pair: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.pair = pair

    def __call__(self, small: np.ndarray) -> np.ndarray:
        t, s = small.shape[0], small.shape[1]
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in small]
        out = np.empty((t - 1, 2, s, s), dtype=np.float32)
        for i in range(t - 1):
            out[i] = self.pair(gray[i], gray[i + 1]).transpose(2, 0, 1)  # [s, s, 2] -> [2, s, s]
        return out


def resolve_raft_weights(cfg: FlowConfig) -> Path:
    """The RAFT checkpoint to load: ``cfg.raft_weights`` or one in the torch hub cache."""
    if cfg.raft_weights:
        path = Path(cfg.raft_weights).expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: RAFT weights file not found; pass an existing checkpoint or use method='dis'")
        return path
    import torch
    from torchvision.models import optical_flow

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    enum = optical_flow.Raft_Small_Weights if cfg.method == "raft_small" else optical_flow.Raft_Large_Weights
    default = cache / Path(enum.DEFAULT.url).name
    if default.is_file():
        return default
    found = sorted(cache.glob(f"{cfg.method}*.pth")) if cache.is_dir() else []
    if found:
        return found[-1]
    raise ValueError(
        f"no {cfg.method} weights: none given and none in {cache} (they cannot be downloaded here); "
        f"pass raft_weights=PATH (--flow-raft-weights) to a torchvision {cfg.method} checkpoint, or use method='dis'"
    )


class _RaftFlow:
    """torchvision RAFT on batches of frame pairs, without gradients, on the GPU when present."""

    def __init__(self, cfg: FlowConfig, random_init: bool = False) -> None:
        """``random_init``: skip the weights (speed measurements only: the flow is meaningless)."""
        import torch
        from torchvision.models import optical_flow

        from preprocess.device import resolve_device

        self.device = resolve_device(cfg.device, "--flow-device")
        weights = None if random_init else resolve_raft_weights(cfg)
        builder = optical_flow.raft_small if cfg.method == "raft_small" else optical_flow.raft_large
        model = builder(weights=None, progress=False)
        self.model, self.iters, self.batch = model.eval().to(self.device), cfg.raft_iters, cfg.raft_batch
        if weights is None:
            return
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            for key in ("state_dict", "model"):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
            state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except (RuntimeError, AttributeError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:160]
            raise ValueError(f"{weights}: not a torchvision {cfg.method} checkpoint ({first})") from e

    def __call__(self, small: np.ndarray) -> np.ndarray:
        import torch

        t = small.shape[0]
        x = torch.from_numpy(small).permute(0, 3, 1, 2)  # [T, s, s, 3] -> [T, 3, s, s]
        out = []
        with torch.inference_mode():
            for i in range(0, t - 1, self.batch):
                j = min(i + self.batch, t - 1)
                chunk = x[i:j + 1].to(self.device).float().div_(127.5).sub_(1.0)  # [n+1, 3, s, s] in [-1, 1]
                flows = self.model(chunk[:-1], chunk[1:], num_flow_updates=self.iters)
                out.append(flows[-1].float().cpu())  # [n, 2, s, s], last refinement
        return torch.cat(out).numpy()
