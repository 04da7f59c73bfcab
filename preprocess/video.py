"""Decode a video file or a frame folder into one uint8 RGB array, and resize/crop it.

decord is the fast path; PyAV (the same FFmpeg underneath, but a frame-by-frame decoder that
reports where a file stops) takes over when decord cannot open or decode a file. Frame folders
(PHOENIX ships PNG frames) are read with OpenCV in natural order, so ``images2`` < ``images10``.

Every failure is a :class:`VideoError` whose message is one line ``"<path>: <problem>"``, so
the feature driver can report it, count it and carry on with the next video.
"""
from __future__ import annotations

import glob as _glob
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from preprocess.configs import UserError

# Frame-folder images: the corpus readers count these and read_frames decodes them (OpenCV reads all).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_IMAGE_NAMES = "/".join(IMAGE_SUFFIXES)
FOLDER_FPS = 25.0  # PHOENIX14/14-T frame folders are 25 fps and carry no rate of their own


class VideoError(UserError):
    """A video that cannot be used; the message is ``"<path>: <problem>"`` on one line."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(problem.split())  # keep it on one line
        super().__init__(f"{self.path}: {self.problem}")


class TruncatedVideoWarning(UserWarning):
    """A video that ends early; its decodable prefix was kept (``allow_truncated=True``)."""


def read_frames(
    source: str | Path,
    max_frames: int | None = None,
    *,
    allow_truncated: bool = False,
    folder_fps: float = FOLDER_FPS,
) -> tuple[np.ndarray, float]:
    """Decode ``source`` into ``(frames uint8 [T, H, W, 3] RGB, fps)``.

    Args:
        source: a video file, a folder of image frames (:data:`IMAGE_SUFFIXES`), or a glob such as
            ``dir/*.png``.
        max_frames: keep at most this many frames from the start (None: all).
        allow_truncated: a video file that ends before its header says is an error by default,
            because its gloss annotation covers frames that are missing; True keeps the frames
            that decode and warns with :class:`TruncatedVideoWarning`.
        folder_fps: frame rate reported for frame folders, which store none.

    Raises:
        VideoError: missing path, unreadable or not a video, truncated, or zero frames.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    text = str(source)
    if any(ch in text for ch in "*?[") and not Path(text).exists():  # a glob, not a literal name
        return _read_image_files(text, sorted(_glob.glob(text), key=natural_key), max_frames), folder_fps
    path = Path(source)
    if path.is_dir():
        return _read_folder(path, max_frames), folder_fps
    if not path.exists():
        raise VideoError(path, "no such file or folder; check the corpus source path and DATA_ROOT")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes); re-copy or re-download it")
    try:
        frames, fps = _read_decord(path, max_frames)
    except _DecordFailed:
        frames, fps = _read_pyav(path, max_frames, allow_truncated)
    if len(frames) == 0:
        raise VideoError(path, "video has zero frames")
    return frames, fps


@dataclass(frozen=True)
class VideoInfo:
    """What a video's headers say, without decoding it."""

    fps: float  # frames per second (FOLDER_FPS for frame folders, which store none)
    num_frames: int  # frames in the container header / images in the folder (0 when unknown)
    width: int  # frame width in pixels
    height: int  # frame height in pixels


def probe_video(source: str | Path, folder_fps: float = FOLDER_FPS) -> VideoInfo:
    """Frame rate, frame count and size of a video file or frame folder from headers only.

    Reads PyAV's container and stream headers (milliseconds; nothing is decoded); a frame
    folder is counted and its first image read. Raises VideoError when the source cannot
    be opened.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                       key=natural_key)
        if not files:
            raise VideoError(path, f"frame folder holds no {_IMAGE_NAMES} frames")
        h, w = _imread_rgb(str(files[0])).shape[:2]
        return VideoInfo(float(folder_fps), len(files), int(w), int(h))
    if not path.is_file():
        raise VideoError(path, "no such file or folder; check the corpus source path and DATA_ROOT")
    try:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(path, "file has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return VideoInfo(float(rate) if rate else FOLDER_FPS, int(stream.frames or 0),
                             int(stream.codec_context.width), int(stream.codec_context.height))
    except VideoError:
        raise
    except ImportError:  # PyAV missing: OpenCV reads the same headers
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise VideoError(path, "not a readable video; check the file is a complete video") from None
            fps = cap.get(cv2.CAP_PROP_FPS)
            return VideoInfo(float(fps) if fps > 0 else FOLDER_FPS, int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0)),
                             int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        finally:
            cap.release()
    except Exception as e:
        raise VideoError(path, f"not a readable video ({_short(e)}); check the file is a complete video") from None


def resize_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Scale the short side to ``size`` and keep the centre square: uint8 [T, size, size, 3].

    The centre square is cut from the source first and then scaled, which is the same
    geometry as scale-then-crop but resizes fewer pixels. INTER_AREA when shrinking (no
    aliasing), INTER_LINEAR when enlarging.

    Args:
        frames: uint8 [T, H, W, C].
        size: output side in pixels.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if frames.ndim != 4:
        raise ValueError(f"frames must be [T, H, W, C], got shape {frames.shape}")
    t, h, w, c = frames.shape
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    square = frames[:, y0:y0 + side, x0:x0 + side]  # [T, side, side, C], a view
    if side == size:
        return np.ascontiguousarray(square)
    interp = cv2.INTER_AREA if size < side else cv2.INTER_LINEAR
    out = np.empty((t, size, size, c), dtype=frames.dtype)
    for i in range(t):
        r = cv2.resize(square[i], (size, size), interpolation=interp)
        out[i] = r.reshape(size, size, c)  # cv2 drops the channel axis when C == 1
    return out


def natural_key(name: str | Path) -> list:
    """Sort key that orders embedded numbers by value: ``img2.png`` before ``img10.png``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", str(name))]


# --- video files -------------------------------------------------------------------------------

class _DecordFailed(Exception):
    pass


def _read_decord(path: Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    try:
        import decord
    except ImportError as e:  # decord has no wheel for some platforms; PyAV covers them
        raise _DecordFailed(str(e)) from e
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(reader)
        # decord counts frames from the container's sample table, which includes packets an
        # edit list discards; decoding past them returns copies of the last frame. PyAV's
        # demuxer (no decoding, milliseconds) knows how many frames actually play.
        playable = _playable_frames(path)
        if playable is not None and 0 < playable < n:
            n = playable
        if max_frames is not None:
            n = min(n, max_frames)
        if n == 0:
            raise _DecordFailed("decord found no frames")
        frames = reader.get_batch(list(range(n))).asnumpy()
        fps = float(reader.get_avg_fps() or 0.0)
    except _DecordFailed:
        raise
    except Exception as e:  # decord raises DECORDError, RuntimeError, IndexError...
        raise _DecordFailed(str(e)) from e
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise _DecordFailed(f"unexpected decord output {frames.shape} {frames.dtype}")
    return np.ascontiguousarray(frames), fps if fps > 0 else FOLDER_FPS


def _playable_frames(path: Path) -> int | None:
    """Frames the container will really play (non-empty, non-discarded packets), or None."""
    try:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            return sum(
                1 for p in container.demux(video=0) if p.size > 0 and not getattr(p, "is_discard", False)
            )
    except Exception:  # the count is only a refinement; decord's own count stands
        return None


def _read_pyav(path: Path, max_frames: int | None, allow_truncated: bool) -> tuple[np.ndarray, float]:
    try:
        import av
    except ImportError as e:
        raise VideoError(path, "decord could not read it and PyAV (av) is not installed") from e
    frames: list[np.ndarray] = []
    failure = ""
    try:
        container = av.open(str(path))
    except Exception as e:
        reason = _short(e).replace(f": '{path}'", "")
        raise VideoError(path, f"not a readable video ({reason}); check the file is a complete video") from e
    with container:
        if not container.streams.video:
            raise VideoError(path, "file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        expected = int(stream.frames or 0)  # from the header; 0 when the container has none
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else FOLDER_FPS
        packets = 0
        try:
            for packet in container.demux(stream):
                if packet.size > 0:
                    packets += 1
                for frame in packet.decode():
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if max_frames is not None and len(frames) >= max_frames:
                        break
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except Exception as e:  # av.error.InvalidDataError and friends at the cut
            failure = _short(e)
    complete = max_frames is not None and len(frames) >= max_frames
    if not complete and (failure or (expected and packets < expected)):
        got = f"decoded {len(frames)} of {expected or '?'} frames"
        if not frames:
            raise VideoError(path, f"unreadable or truncated video, {got} ({failure or 'file ends early'})")
        if not allow_truncated:
            raise VideoError(
                path, f"truncated video, {got} ({failure or 'file ends early'}); re-download or "
                "re-encode it (or pass allow_truncated=True to keep the decoded frames)"
            )
        warnings.warn(f"{path}: truncated video, kept the first {len(frames)} of {expected or '?'} frames",
                      TruncatedVideoWarning, stacklevel=3)
    if not frames:
        raise VideoError(path, "video has zero frames")
    return np.stack(frames), fps


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:160] or type(e).__name__


# --- frame folders -----------------------------------------------------------------------------

def _read_folder(folder: Path, max_frames: int | None) -> np.ndarray:
    files = sorted(
        (str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=natural_key,
    )
    if not files:
        subdirs = sorted(p.name + "/" for p in folder.iterdir() if p.is_dir())
        hint = f" (it has sub-folders {', '.join(subdirs[:3])}: point the source at the folder holding the frames)" if subdirs else ""
        raise VideoError(folder, f"frame folder holds no {_IMAGE_NAMES} frames{hint}")
    return _read_image_files(str(folder), files, max_frames)


def _read_image_files(source: str, files: list[str], max_frames: int | None) -> np.ndarray:
    if not files:
        raise VideoError(source, "no frame files match this pattern; check the corpus source path")
    if max_frames is not None:
        files = files[:max_frames]
    first = _imread_rgb(files[0])
    out = np.empty((len(files), *first.shape), dtype=np.uint8)  # [T, H, W, 3]
    out[0] = first
    for i, name in enumerate(files[1:], start=1):
        img = _imread_rgb(name)
        if img.shape != first.shape:
            raise VideoError(name, f"frame size {img.shape[1]}x{img.shape[0]} differs from the first frame's "
                                   f"{first.shape[1]}x{first.shape[0]} in {source}")
        out[i] = img
    return out


def _imread_rgb(name: str) -> np.ndarray:
    img = cv2.imread(name, cv2.IMREAD_COLOR)  # always 3-channel BGR, grey frames expanded
    if img is None:
        raise VideoError(name, "unreadable image frame (corrupt or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
