"""Deployment inference: a video file or a webcam -> gloss sequence, from an exported model or a checkpoint.

``python -m evaluate.infer --model model.onnx --video clip.mp4 [--beam 10]`` decodes a whole
video offline (MediaPipe Holistic for landmark models, resize + centre crop for RGB models).

``python -m evaluate.infer --model model.onnx --webcam 0`` runs live: OpenCV capture (its own
thread) -> MediaPipe Holistic per frame -> a sliding window over the landmark sequence, run
through the landmark model every ``hop`` frames -> CTC decoding -> glosses printed as they
become final. ``--video clip.mp4 --stream`` feeds a file frame by frame through the very same
loop, which is how the live path is tested without a camera.

MediaPipe is nearly the whole cost of live recognition (40-70 ms of one core per frame on this
CPU, whatever the input size; the int8 model needs ~3 ms per 128-frame window, run every
``hop`` frames) and one Holistic graph keeps one core busy, so ``--workers`` graphs (default:
one per core, at most 2) run on threads and take the frames round-robin, each tracking across
its own frames (:func:`extract_landmarks`). Measured on the ten ../shared/clips, two graphs
give detection rates within 0.03 of one graph's, with mean landmark offsets of ~1e-3 of the
frame for pose and face and a few 1e-3 for hands.

Why a sliding window commits glosses the way it does (:class:`LandmarkStream`): a gloss near
either edge of a window lacks context, so the window's decisions are kept *tentative* until
frames actually leave the window. When the window next slides to start at frame ``s``, every
tentative gloss whose CTC spike lies before ``s + guard`` is final (it was decided with full
context and the next window can no longer see it whole), and the next window only decides
glosses from ``s + guard`` on. While the window still covers the whole stream, nothing is
committed early: at the end the result is exactly the model's decoding of the whole sequence.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from evaluate.decode import ctc_segments
from models.base import TIME_REDUCTION, InputSpec
from preprocess.layouts import HOLISTIC_543, LEFT_HAND, RIGHT_HAND

Landmarks = tuple[np.ndarray, np.ndarray]  # keypoints float32 [K, 3], mask bool [K]
FrameExtractor = Callable[[Any], Landmarks]  # one frame -> its landmarks


class Recognizer(Protocol):
    """What inference needs from a model, whichever runtime runs it."""

    name: str  # the model file, for messages
    vocab: tuple[str, ...]  # id -> gloss, index 0 the blank
    spec: InputSpec  # cache inputs the model expects
    input_names: tuple[str, ...]  # model inputs besides ``lengths``
    preprocess: dict[str, Any]  # deployment preprocessing (``rgb_resize``, ``rgb_crop``)

    def __call__(self, inputs: dict[str, np.ndarray], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batched inputs (see ``models.base``) -> (logits [B, T', V], out_lengths [B])."""
        ...


def _pad_time(inputs: dict[str, np.ndarray], min_frames: int) -> dict[str, np.ndarray]:
    """Zero-pad dim 1 to ``min_frames`` (exported graphs skip the model's own short-clip padding)."""
    t = next(iter(inputs.values())).shape[1]
    if t >= min_frames:
        return inputs
    out = {}
    for k, v in inputs.items():
        pad = np.zeros((v.shape[0], min_frames - t, *v.shape[2:]), dtype=v.dtype)
        out[k] = np.concatenate([v, pad], axis=1)
    return out


