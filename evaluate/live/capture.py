"""Frame sources for live recognition: a camera or a video file read frame by frame, and a prefetching thread."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


def capture_frames(source: int | str | os.PathLike, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 [H, W, 3] frames, one at a time, from a camera index or a video file (OpenCV)."""
    import cv2

    if not isinstance(source, int):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such video file; check the path")
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        what = f"camera {source}" if isinstance(source, int) else str(source)
        fix = "check it is connected and not in use" if isinstance(source, int) else "not a video OpenCV can read"
        raise ValueError(f"{what}: cannot be opened; {fix}")
    count = 0
    try:
        while max_frames is None or count < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    if count == 0:
        what = f"camera {source}" if isinstance(source, int) else str(source)
        raise ValueError(f"{what}: no frame could be read; check the file/camera (unreadable or empty video)")


def prefetch(frames: Iterable[Any], depth: int = 4, keep_latest: bool = False) -> Iterator[Any]:
    """Read ``frames`` on a background thread so decoding overlaps MediaPipe (both release the GIL).

    Args:
        frames: any frame iterator (its errors are re-raised here, in order).
        depth: frames buffered ahead.
        keep_latest: drop the oldest buffered frame instead of waiting when the consumer is slower
            (a live camera: recognise the present, not a growing backlog); False keeps every frame.
    """
    import queue
    import threading

    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    buf: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                buf.put(item, timeout=0.1)
                return
            except queue.Full:
                if keep_latest:
                    try:
                        buf.get_nowait()  # drop the oldest frame
                    except queue.Empty:
                        pass

    def reader() -> None:
        try:
            for f in frames:
                if stop.is_set():
                    return
                put((f, None))
        except BaseException as e:  # handed to the consumer
            put((done, e))
            return
        put((done, None))

    thread = threading.Thread(target=reader, name="frame-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = buf.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=1.0)
