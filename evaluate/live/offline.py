"""Offline recognition of a whole video: frames -> model inputs (preprocessed as the cache was) -> timed glosses."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evaluate.live.mediapipe_pool import Landmarks
from evaluate.live.runtime import Recognizer, require_mediapipe_layout, timed_output
from preprocess.layouts import HOLISTIC_543, LEFT_HAND, RIGHT_HAND


def video_inputs(frames: np.ndarray, rec: Recognizer, extractor: Callable[[np.ndarray], Landmarks] | None = None,
                 name: str = "<frames>") -> dict[str, np.ndarray]:
    """A whole video's model inputs, batch of one, preprocessed as the cache was.

    Args:
        frames: uint8 RGB [T, H, W, 3].
        rec: the model (its input names, spec and preprocessing).
        extractor: whole-video landmarks ``frames -> (kp [T, K, 3], mask [T, K])``; default
            MediaPipe Holistic (built only when the model reads keypoints).

    Returns:
        name -> array with a leading batch axis of 1.
    """
    from preprocess.video import resize_crop

    out: dict[str, np.ndarray] = {}
    if "flow" in rec.input_names:
        raise ValueError(f"{rec.name} needs optical flow, which deployment inference does not compute; "
                         "export a distilled rgb or landmark student instead")
    if "keypoints" in rec.input_names:
        if extractor is None:
            require_mediapipe_layout(rec)
            from preprocess.landmarks import HolisticExtractor

            with HolisticExtractor() as holistic:
                kp, mask = holistic(frames, name)
        else:
            kp, mask = extractor(frames)
        out["keypoints"] = kp[None].astype(np.float32)  # [1, T, K, 3]
        out["keypoints_mask"] = mask[None].astype(bool)  # [1, T, K]
    if "rgb" in rec.input_names:
        resize = int(rec.preprocess.get("rgb_resize") or rec.spec.rgb_size)
        crop = int(rec.preprocess.get("rgb_crop") or rec.spec.rgb_size)
        small = resize_crop(frames, resize)  # [T, resize, resize, 3]
        off = (resize - crop) // 2
        small = small[:, off:off + crop, off:off + crop]  # centre crop, as evaluation does
        out["rgb"] = (small.transpose(0, 3, 1, 2)[None].astype(np.float32) / 255.0)  # [1, T, 3, S, S]
        if "keypoints" in out and crop < resize:
            # beside an image stream, training maps landmarks into the crop window (models.data); so do we
            start, side = off / resize, crop / resize
            kp = (out["keypoints"][..., :2] - start) / side
            out["keypoints"] = np.concatenate([kp, out["keypoints"][..., 2:]], axis=-1)
            out["keypoints"][~out["keypoints_mask"]] = 0.0
    return out


@dataclass
class VideoResult:
    glosses: list[str]  # the decoded gloss sequence
    frames: int  # frames read
    seconds: dict[str, float]  # stage -> wall seconds: read, features, model, decode
    fps: float = 25.0  # the clip's frame rate
    timed: list[dict[str, Any]] = field(default_factory=list)  # [{gloss, start_s, end_s, score}]
    hand_rate: float | None = None  # fraction of frames with a hand found (None: the model reads no landmarks)
    landmarks: Landmarks | None = None  # the clip's (keypoints [T, K, 3], mask [T, K]) when it has them


def hand_rate(mask: np.ndarray) -> float | None:
    """Fraction of frames where MediaPipe found either hand; None when the layout has no hands."""
    if mask.ndim != 2 or mask.shape[1] != RIGHT_HAND[1]:
        return None
    return float(mask[:, LEFT_HAND[0]:RIGHT_HAND[1]].any(axis=1).mean()) if len(mask) else 0.0


class VideoTooLong(ValueError):
    """A clip longer than the configured limit; message ``"<video>: <problem>"``."""


def recognize_video(path: str | os.PathLike, rec: Recognizer, beam: int = 10,
                    extractor: Callable[[np.ndarray], Landmarks] | None = None,
                    max_seconds: float | None = None) -> VideoResult:
    """Decode a whole video file (or frame folder) offline, with each gloss's time in the clip.

    ``max_seconds`` refuses longer clips (:class:`VideoTooLong`) from the headers when they
    say, else after decoding no more than the limit allows (a server's guard against huge uploads).
    """
    from evaluate.core.decode import decode_outputs
    from preprocess.video import probe_video, read_frames

    t0 = time.perf_counter()
    limit = None
    if max_seconds is not None:
        info = probe_video(path)  # VideoError when it is not a video
        rate = info.fps if info.fps > 0 else 25.0
        if info.num_frames and info.num_frames / rate > max_seconds:
            raise VideoTooLong(f"{path}: {info.num_frames / rate:.1f} s long, over the {max_seconds:g} s limit; "
                               "trim it or raise the limit")
        limit = int(max_seconds * rate) + 1
    frames, fps = read_frames(path, max_frames=limit)  # VideoError "<path>: <problem>" when unreadable
    if limit is not None and len(frames) >= limit:
        raise VideoTooLong(f"{path}: longer than the {max_seconds:g} s limit; trim it or raise the limit")
    t1 = time.perf_counter()
    inputs = video_inputs(frames, rec, extractor, str(path))
    t2 = time.perf_counter()
    logits, out_lengths = rec(inputs, np.array([len(frames)]))
    t3 = time.perf_counter()
    hyp = decode_outputs(logits, out_lengths, rec.vocab, beam=beam)[0]
    fps = float(fps) if fps and fps > 0 else 25.0
    timed = timed_output(hyp, rec.vocab, fps, len(frames))
    t4 = time.perf_counter()
    seconds = {"read": t1 - t0, "features": t2 - t1, "model": t3 - t2, "decode": t4 - t3}
    lms = None
    rate = None
    if "keypoints_mask" in inputs:
        lms = (inputs["keypoints"][0], inputs["keypoints_mask"][0])
        rate = hand_rate(lms[1]) if rec.spec.keypoint_layout == HOLISTIC_543 else None
    return VideoResult(hyp.glosses, len(frames), seconds, fps, timed, rate, lms)


def write_timed(res: VideoResult, video: str | os.PathLike, json_path: str | None, ctm_path: str | None) -> None:
    """The timed glosses as JSON and/or CTM (the CTM's file id is the video's stem)."""
    import json

    from evaluate.core.formats import format_timed_ctm
    from preprocess.files import atomic_write_text

    if json_path:
        atomic_write_text(json_path, json.dumps(res.timed, indent=1) + "\n")
    if ctm_path:
        rows = [(g["gloss"], g["start_s"], g["end_s"], g["score"]) for g in res.timed]
        atomic_write_text(ctm_path, format_timed_ctm({Path(video).stem: rows}))