class OnnxRecognizer:
    """An exported model run by onnxruntime on the CPU; everything else comes from its metadata."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        from evaluate.export import ort_session, read_metadata

        meta = read_metadata(path)  # clear error when the vocabulary/config is missing
        self.name = str(path)
        self.vocab, self.spec, self.input_names = meta.vocab, meta.spec, meta.input_names
        self.preprocess, self.min_frames = meta.preprocess, meta.min_frames
        self.session = ort_session(path, threads)
        graph_inputs = tuple(i.name for i in self.session.get_inputs())
        if graph_inputs != (*self.input_names, "lengths"):
            raise ValueError(f"{path}: graph inputs {list(graph_inputs)} disagree with its metadata "
                             f"{[*self.input_names, 'lengths']}; re-export it with `python -m evaluate.export`")

    def __call__(self, inputs: dict[str, np.ndarray], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = _pad_time({k: inputs[k] for k in self.input_names}, self.min_frames)
        feed["lengths"] = np.asarray(lengths, dtype=np.int64)
        logits, out_lengths = self.session.run(["logits", "out_lengths"], feed)
        return logits, out_lengths


class TorchRecognizer:
    """A PyTorch contract model (same interface as :class:`OnnxRecognizer`); see :meth:`from_checkpoint`."""

    def __init__(self, model, vocab: Sequence[str], spec: InputSpec, input_names: Sequence[str],
                 preprocess: dict[str, Any] | None = None, name: str = "<torch model>", level: str = "main") -> None:
        self.model, self.level, self.name = model.eval(), level, name
        self.vocab, self.spec, self.input_names = tuple(vocab), spec, tuple(input_names)
        self.preprocess = dict(preprocess or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, threads: int = 1, level: str = "main") -> "TorchRecognizer":
        import torch

        from evaluate.export import load_checkpoint_model

        torch.set_num_threads(threads)
        m = load_checkpoint_model(path)
        return cls(m.model, m.vocab, m.spec, m.input_names, m.preprocess, str(path), level)

    def __call__(self, inputs: dict[str, np.ndarray], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in self.input_names}
        with torch.no_grad():
            out = self.model(tensors, torch.as_tensor(np.asarray(lengths), dtype=torch.long))
        return out.logits[self.level].numpy(), out.out_lengths.numpy()


def load_recognizer(path: str | os.PathLike, threads: int = 1) -> Recognizer:
    """``*.onnx`` -> :class:`OnnxRecognizer`; anything else is read as a checkpoint."""
    if str(path).endswith(".onnx"):
        return OnnxRecognizer(path, threads)
    return TorchRecognizer.from_checkpoint(path, threads)


# --- decoding ---------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (float32)."""
    x = logits.astype(np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def decode_ids(logits: np.ndarray, out_lengths: np.ndarray, beam: int = 1) -> list[list[int]]:
    """CTC-decode a batch into token ids: greedy for ``beam <= 1``, prefix beam search otherwise.

    Args:
        logits: [B, T', V] model outputs.
        out_lengths: [B] valid output steps.
    """
    import torch

    from evaluate.decode import beam_decode, greedy_decode

    lp = torch.from_numpy(log_softmax(logits))
    lens = torch.as_tensor(np.asarray(out_lengths), dtype=torch.long)
    return greedy_decode(lp, lens) if beam <= 1 else beam_decode(lp, lens, beam=beam)


def decode(logits: np.ndarray, out_lengths: np.ndarray, vocab: Sequence[str], beam: int = 1) -> list[list[str]]:
    """CTC-decode a batch into gloss strings (see :func:`decode_ids`)."""
    return [[vocab[i] for i in row] for row in decode_ids(logits, out_lengths, beam)]


def timed_output(logits: np.ndarray, steps: int, ids: Sequence[int], vocab: Sequence[str], fps: float,
                 num_frames: int) -> list[dict[str, Any]]:
    """``[{gloss, start_s, end_s, score}]`` of one decoded clip (see ``evaluate.decode.timed_glosses``).

    Args:
        logits: [T', V] outputs of one clip; ``steps`` of them are valid.
        ids: its decoded token ids.
        fps: the clip's frame rate; output step j covers frames [j, j + 1) * the time reduction.
    """
    from evaluate.decode import timed_glosses

    out = []
    for g in timed_glosses(log_softmax(logits[:steps]), ids):
        start, end = g.seconds(fps, TIME_REDUCTION, num_frames)
        out.append({"gloss": vocab[g.token], "start_s": round(start, 3), "end_s": round(end, 3),
                    "score": round(g.score, 4)})
    return out


# --- inputs from frames -----------------------------------------------------------------------


def require_landmark_model(rec: Recognizer) -> None:
    """Refuse, in one line, a model that does not read landmarks alone (the live path feeds only them)."""
    if "keypoints" not in rec.input_names:
        raise ValueError(f"{rec.name} takes {', '.join(rec.input_names)}, not keypoints: live recognition "
                         "runs landmark models; export a landmark student (python -m evaluate.export)")
    others = [n for n in rec.input_names if n not in ("keypoints", "keypoints_mask")]
    if others:
        raise ValueError(f"{rec.name} also needs {', '.join(others)}; live recognition feeds landmarks "
                         "only; export a landmark-only model (a landmark student)")


def require_mediapipe_layout(rec: Recognizer) -> None:
    """Refuse a model whose keypoints are not MediaPipe Holistic's 543 points (what the extractor gives)."""
    if rec.spec.keypoint_layout != HOLISTIC_543:
        raise ValueError(f"{rec.name} expects keypoint layout {rec.spec.keypoint_layout or 'unknown'!r} "
                         f"({rec.spec.num_keypoints} points) but MediaPipe Holistic gives {HOLISTIC_543!r}; "
                         "use a model trained on a MediaPipe landmark cache")


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
    ids = decode_ids(logits, out_lengths, beam)[0]
    fps = float(fps) if fps and fps > 0 else 25.0
    timed = timed_output(logits[0], int(out_lengths[0]), ids, rec.vocab, fps, len(frames))
    t4 = time.perf_counter()
    seconds = {"read": t1 - t0, "features": t2 - t1, "model": t3 - t2, "decode": t4 - t3}
    lms = None
    rate = None
    if "keypoints_mask" in inputs:
        lms = (inputs["keypoints"][0], inputs["keypoints_mask"][0])
        rate = hand_rate(lms[1]) if rec.spec.keypoint_layout == HOLISTIC_543 else None
    return VideoResult([rec.vocab[i] for i in ids], len(frames), seconds, fps, timed, rate, lms)


# --- live: frame sources, per-frame landmarks, the sliding window -------------------------------


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


def default_workers() -> int:
    """MediaPipe graphs for live recognition: one per CPU core, at most 2 (Holistic runs on one core
    per graph; a third graph on a 2-core CPU would only compete with decoding and the model)."""
    return max(1, min(2, os.cpu_count() or 1))


class HolisticWorkers:
    """``workers`` MediaPipe Holistic graphs sharing one stream round-robin (see :func:`extract_landmarks`).

    ``extractors`` are the per-thread callables for :func:`stream_glosses`; each tells its graph
    that ``workers`` frames pass between its calls. Close (or use as a context manager) only
    after the stream generator is closed: that joins the threads still inside a graph.
    """

    def __init__(self, workers: int, config=None) -> None:
        from preprocess.landmarks import HolisticExtractor

        if workers < 1:
            raise ValueError(f"workers must be >= 1 MediaPipe graph, got {workers}")
        self.graphs = [HolisticExtractor(config) for _ in range(workers)]  # built on their first frame
        self.extractors: list[FrameExtractor] = [partial(g.process_frame, step=workers) for g in self.graphs]

    def __enter__(self) -> "HolisticWorkers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for g in self.graphs:
            g.close()


@dataclass(frozen=True)
class StreamConfig:
    """Sliding-window settings of live recognition (frames at the camera's rate, ~25 fps)."""

    window: int = 128  # frames the model sees per run (~5 s); longer: more context, slower runs
    hop: int = 16  # frames between model runs (the display latency of tentative glosses)
    guard: int = 16  # left context a window needs before its decisions count (see module docstring)

    def __post_init__(self) -> None:
        for name in ("window", "hop"):
            if getattr(self, name) < 1:
                raise ValueError(f"stream {name} must be >= 1 frame, got {getattr(self, name)}")
        if self.guard < 0:
            raise ValueError(f"stream guard must be >= 0 frames, got {self.guard}")
        if self.hop + self.guard >= self.window:
            raise ValueError(f"stream hop + guard ({self.hop} + {self.guard}) must be < window ({self.window}); "
                             "otherwise some frames are never decided with context")


@dataclass
class StreamUpdate:
    """State after one model run."""

    frame: int  # frames consumed so far
    committed: list[str]  # final glosses so far, in order
    new: list[str]  # glosses made final by this run
    tentative: list[str]  # the current window's glosses after the final ones (may still change)
    final: bool = False  # the end-of-stream update


@dataclass
class StreamStats:
    """Counts and timings of one live session (filled in by :func:`stream_glosses`)."""

    frames: int = 0  # frames consumed
    runs: int = 0  # model runs
    workers: int = 1  # landmark extractors running in parallel (threads)
    extract_s: float = 0.0  # seconds inside the landmark extractors, summed over workers
    wait_s: float = 0.0  # seconds the recognition loop waited for landmarks (extraction not hidden)
    model_s: float = 0.0  # seconds in the model (+ greedy decoding)
    wall_s: float = 0.0  # seconds from the first frame request to the end
    startup_s: float = 0.0  # seconds until the first frame's landmarks (camera open + MediaPipe graph build)
    hand_frames: int = 0  # frames on which either hand was found (543-point layouts)

    @property
    def fps(self) -> float:
        """Frames per second end to end, start-up included."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def steady_fps(self) -> float:
        """Frames per second after the first frame: the rate a running session sustains."""
        rest = self.wall_s - self.startup_s
        return (self.frames - 1) / rest if self.frames > 1 and rest > 0 else 0.0


class LandmarkStream:
    """Sliding-window CTC recognition over a growing landmark sequence (see the module docstring).

    Args:
        rec: a landmark model (keypoints + keypoints_mask inputs).
        cfg: window, hop and guard in frames.
    """

    def __init__(self, rec: Recognizer, cfg: StreamConfig = StreamConfig(), beam: int = 1) -> None:
        require_landmark_model(rec)
        self.rec, self.cfg, self.beam = rec, cfg, beam
        self.kp: deque[np.ndarray] = deque(maxlen=cfg.window)
        self.mask: deque[np.ndarray] = deque(maxlen=cfg.window)
        self.seen = 0  # frames pushed
        self.last_run = 0  # value of ``seen`` at the last model run
        self.boundary = 0  # glosses whose spike starts before this frame are decided
        self.committed: list[tuple[int, int]] = []  # (token, start frame)
        self.pending: list[tuple[int, int]] = []  # the last run's undecided glosses
        self.model_s = 0.0
        self.runs = 0

    def push(self, keypoints: np.ndarray, mask: np.ndarray) -> StreamUpdate | None:
        """Add one frame's landmarks ([K, 3], [K]); returns an update when the model ran."""
        self.kp.append(np.asarray(keypoints, dtype=np.float32))
        self.mask.append(np.asarray(mask, dtype=bool))
        self.seen += 1
        if self.seen - self.last_run >= self.cfg.hop:
            return self._run(final=False)
        return None

    def flush(self) -> StreamUpdate:
        """End of stream: decode what is left and make every gloss final."""
        if self.seen == 0:
            return StreamUpdate(0, [], [], [], final=True)
        whole = self.beam > 1 and self.seen <= self.cfg.window  # re-decoded with the beam, as offline
        if self.seen != self.last_run or whole:
            return self._run(final=True)
        new = self._commit(self.pending)
        return StreamUpdate(self.seen, self._glosses(self.committed), new, [], final=True)

    def _glosses(self, items: Sequence[tuple[int, int]]) -> list[str]:
        return [self.rec.vocab[t] for t, _ in items]

    def _commit(self, items: list[tuple[int, int]]) -> list[str]:
        self.committed.extend(items)
        self.pending = [p for p in self.pending if p not in items]
        return self._glosses(items)

    def _run(self, final: bool) -> StreamUpdate:
        start = self.seen - len(self.kp)  # absolute frame of the window's first frame
        new: list[str] = []
        if start > 0:  # frames have left the window: what the last run decided before start+guard is final
            limit = start + self.cfg.guard
            new += self._commit([p for p in self.pending if p[1] < limit])
            self.boundary = max(self.boundary, limit)
        t0 = time.perf_counter()
        kp = np.stack(self.kp)[None]  # [1, W, K, 3]
        mask = np.stack(self.mask)[None]  # [1, W, K]
        logits, out_lengths = self.rec({"keypoints": kp, "keypoints_mask": mask}, np.array([kp.shape[1]]))
        n = int(out_lengths[0])
        if final and start == 0 and self.beam > 1:
            # the window holds the whole stream: decode it as offline decoding does, so both agree
            from evaluate.decode import timed_glosses

            ids = decode_ids(logits, out_lengths, self.beam)[0]
            spikes = [(g.token, g.spike) for g in timed_glosses(log_softmax(logits[0, :n]), ids)]
        else:
            spikes = ctc_segments(logits[0, :n].argmax(-1))  # greedy path of the window
        self.model_s += time.perf_counter() - t0
        self.runs += 1
        self.last_run = self.seen
        segs = [(tok, start + step * TIME_REDUCTION) for tok, step in spikes]
        # A spike may drift by a step between overlapping windows: look a little before the boundary
        # (at most half the guard: the window's first frames show tails of glosses cut by its edge),
        # and drop what matches a recent final gloss (same token, under two steps apart: a real
        # repeat needs a blank step between its two spikes).
        tol = 2 * TIME_REDUCTION
        lookback = min(tol, self.cfg.guard // 2)
        cands = [s for s in segs if s[1] >= self.boundary - lookback] if self.boundary else segs
        recent = self.committed[-3:]
        cands = [c for c in cands if not any(c[0] == k[0] and abs(c[1] - k[1]) < tol for k in recent)]
        self.pending = cands
        if final:
            new += self._commit(list(cands))
        return StreamUpdate(self.seen, self._glosses(self.committed), new, self._glosses(self.pending), final)


def extract_landmarks(frames: Iterable[Any], extractors: Sequence[FrameExtractor], ahead: int = 1,
                      stats: StreamStats | None = None) -> Iterator[Landmarks]:
    """Per-frame landmarks in frame order, computed on one background thread per extractor.

    Frames are dealt round-robin: with n extractors, extractor k gets frames k, k + n, ... in
    order, so each MediaPipe graph tracks across the frames it sees. MediaPipe releases the GIL
    inside its graph, so n graphs use n cores while the caller's thread runs the model; at most
    ``n * (1 + ahead)`` frames are in flight, which bounds the added latency.

    Args:
        frames: anything the extractors accept, one item per frame.
        extractors: each maps one frame -> (keypoints [K, 3], mask [K]); used by one thread only.
        ahead: frames queued per extractor besides the one it works on (keeps it busy).
        stats: ``extract_s`` (summed over workers) and ``wait_s`` are added to when given.

    Yields:
        (keypoints, mask) of each frame, in frame order; an extractor's error is raised here.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    if not extractors:
        raise ValueError("extract_landmarks needs at least one extractor")
    if ahead < 0:
        raise ValueError(f"ahead must be >= 0 frames, got {ahead}")
    n = len(extractors)
    lock = threading.Lock()
    busy = [0.0]  # seconds inside the extractors

    def run(extractor: FrameExtractor, frame: Any) -> Landmarks:
        t0 = time.perf_counter()
        out = extractor(frame)
        with lock:
            busy[0] += time.perf_counter() - t0
        return out

    pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"landmarks-{k}") for k in range(n)]
    pending: deque = deque()
    waited = 0.0

    def take() -> Landmarks:
        nonlocal waited
        t0 = time.perf_counter()
        out = pending.popleft().result()
        waited += time.perf_counter() - t0
        if stats is not None:
            stats.wait_s, stats.extract_s = waited, busy[0]
        return out

    try:
        for i, frame in enumerate(frames):
            pending.append(pools[i % n].submit(run, extractors[i % n], frame))
            if len(pending) >= n * (1 + ahead):
                yield take()
        while pending:
            yield take()
    finally:
        for pool in pools:  # waits for a graph still inside process(), so callers may close it next
            pool.shutdown(wait=True, cancel_futures=True)


def stream_glosses(frames: Iterable[Any], extractor: FrameExtractor | Sequence[FrameExtractor], rec: Recognizer,
                   cfg: StreamConfig = StreamConfig(), stats: StreamStats | None = None,
                   beam: int = 1) -> Iterator[StreamUpdate]:
    """The live loop over any frame iterator (camera, video file, or a test's synthetic frames).

    Landmarks are extracted on background threads (:func:`extract_landmarks`) while this
    thread runs the model, so a model run never stalls extraction.

    Args:
        frames: anything ``extractor`` accepts, one item per frame.
        extractor: one frame -> (keypoints float [K, 3], mask bool [K]), e.g.
            ``HolisticExtractor().process_frame``; or several (one per thread, frames dealt
            round-robin, e.g. :class:`HolisticWorkers`' extractors).
        rec: a landmark model.
        cfg: window, hop and guard.
        stats: filled in with frame counts and timings when given.
        beam: beam width of the final decoding when the window covered the whole stream
            (the result is then offline decoding's); windows that slide decode greedily.

    Yields:
        A :class:`StreamUpdate` after every model run; the last one has ``final=True``.
    """
    extractors = [extractor] if callable(extractor) else list(extractor)
    stream = LandmarkStream(rec, cfg, beam)
    stats = stats if stats is not None else StreamStats()
    stats.workers = len(extractors)
    t_start = time.perf_counter()
    landmarks = extract_landmarks(frames, extractors, stats=stats)
    try:
        for kp, mask in landmarks:
            stats.frames += 1
            if len(mask) == RIGHT_HAND[1] and mask[LEFT_HAND[0]:].any():
                stats.hand_frames += 1
            if stats.frames == 1:
                stats.startup_s = time.perf_counter() - t_start
            update = stream.push(kp, mask)
            if update is not None:
                stats.runs, stats.model_s, stats.wall_s = stream.runs, stream.model_s, time.perf_counter() - t_start
                yield update
    finally:
        landmarks.close()  # stops the workers even when the caller abandons this generator
    update = stream.flush()
    stats.runs, stats.model_s, stats.wall_s = stream.runs, stream.model_s, time.perf_counter() - t_start
    yield update


def fps_report(stats: StreamStats) -> str:
    """One line: overall frames/s and where the time goes."""
    n = max(stats.frames, 1)
    other = max(stats.wall_s - stats.wait_s - stats.model_s, 0.0)
    return (f"{stats.frames} frames in {stats.wall_s:.2f} s = {stats.fps:.1f} frames/s "
            f"({stats.steady_fps:.1f} after the {stats.startup_s:.2f} s start-up) | landmarks "
            f"{1000 * stats.extract_s / n:.1f} ms/frame on {stats.workers} thread(s), waited for "
            f"{1000 * stats.wait_s / n:.1f} ms/frame | model {1000 * stats.model_s / max(stats.runs, 1):.2f} ms/run "
            f"x {stats.runs} runs | other {1000 * other / n:.1f} ms/frame")


def write_timed(res: VideoResult, video: str | os.PathLike, json_path: str | None, ctm_path: str | None) -> None:
    """The timed glosses as JSON and/or CTM (the CTM's file id is the video's stem)."""
    import json

    from evaluate.formats import format_timed_ctm
    from preprocess.manifest import atomic_write_text

    if json_path:
        atomic_write_text(json_path, json.dumps(res.timed, indent=1) + "\n")
    if ctm_path:
        rows = [(g["gloss"], g["start_s"], g["end_s"], g["score"]) for g in res.timed]
        atomic_write_text(ctm_path, format_timed_ctm({Path(video).stem: rows}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluate.infer", description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="exported .onnx model (vocabulary and config inside)")
    model.add_argument("--ckpt", help="checkpoint (best.pt), run with PyTorch")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file or frame folder")
    source.add_argument("--webcam", type=int, metavar="INDEX", help="camera index for live recognition (OpenCV)")
    parser.add_argument("--stream", action="store_true", help="run --video through the live sliding-window loop")
    parser.add_argument("--beam", type=int, default=10,
                        help="beam width (1: greedy); live windows decode greedily, and with this beam at the "
                             "end when the window covered the whole stream")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the model (default 1)")
    parser.add_argument("--window", type=int, default=StreamConfig.window, help="live: frames per model run")
    parser.add_argument("--hop", type=int, default=StreamConfig.hop, help="live: frames between model runs")
    parser.add_argument("--guard", type=int, default=StreamConfig.guard, help="live: left-context frames")
    parser.add_argument("--max-frames", type=int, default=None, help="live: stop after this many frames")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="live: MediaPipe graphs on parallel threads, frames dealt round-robin "
                             "(default: CPU cores, at most 2)")
    parser.add_argument("--frames-per-second-report", action="store_true",
                        help="print frames/s and the time per stage (live: also every model run)")
    parser.add_argument("--json", metavar="FILE", help="offline: write [{gloss, start_s, end_s, score}] to FILE")
    parser.add_argument("--ctm", metavar="FILE", help="offline: write the timed glosses as a CTM to FILE")
    parser.add_argument("--overlay", metavar="OUT.mp4",
                        help="offline: write the clip with the landmarks drawn and the glosses as timed captions")
    t_start = time.perf_counter()
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's start-up chatter
    try:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        offline_only = [f"--{n}" for n in ("json", "ctm", "overlay") if getattr(args, n)]
        if offline_only and (args.video is None or args.stream):
            raise ValueError(f"{', '.join(offline_only)} need offline decoding of a file: use --video without --stream")
        rec = load_recognizer(args.model or args.ckpt, args.threads)
        startup = time.perf_counter() - t_start
        if args.video is not None and not args.stream:
            res = recognize_video(args.video, rec, beam=args.beam)
            print(" ".join(res.glosses) if res.glosses else "(no gloss recognised)")
            if res.hand_rate == 0.0:
                print(f"warning: {args.video}: no hand was found on any of its {res.frames} frames; the glosses "
                      "above come from face and body alone (check the hands are in view and lit)", file=sys.stderr)
            write_timed(res, args.video, args.json, args.ctm)
            if args.overlay:
                from preprocess.render import write_overlay

                write_overlay(args.video, args.overlay, res.timed, res.landmarks)
                print(f"overlay: {args.overlay}", file=sys.stderr)
            seconds = {"start-up": startup, **res.seconds}
            total = sum(seconds.values())
            print("time: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in seconds.items())
                  + f"; {res.frames} frames, {res.frames / total:.1f} frames/s end to end (start-up included), "
                  f"decoder {'greedy' if args.beam <= 1 else f'beam {args.beam}'}", file=sys.stderr)
            return 0
        cfg = StreamConfig(args.window, args.hop, args.guard)
        require_landmark_model(rec)
        require_mediapipe_layout(rec)
        graphs = HolisticWorkers(args.workers)
        source = args.webcam if args.webcam is not None else args.video
        frames = prefetch(capture_frames(source, args.max_frames), keep_latest=args.webcam is not None)
        stats = StreamStats()
        update = StreamUpdate(0, [], [], [])
        updates = stream_glosses(frames, graphs.extractors, rec, cfg, stats, beam=args.beam)
        try:
            for update in updates:
                if update.new:
                    print(" ".join(update.new), flush=True)
                if args.frames_per_second_report and not update.final:
                    print(f"[{update.frame} frames, {stats.fps:.1f} fps] tentative: {' '.join(update.tentative)}",
                          file=sys.stderr, flush=True)
        except KeyboardInterrupt:  # Ctrl+C ends a webcam session: keep what was recognised
            update = StreamUpdate(update.frame, update.committed + update.tentative, [], [], final=True)
        finally:
            updates.close()  # joins the landmark threads before their graphs are closed
            graphs.close()
        print("glosses: " + (" ".join(update.committed) or "(none)"))
        if stats.frames and stats.hand_frames == 0:
            print(f"warning: no hand was found on any of the {stats.frames} frames; the glosses above come from "
                  "face and body alone (check the hands are in view and lit)", file=sys.stderr)
        if stats.frames <= cfg.window and args.beam > 1:
            how = f"the whole clip in one window, beam {args.beam}: offline decoding's settings"
        elif args.beam > 1:
            how = (f"greedy over {cfg.window}-frame windows: the {stats.frames}-frame stream is longer than the window, "
                   f"so offline --beam {args.beam} may differ (--window {stats.frames} decodes it as offline does)")
        else:
            how = "greedy, " + ("the whole clip in one window" if stats.frames <= cfg.window
                                else f"over {cfg.window}-frame windows")
        print(f"decoder: {how}; landmarks from {stats.workers} MediaPipe graph(s)", file=sys.stderr)
        if args.frames_per_second_report:
            print(fps_report(stats), file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # VideoError and MediaPipe errors: one line, not a traceback
        from preprocess.landmarks import NoPersonError
        from preprocess.video import VideoError

        if isinstance(e, (VideoError, NoPersonError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
