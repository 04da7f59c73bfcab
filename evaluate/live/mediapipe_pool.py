"""MediaPipe Holistic graphs on parallel threads, sharing one frame stream round-robin.

MediaPipe is nearly the whole cost of live recognition and one Holistic graph keeps one core
busy, so several graphs run on threads (MediaPipe releases the GIL inside a graph), each
tracking across the frames dealt to it, and their landmarks come back in frame order.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from evaluate.live.window import StreamStats

Landmarks = tuple[np.ndarray, np.ndarray]  # keypoints float32 [K, 3], mask bool [K]
FrameExtractor = Callable[[Any], Landmarks]  # one frame -> its landmarks


def default_workers() -> int:
    """MediaPipe graphs for live recognition: one per CPU core, at most 2 (Holistic runs on one core
    per graph; a third graph on a 2-core CPU would only compete with decoding and the model)."""
    return max(1, min(2, os.cpu_count() or 1))


class HolisticWorkers:
    """``workers`` MediaPipe Holistic graphs sharing one stream round-robin (see :func:`extract_landmarks`).

    ``extractors`` are the per-thread callables for :func:`stream_glosses`; each tells its graph
    that ``workers`` frames pass between its calls. With ``warm_up`` (or after :meth:`start`)
    every graph is built and run on a blank frame at once, each on its own thread, while the
    caller goes on (loading the model, opening the camera): a graph's start-up is mostly paid
    on its first frame, and this way it overlaps the rest of the session's start instead of
    following it. Close (or use as a context manager) only after the stream generator is
    closed: that joins the threads still inside a graph.
    """

    def __init__(self, workers: int, config=None, warm_up: bool = False) -> None:
        from preprocess.landmarks import HolisticExtractor

        if workers < 1:
            raise ValueError(f"workers must be >= 1 MediaPipe graph, got {workers}")
        # each graph's own scheduler gets its share of the cores (1 thread each for 2 graphs on
        # 2 cores) rather than a thread per core; the landmarks are the same either way
        threads = max(1, (os.cpu_count() or 1) // workers)
        self.graphs = [HolisticExtractor(config, graph_threads=threads) for _ in range(workers)]  # built on first use
        self._warming: list[threading.Thread | None] = [None] * workers
        self._errors: list[BaseException | None] = [None] * workers
        self.extractors: list[FrameExtractor] = [partial(self._process, k) for k in range(workers)]
        if warm_up:
            self.start()

    def start(self) -> None:
        """Build and warm up every graph in the background; returns at once (errors surface on the first frame)."""
        for k in range(len(self.graphs)):
            if self._warming[k] is None:
                thread = threading.Thread(target=self._warm, args=(k,), name=f"warm-up-{k}", daemon=True)
                self._warming[k] = thread
                thread.start()

    def wait(self) -> None:
        """Block until every started warm-up is done (a graph's error still surfaces on its first frame)."""
        for thread in self._warming:
            if thread is not None:
                thread.join()

    def _warm(self, k: int) -> None:
        try:
            self.graphs[k].warm_up()
        except BaseException as e:  # handed to the graph's first frame
            self._errors[k] = e

    def _process(self, k: int, frame: Any) -> Landmarks:
        """Graph ``k``'s landmarks of its next frame, once its warm-up (if any) is done."""
        warming = self._warming[k]
        if warming is not None:
            warming.join()
            self._warming[k] = None
            if self._errors[k] is not None:
                raise self._errors[k]
        return self.graphs[k].process_frame(frame, step=len(self.graphs))

    def __enter__(self) -> "HolisticWorkers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.wait()
        for g in self.graphs:
            g.close()


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
