"""The live loop: a sliding window over the landmark sequence, run through the model every ``hop`` frames.

Why a sliding window commits glosses the way it does (:class:`LandmarkStream`): a gloss near
either edge of a window lacks context, so the window's decisions are kept *tentative* until
frames actually leave the window. When the window next slides to start at frame ``s``, every
tentative gloss whose CTC spike lies before ``s + guard`` is final (it was decided with full
context and the next window can no longer see it whole), and the next window only decides
glosses from ``s + guard`` on. While the window still covers the whole stream, nothing is
committed early: at the end the result is exactly the model's decoding of the whole sequence.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from evaluate.core.decode import ctc_segments
from evaluate.live.mediapipe_pool import FrameExtractor, extract_landmarks
from evaluate.live.runtime import Recognizer, require_landmark_model
from models.base import TIME_REDUCTION
from preprocess.layouts import LEFT_HAND, RIGHT_HAND


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
    new_frames: list[int] = field(default_factory=list)  # stream frame of each of ``new``'s CTC spikes
    tentative_frames: list[int] = field(default_factory=list)  # the same for ``tentative``


@dataclass
class StreamStats:
    """Counts and timings of one live session (filled in by :func:`stream_glosses`)."""

    frames: int = 0  # frames consumed
    runs: int = 0  # model runs
    workers: int = 1  # landmark extractors running in parallel (threads)
    extract_s: float = 0.0  # seconds inside the landmark extractors, summed over workers
    wait_s: float = 0.0  # seconds the recognition loop waited for landmarks (extraction not hidden)
    model_s: float = 0.0  # seconds in the model (+ greedy decoding)
    wall_s: float = 0.0  # seconds from the session's start to the end
    startup_s: float = 0.0  # seconds from the session's start to the first frame's landmarks (graphs, camera, model)
    hand_frames: int = 0  # frames on which either hand was found (543-point layouts)
    setup_s: float = 0.0  # of ``startup_s``, the seconds before the loop asked for its first frame
    process_startup_s: float | None = None  # seconds from the process's start to the first frame's landmarks

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
        return StreamUpdate(self.seen, self._glosses(self.committed), self._glosses(new), [], final=True,
                            new_frames=[f for _, f in new])

    def _glosses(self, items: Sequence[tuple[int, int]]) -> list[str]:
        return [self.rec.vocab[t] for t, _ in items]

    def _commit(self, items: list[tuple[int, int]]) -> list[tuple[int, int]]:
        self.committed.extend(items)
        self.pending = [p for p in self.pending if p not in items]
        return items

    def _run(self, final: bool) -> StreamUpdate:
        start = self.seen - len(self.kp)  # absolute frame of the window's first frame
        new: list[tuple[int, int]] = []  # (token, spike frame) made final by this run
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
            from evaluate.core.decode import decode_outputs

            hyp = decode_outputs(logits, out_lengths, self.rec.vocab, beam=self.beam)[0]
            spikes = [(g.token, g.spike) for g in hyp.timed()]
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
        return StreamUpdate(self.seen, self._glosses(self.committed), self._glosses(new), self._glosses(self.pending),
                            final, [f for _, f in new], [f for _, f in self.pending])



def stream_glosses(frames: Iterable[Any], extractor: FrameExtractor | Sequence[FrameExtractor], rec: Recognizer,
                   cfg: StreamConfig = StreamConfig(), stats: StreamStats | None = None,
                   beam: int = 1, started: float | None = None) -> Iterator[StreamUpdate]:
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
        started: ``time.perf_counter()`` when the session began (graphs, model and camera set
            up before this call count in ``stats.startup_s``); default: now.

    Yields:
        A :class:`StreamUpdate` after every model run; the last one has ``final=True``.
    """
    extractors = [extractor] if callable(extractor) else list(extractor)
    stream = LandmarkStream(rec, cfg, beam)
    stats = stats if stats is not None else StreamStats()
    stats.workers = len(extractors)
    t_start = time.perf_counter() if started is None else started
    stats.setup_s = time.perf_counter() - t_start
    landmarks = extract_landmarks(frames, extractors, stats=stats)
    try:
        for kp, mask in landmarks:
            stats.frames += 1
            if len(mask) == RIGHT_HAND[1] and mask[LEFT_HAND[0]:].any():
                stats.hand_frames += 1
            if stats.frames == 1:
                stats.startup_s = time.perf_counter() - t_start
                stats.process_startup_s = process_age_s()
            update = stream.push(kp, mask)
            if update is not None:
                stats.runs, stats.model_s, stats.wall_s = stream.runs, stream.model_s, time.perf_counter() - t_start
                yield update
    finally:
        landmarks.close()  # stops the workers even when the caller abandons this generator
    update = stream.flush()
    stats.runs, stats.model_s, stats.wall_s = stream.runs, stream.model_s, time.perf_counter() - t_start
    yield update


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``, 10 ms steps; None elsewhere).

    The start-up a user of the command line waits for: interpreter, imports and all.
    """
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - started_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def fps_report(stats: StreamStats) -> str:
    """One line: overall frames/s and where the time goes."""
    n = max(stats.frames, 1)
    other = max(stats.wall_s - stats.setup_s - stats.wait_s - stats.model_s, 0.0)
    return (f"{stats.frames} frames in {stats.wall_s:.2f} s = {stats.fps:.1f} frames/s "
            f"({stats.steady_fps:.1f} after the {stats.startup_s:.2f} s start-up) | landmarks "
            f"{1000 * stats.extract_s / n:.1f} ms/frame on {stats.workers} thread(s), waited for "
            f"{1000 * stats.wait_s / n:.1f} ms/frame | model {1000 * stats.model_s / max(stats.runs, 1):.2f} ms/run "
            f"x {stats.runs} runs | other {1000 * other / n:.1f} ms/frame"
            + ("" if stats.process_startup_s is None else
               f" | first frame {stats.process_startup_s:.2f} s after the process started"))
