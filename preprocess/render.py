"""Landmarks and timed captions drawn onto frames, written as H.264 MP4 through PyAV.

OpenCV's bundled writer has no H.264 encoder here (only MPEG-4 part 2, which browsers do not
play), so videos are encoded with PyAV's libx264 in yuv420p, the profile every player reads.
Used by ``evaluate.infer --overlay`` (a clip with its skeleton and recognised glosses), by
``python -m preprocess.keypoint_io render`` (cached landmarks alone, for keypoint-only corpora)
and by the web page.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from preprocess.layouts import FACE, HOLISTIC_543, LEFT_HAND, POSE, RIGHT_HAND

POSE_COLOUR = (80, 200, 255)  # RGB
LEFT_COLOUR = (255, 120, 60)
RIGHT_COLOUR = (90, 230, 90)
FACE_COLOUR = (200, 200, 200)
CAPTION_DONE = (235, 235, 235)  # glosses already signed
CAPTION_NOW = (255, 220, 0)  # the gloss being signed


@lru_cache(maxsize=1)
def holistic_edges() -> tuple[tuple[np.ndarray, tuple[int, int, int]], ...]:
    """(edges int [E, 2] in the 543 layout, colour) for pose and both hands (MediaPipe's own connection lists)."""
    from preprocess.landmarks import import_holistic

    holistic = import_holistic()
    pose = np.array(sorted(holistic.POSE_CONNECTIONS)) + POSE[0]
    hand = np.array(sorted(holistic.HAND_CONNECTIONS))
    return ((pose, POSE_COLOUR), (hand + LEFT_HAND[0], LEFT_COLOUR), (hand + RIGHT_HAND[0], RIGHT_COLOUR))


def draw_landmarks(frame: np.ndarray, keypoints: np.ndarray, mask: np.ndarray, layout: str = HOLISTIC_543) -> np.ndarray:
    """Draw one frame's landmarks in place and return it.

    Args:
        frame: uint8 RGB [H, W, 3].
        keypoints: float [K, 3], x and y normalised to the frame.
        mask: bool [K], points found.
        layout: the cache's layout name; MediaPipe Holistic gets its skeleton, any other layout dots.
    """
    import cv2

    h, w = frame.shape[:2]
    xy = np.round(keypoints[:, :2] * (w, h)).astype(np.int32)  # [K, 2] pixels
    thick = max(1, round(min(h, w) / 240))
    if layout == HOLISTIC_543 and len(keypoints) == RIGHT_HAND[1]:
        for i in range(*FACE):
            if mask[i]:
                frame[max(0, min(h - 1, xy[i, 1])), max(0, min(w - 1, xy[i, 0]))] = FACE_COLOUR
        for edges, colour in holistic_edges():
            ok = mask[edges[:, 0]] & mask[edges[:, 1]]
            for a, b in edges[ok]:
                cv2.line(frame, tuple(map(int, xy[a])), tuple(map(int, xy[b])), colour, thick, cv2.LINE_AA)
        for (lo, hi), colour in ((LEFT_HAND, LEFT_COLOUR), (RIGHT_HAND, RIGHT_COLOUR)):
            for i in range(lo, hi):
                if mask[i]:
                    cv2.circle(frame, tuple(map(int, xy[i])), thick + 1, colour, -1, cv2.LINE_AA)
    else:
        for i in np.flatnonzero(mask):
            cv2.circle(frame, tuple(map(int, xy[i])), thick + 1, POSE_COLOUR, -1, cv2.LINE_AA)
    return frame


def caption_words(timed: Sequence[dict[str, Any]], t: float) -> list[tuple[str, bool]]:
    """The caption at time ``t`` (seconds): every gloss begun by then, each flagged when ``t`` is inside it."""
    return [(g["gloss"], g["start_s"] <= t < g["end_s"]) for g in timed if g["start_s"] <= t]


def draw_caption(frame: np.ndarray, words: Sequence[tuple[str, bool]]) -> np.ndarray:
    """A dark band at the bottom with the words, the current one highlighted; the last words that fit."""
    import cv2

    if not words:
        return frame
    h, w = frame.shape[:2]
    scale = max(0.35, h / 720)
    thick = max(1, round(h / 360))
    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, th), base = cv2.getTextSize("Ag", font, scale, thick)
    band = th + base + 2 * max(4, th // 2)
    space = cv2.getTextSize(" ", font, scale, thick)[0][0]
    sizes = [cv2.getTextSize(word, font, scale, thick)[0][0] for word, _ in words]
    start, width = len(words), 0  # keep the latest words that fit the width
    while start > 0 and width + sizes[start - 1] + space <= w - 2 * space:
        start -= 1
        width += sizes[start] + space
    y0 = h - band
    frame[y0:] = (frame[y0:].astype(np.uint16) * 0.3).astype(np.uint8)
    x = space
    for (word, now), size in zip(words[start:], sizes[start:]):
        cv2.putText(frame, word, (x, h - base - max(4, th // 2)), font, scale, CAPTION_NOW if now else CAPTION_DONE,
                    thick, cv2.LINE_AA)
        x += size + space
    return frame


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float, crf: int = 23) -> int:
    """Encode RGB uint8 frames as H.264 (yuv420p) MP4; returns the frames written.

    Written to a temp file renamed at the end, so a crash never leaves a half-written video. Odd
    frame sizes are padded by one pixel (yuv420p needs even sides).
    """
    import av
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix or '.mp4'}")
    n = 0
    try:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            stream = None
            for frame in frames:
                h, w = frame.shape[:2]
                if stream is None:
                    stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                    stream.width, stream.height = w + w % 2, h + h % 2
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                if w % 2 or h % 2:
                    frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    out.mux(packet)
                n += 1
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def annotated_frames(frames: Iterable[np.ndarray], fps: float, timed: Sequence[dict[str, Any]] = (),
                     landmarks: tuple[np.ndarray, np.ndarray] | None = None,
                     layout: str = HOLISTIC_543) -> Iterator[np.ndarray]:
    """Frames with their landmarks drawn (when given: [T, K, 3], [T, K]) and the timed captions."""
    for i, frame in enumerate(frames):
        frame = np.array(frame, dtype=np.uint8, copy=True)
        if landmarks is not None and i < len(landmarks[0]):
            draw_landmarks(frame, landmarks[0][i], landmarks[1][i], layout)
        yield draw_caption(frame, caption_words(timed, i / fps))


def write_overlay(video: str | os.PathLike, out: str | os.PathLike, timed: Sequence[dict[str, Any]],
                  landmarks: tuple[np.ndarray, np.ndarray] | None = None) -> int:
    """``video`` with its landmarks and timed glosses ([{gloss, start_s, end_s}]) as an H.264 MP4; returns frames."""
    from preprocess.video import read_frames

    frames, fps = read_frames(video)
    fps = float(fps) if fps and fps > 0 else 25.0
    return write_mp4(out, annotated_frames(frames, fps, timed, landmarks), fps)


def render_landmarks(keypoints: np.ndarray, mask: np.ndarray, out: str | os.PathLike, fps: float = 25.0,
                     size: tuple[int, int] = (512, 512), layout: str = HOLISTIC_543,
                     caption: Sequence[str] = ()) -> int:
    """Landmarks alone on a black canvas of ``size`` (width, height), ``caption`` under them; returns frames."""
    w, h = size
    if w < 16 or h < 16:
        raise ValueError(f"render size must be at least 16x16 pixels, got {w}x{h}")
    words = [(g, False) for g in caption]
    blank = np.zeros((h, w, 3), dtype=np.uint8)
    frames = (draw_caption(draw_landmarks(blank.copy(), keypoints[i], mask[i], layout), words)
              for i in range(len(keypoints)))
    return write_mp4(out, frames, fps)
