"""One utterance's extraction: decode -> keypoint file or MediaPipe -> flow -> one atomic write.

Stage 1 (``load_utterance``) and stage 2 (``finish_utterance``) are split so that the
in-process driver loads the next video while MediaPipe works on this one. The ``*extract_job``
functions are what the pool runs: they never raise, a failure comes back as a ``Result``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from preprocess import cache
from preprocess.configs import write_error
from preprocess.features.config import STAGES, FeatureConfig, Plan, Result, UtteranceError
from preprocess.manifest import Utterance
from preprocess.pool import die_with_parent, failure_message


_WORKER: dict[str, Any] = {}


def init_worker(plan: Plan, driver_pid: int | None = None) -> None:
    """Pool initializer: one MediaPipe graph per process, built once, reused for every video.

    ``driver_pid`` is the process that runs the pool; a worker started for it dies with it.
    """
    _WORKER.clear()
    _WORKER["plan"] = plan
    if driver_pid is not None and driver_pid != os.getpid():
        die_with_parent(driver_pid)
    try:
        import cv2

        cv2.setNumThreads(1)  # workers are the parallelism; OpenCV threads would oversubscribe
    except ImportError:  # pragma: no cover
        pass
    if plan.cfg.flow.is_raft:  # torch is slow to import: only RAFT workers pay for it
        import torch

        torch.set_num_threads(1)
    if plan.use_mediapipe:
        # MediaPipe's native logging prints several lines per video; keep warnings and errors.
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            _WORKER["extractor"] = _open_extractor()
        except Exception as e:  # every job of this worker will report it instead of crashing
            _WORKER["init_error"] = f"MediaPipe could not start ({type(e).__name__}: {e})"


def _open_extractor():
    from preprocess.landmarks import HolisticExtractor

    ex = HolisticExtractor()
    ex.__enter__()
    # Close the graph when the process exits (pool shutdown or the in-process run ending).
    mp.util.Finalize(ex, ex.__exit__, args=(None, None, None), exitpriority=10)
    return ex


def close_worker() -> None:
    ex = _WORKER.pop("extractor", None)
    if ex is not None:
        ex.__exit__(None, None, None)
    _WORKER.clear()


def load_job(utt: Utterance) -> "Loaded | Result":
    """Stage 1 of one utterance (everything but MediaPipe and the write); never raises."""
    try:
        if "init_error" in _WORKER:
            raise UtteranceError(_WORKER["init_error"])
        return load_utterance(utt, _WORKER["plan"])
    except Exception as e:  # noqa: BLE001 - every failure must become one report line
        return Result(utt.id, utt.split, False, failure_message(e), source=utt.source)


def finish_job(loaded: "Loaded | Result") -> Result:
    """Stage 2 of one utterance (MediaPipe when needed, then the write); never raises."""
    if isinstance(loaded, Result):
        return loaded
    utt = loaded.utt
    try:
        return finish_utterance(loaded, _WORKER["plan"], _WORKER.get("extractor"))
    except Exception as e:  # noqa: BLE001
        return Result(utt.id, utt.split, False, failure_message(e), source=utt.source)


def extract_job(utt: Utterance) -> Result:
    """Extract one utterance in a pool worker; never raises (a failure travels back as a Result)."""
    return finish_job(load_job(utt))


def resolve_path(path: str | None, root: str) -> Path | None:
    if not path:
        return None
    p = Path(path)
    return p if p.is_absolute() or not root else Path(root) / p


def landmark_source(utt: Utterance, cfg: FeatureConfig) -> str:
    """'file' | 'mediapipe' | 'none' for this utterance under ``cfg.landmarks``."""
    if cfg.landmarks == "auto":
        return "file" if utt.keypoints else ("mediapipe" if utt.source else "none")
    return cfg.landmarks


def _hand_rate(mask: np.ndarray) -> float:
    """Fraction of frames with at least one hand found."""
    from preprocess.landmarks import detection_rates

    return float(detection_rates(mask)["any_hand"])


@dataclass
class Loaded:
    """An utterance after stage 1: decoded and resized, flow computed, keypoint file read."""

    utt: Utterance
    source: Path | None  # the video or frame folder (None for keypoint-only rows)
    frames: np.ndarray | None  # uint8 [T, H, W, 3] full size, kept only when MediaPipe needs it
    num_frames: int  # T of the stored arrays
    arrays: dict[str, np.ndarray]  # rgb / flow / keypoints(+mask) computed so far
    times: dict[str, float]  # seconds per stage so far
    needs_mediapipe: bool  # stage 2 runs MediaPipe on ``frames``


def load_utterance(utt: Utterance, plan: Plan) -> Loaded:
    """Stage 1: decode (+ resize/crop), flow, and the keypoint file; raises on bad input.

    Split from MediaPipe so the in-process driver can load the next video on a second core
    while MediaPipe works on this one.
    """
    cfg = plan.cfg
    times = dict.fromkeys(STAGES, 0.0)
    source = resolve_path(utt.source, plan.root)
    lm_source = landmark_source(utt, cfg) if plan.layout else "none"
    wants_video = cfg.rgb_size > 0 or cfg.flow.enabled or lm_source == "mediapipe"
    arrays: dict[str, np.ndarray] = {}

    frames = None
    if wants_video:
        if source is None:
            raise UtteranceError(f"{utt.id}: the corpus row has no video, but this cache stores "
                                 f"{'RGB/flow' if lm_source != 'mediapipe' else 'MediaPipe landmarks'}; "
                                 "add the video or set landmarks: file / rgb_size: 0 / flow: none")
        if not source.exists():
            raise UtteranceError(f"{source}: video not found (corpus row {utt.id}); fix the path in the corpus "
                                 "file or remove the row")
        from preprocess.video import read_frames

        t0 = time.perf_counter()
        frames, _fps = read_frames(str(source), max_frames=cfg.max_frames or None)
        times["decode"] += time.perf_counter() - t0
        if frames.ndim != 4 or len(frames) == 0:
            raise UtteranceError(f"{source}: no frames could be decoded; re-encode or replace the video")

    if lm_source == "file":
        if not utt.keypoints:
            raise UtteranceError(f"{utt.id}: no keypoint file in the corpus but landmarks: file; "
                                 "add keypoints/<id>.npy|.npz|.pose or use landmarks: auto")
        from preprocess.keypoint_io import load_keypoints

        kp_path = resolve_path(utt.keypoints, plan.root)
        t0 = time.perf_counter()
        kp, mask, _layout = load_keypoints(str(kp_path))
        times["landmarks"] += time.perf_counter() - t0
        if kp.ndim != 3 or kp.shape[1] != plan.num_keypoints or kp.shape[2] != 3:
            raise UtteranceError(f"{kp_path}: keypoints of shape {tuple(kp.shape)} but this dataset's files are "
                                 f"[T, {plan.num_keypoints}, 3] ({plan.layout}); re-export the file in that layout")
        if cfg.max_frames:
            kp, mask = kp[: cfg.max_frames], mask[: cfg.max_frames]
        if frames is not None and len(kp) != len(frames):
            raise UtteranceError(f"{kp_path}: {len(kp)} keypoint frames but the video {source} has {len(frames)} "
                                 "frames; re-extract the keypoints from this video")
        if len(kp) == 0:
            raise UtteranceError(f"{kp_path}: keypoint file has no frames; re-export it")
        arrays.update(_keypoint_arrays(kp, mask, str(kp_path)))
    elif lm_source == "mediapipe" and plan.num_keypoints != 543:
        raise UtteranceError(f"{utt.id}: has no keypoint file, and MediaPipe's 543 points do not match this "
                             f"dataset's {plan.layout} keypoint files; add keypoints/{utt.id}.* "
                             "or run with --landmarks mediapipe")

    if frames is not None and cfg.rgb_size > 0:
        from preprocess.video import resize_crop

        t0 = time.perf_counter()
        arrays["rgb"] = np.ascontiguousarray(resize_crop(frames, cfg.rgb_size), dtype=np.uint8)  # [T, S, S, 3]
        times["decode"] += time.perf_counter() - t0

    if frames is not None and cfg.flow.enabled:
        from preprocess.flow import compute_flow, quantize_flow

        # Same centre crop either way; starting from the (small) RGB crop when it is at least
        # the flow size saves shrinking full-size frames a second time.
        source_frames = arrays["rgb"] if cfg.rgb_size >= cfg.flow.size else frames
        t0 = time.perf_counter()
        arrays["flow"] = quantize_flow(compute_flow(source_frames, cfg.flow), cfg.flow)  # [T, 2, s, s]
        times["flow"] += time.perf_counter() - t0

    needs_mp = lm_source == "mediapipe"
    if not arrays and not needs_mp:
        raise UtteranceError(f"{utt.id}: nothing to store (no video and no keypoints); check the corpus row")
    n = len(frames) if frames is not None else len(arrays["keypoints"])
    return Loaded(utt, source, frames if needs_mp else None, n, arrays, times, needs_mp)


def _keypoint_arrays(kp: np.ndarray, mask: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """The cache's keypoint arrays; refuses what float16 cannot hold and files with no point at all."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise UtteranceError(f"{where}: no keypoint is present on any frame (all missing/NaN); "
                             "re-extract the landmarks or drop the utterance")
    kp = np.nan_to_num(np.asarray(kp, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    kp[~mask] = 0.0
    limit = float(np.finfo(np.float16).max)
    peak = float(np.abs(kp).max())
    if peak > limit:
        raise UtteranceError(f"{where}: keypoint values reach {peak:.6g}, beyond what the float16 cache holds "
                             f"({limit:g}); x, y must be normalised to the frame (0..1): re-export the file")
    return {"keypoints": kp.astype(np.float16),  # [T, K, 3]
            "keypoints_mask": mask}  # [T, K]


def check_arrays(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Every array about to be stored is finite and non-empty (nothing bad reaches the cache silently)."""
    for name, arr in arrays.items():
        if arr.size == 0:
            raise UtteranceError(f"{where}: the {name} array is empty {tuple(arr.shape)}; check the source file")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise UtteranceError(f"{where}: {bad} non-finite values in the {name} array ({arr.dtype}); "
                                 "check the source file, it was not cached")


def finish_utterance(loaded: Loaded, plan: Plan, extractor=None) -> Result:
    """Stage 2: MediaPipe landmarks when the utterance needs them, then one atomic write.

    Args:
        loaded: stage 1's output.
        plan: dataset-wide settings (config hash, cache location).
        extractor: a HolisticExtractor, needed when ``loaded.needs_mediapipe``.
    """
    utt, times, arrays = loaded.utt, dict(loaded.times), dict(loaded.arrays)
    hand_rate = None
    if loaded.needs_mediapipe:
        if extractor is None:
            raise UtteranceError(f"{utt.id}: MediaPipe extractor unavailable in this worker")
        t0 = time.perf_counter()
        kp, mask = extractor(loaded.frames, name=str(loaded.source))  # NoPersonError on a video without a signer
        times["landmarks"] += time.perf_counter() - t0
        arrays.update(_keypoint_arrays(kp, mask, str(loaded.source)))
        hand_rate = _hand_rate(mask)
    out = cache.utt_path(plan.cache_root, plan.dataset, utt.split, utt.id)
    stored = {k: arrays[k] for k in cache.ARRAY_NAMES if k in arrays}
    check_arrays(stored, str(loaded.source or resolve_path(utt.keypoints, plan.root) or utt.id))
    t0 = time.perf_counter()
    try:
        cache.write_npz_atomic(out, stored, plan.chash)
    except OSError as e:
        raise write_error(out, e, "cache file") from e
    times["write"] += time.perf_counter() - t0
    return Result(utt.id, utt.split, True, frames=loaded.num_frames, times=times, hand_rate=hand_rate,
                  nbytes=out.stat().st_size, source=utt.source)


def extract_utterance(utt: Utterance, plan: Plan, extractor=None) -> Result:
    """Decode -> landmarks -> flow -> atomic write of one utterance; raises on bad input."""
    return finish_utterance(load_utterance(utt, plan), plan, extractor)
