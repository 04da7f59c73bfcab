"""Model speed and size: the deployment figures (int8 size, ms per clip, live frames/s) and those of the ablation table.

``python -m evaluate.speed --ckpt exp/a/best.pt [exp/b/best.pt ...] [--onnx model.onnx] [--frames 200]
[--threads 1] [--live [CLIP]] [--live-workers 2] [--json out.json]`` prints one markdown row per
model: parameters, sizes on disk (checkpoint, ONNX fp32, ONNX int8), and milliseconds per clip of ``--frames``
frames for PyTorch, onnxruntime fp32 and int8 on ``--threads`` CPU threads. Without ``--onnx``
each checkpoint is exported (fp32 + int8) to a temporary folder first. ``--live`` adds the
live-recognition rate (MediaPipe + landmark model, frames/s) on a real clip, through the loop
of ``python -m evaluate.infer --stream`` (``--live-workers`` MediaPipe graphs on threads).
``--scale phoenix14`` runs the PHOENIX14-shaped training benchmark instead (``evaluate.scale``:
training and loader throughput, memory, projected epoch time and cache size).

Times are medians over ``--repeats`` runs after warm-up runs, batch 1, so one slow run
(another process on the core) does not move the figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from models.base import TIME_REDUCTION, InputSpec
from preprocess.commandline import command, prog

if TYPE_CHECKING:
    from models.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = "clips/wlasl_68011_book.mp4"  # under ../shared (or $SIGNDISTILL_SHARED)
# the sign-to-gloss delay needs glosses made final while the stream runs: the demo student fires most
# often on this shared clip (11 glosses over 3 plays; 1 or 2 on the others)
DEFAULT_LATENCY_CLIP = "clips/wlasl_63048_wheelchair.mp4"
SCALES = ("phoenix14",)  # --scale: the PHOENIX14-shaped training benchmark (evaluate.scale)


def _time_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, float]:
    """(median, min) milliseconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), min(times)


def onnx_parameters(path: str | os.PathLike) -> int:
    """Number of weight values stored in an ONNX file (int8 weights count once, like fp32 ones).

    A little below the PyTorch count: the exporter folds BatchNorm into the preceding convolution.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).size for t in model.graph.initializer
                   if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                   and len(t.dims) >= 1 and int(np.prod(t.dims)) > 1))


def measure(model_or_session: Any, spec: InputSpec, frames: int = 200, threads: int = 1, repeats: int = 20,
            warmup: int = 3, input_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Time one clip of ``frames`` frames (batch 1) through a model on ``threads`` CPU threads.

    Args:
        model_or_session: a torch contract model, an onnxruntime InferenceSession, or a path to an
            ``.onnx`` file (opened here with ``threads`` intra-op threads).
        spec: input sizes (K, rgb and flow sides).
        frames: clip length T.
        threads: CPU threads (torch: ``set_num_threads`` for the measurement, then restored).
        repeats, warmup: timed and untimed runs.
        input_names: model inputs (default: the session's inputs, or every input ``spec`` offers).

    Returns:
        ``backend`` ("torch" | "onnxruntime"), ``parameters``, ``size_bytes`` (the .onnx file; None
        for an in-memory model), ``ms_per_clip`` (median), ``ms_min``, ``frames``, ``threads``, ``repeats``.
    """
    import torch

    from evaluate.export import example_inputs
    from models.onnx_meta import ort_session

    if frames < 1 or repeats < 1 or warmup < 0 or threads < 1:
        raise ValueError(f"need frames >= 1, repeats >= 1, warmup >= 0, threads >= 1; got "
                         f"{frames}, {repeats}, {warmup}, {threads}")
    lengths = torch.tensor([frames])
    size = None
    if isinstance(model_or_session, torch.nn.Module):
        from models.build import count_parameters
        from models.data import cache_arrays

        model = model_or_session
        names = tuple(input_names) if input_names else cache_arrays(spec.streams)
        inputs = example_inputs(names, spec, [frames])
        before, was_training = torch.get_num_threads(), model.training
        torch.set_num_threads(threads)
        model.eval()
        try:
            with torch.no_grad():
                median, fastest = _time_ms(lambda: model(inputs, lengths), repeats, warmup)
        finally:
            torch.set_num_threads(before)
            model.train(was_training)
        backend, params = "torch", count_parameters(model)
    else:
        if isinstance(model_or_session, (str, os.PathLike)):
            size = Path(model_or_session).stat().st_size
            params = onnx_parameters(model_or_session)
            session = ort_session(model_or_session, threads)
        else:
            session, params = model_or_session, 0
            path = getattr(session, "_model_path", None)
            if path and Path(path).is_file():
                size, params = Path(path).stat().st_size, onnx_parameters(path)
        graph_inputs = [i.name for i in session.get_inputs()]
        names = tuple(input_names) if input_names else tuple(n for n in graph_inputs if n != "lengths")
        feed = {k: v.numpy() for k, v in example_inputs(names, spec, [frames]).items()}
        feed["lengths"] = lengths.numpy()
        median, fastest = _time_ms(lambda: session.run(None, feed), repeats, warmup)
        backend = "onnxruntime"
    return {"backend": backend, "parameters": int(params), "size_bytes": size, "ms_per_clip": median,
            "ms_min": fastest, "frames": frames, "threads": threads, "repeats": repeats}


class PeakMemory:
    """Peak memory while a block runs: the CUDA allocator's peak on a GPU, else the rise of this
    process's resident set over its level at entry (sampled every few ms on a thread).

    ``peak_bytes`` and ``kind`` ("cuda_peak_allocated" | "cpu_rss_increase") are set on exit.
    """

    def __init__(self, device: Any = "cpu", interval_s: float = 0.005) -> None:
        import torch

        self.device, self.interval_s = torch.device(device), interval_s
        self.peak_bytes, self.kind = 0, "cuda_peak_allocated" if self.device.type == "cuda" else "cpu_rss_increase"
        self._stop, self._thread, self._base, self._max = None, None, 0, 0

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak, a coarser figure
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def __enter__(self) -> "PeakMemory":
        import threading

        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        _release_freed_memory()  # else memory freed by an earlier measurement hides this one's growth
        self._base = self._max = self.rss_bytes()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self._max = max(self._max, self.rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, self.rss_bytes())
        self.peak_bytes = max(0, self._max - self._base)


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``; elsewhere a no-op)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def time_training(model: Any, batches: Iterable[Sequence[Any]], tc: Any, device: Any = "cpu", warmup: int = 1,
                  compile: bool = False) -> dict[str, Any]:
    """Optimizer steps exactly as ``models.train`` takes them, timed; the first ``warmup`` untimed.

    Each batch is a ``models.data.collate`` tuple (uint8 or float RGB). A step moves it to
    ``device`` (:func:`models.data.to_device`), runs the model under the trainer's autocast dtype
    (bfloat16/float16 on CUDA with ``tc.amp``, float32 on CPU), the CTC loss in float32, the
    GradScaler when float16, gradient clipping and the optimizer (``make_optimizer(tc)``);
    channels-last convolutions on CUDA and, with ``compile``, ``torch.compile``. A batch that
    does not fit in GPU memory raises ``models.runtime.BatchTooLarge`` (one line). ``batches`` may be
    a lazy generator: loading then counts in the time (as training in one process does).

    Returns:
        ``clips``, ``frames`` (real, unpadded), ``seconds``, ``clips_per_s``, ``frames_per_s``,
        ``cpu_seconds`` (this process's CPU time: on a shared CPU, with one thread, the load-proof
        measure of the work), ``steps``, ``peak_bytes`` and ``memory`` (what the peak is: :class:`PeakMemory`), ``amp``
        (the autocast dtype or None). The model is left in train mode; its weights change.
    """
    import torch

    from models.data import to_device
    from models.runtime import autocast_dtype, channels_last, make_scaler, maybe_compile, oom_guard
    from models.train import ctc_loss_levels, make_optimizer

    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    device = torch.device(device)
    model.to(device)
    channels_last(model, device)
    net = maybe_compile(model, compile)
    opt = make_optimizer(model, tc)
    amp = autocast_dtype(device, tc.amp)
    scaler = make_scaler(amp)
    model.train()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    clips = frames = steps = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with PeakMemory(device) as mem:
        for i, batch in enumerate(batches):
            if i == warmup:
                sync()
                clips = frames = steps = 0
                t0, c0 = time.perf_counter(), time.process_time()
            inputs, lengths, targets, target_lengths = batch[:4]
            inputs = to_device(inputs, device)
            with oom_guard(lengths, tc):
                with torch.autocast(device.type, dtype=amp or torch.float16, enabled=amp is not None):
                    out = net(inputs, lengths.to(device))
                loss, _ = ctc_loss_levels(out, targets.to(device), target_lengths.to(device), tc.level_weights)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tc.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                scaler.step(opt)
                scaler.update()
            clips += len(lengths)
            frames += int(lengths.sum())
            steps += 1
        sync()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if steps == 0:
        raise ValueError(f"no timed steps: {warmup} warm-up batch(es) used every batch given; pass more batches")
    return {"clips": clips, "frames": frames, "steps": steps, "seconds": seconds, "clips_per_s": clips / seconds,
            "frames_per_s": frames / seconds, "cpu_seconds": cpu_seconds, "peak_bytes": mem.peak_bytes,
            "memory": mem.kind,
            "amp": None if amp is None else str(amp).removeprefix("torch.")}


def training_clips_per_s(model: Any, ckpt: Checkpoint, cache: str | os.PathLike, dataset: str | None = None,
                         batches: int = 10, warmup: int = 1, threads: int | None = None) -> float:
    """Training throughput of a checkpoint's model, clips per second, measured now.

    Runs ``warmup + batches`` optimizer steps the way ``models.train`` does (its training split,
    augmentation, batch size, level weights and optimizer, read from the checkpoint; data loading
    in this process; :func:`time_training`) and times the last ``batches``. Training logs record
    clips/s too, but those depend on whatever else ran while the model trained; this figure is
    taken on the machine as it is now (``make bench`` on an idle machine), on ``threads`` CPU
    threads (default: every core, as training uses). The model is left in eval mode; its weights
    change (pass a copy if they matter).
    """
    import torch

    from models.data import AugmentConfig, BucketBatchSampler, CacheDataset, collate
    from models.train import TrainConfig

    if batches < 1 or warmup < 0:
        raise ValueError(f"batches must be >= 1 and warmup >= 0, got {batches}, {warmup}")
    tc = TrainConfig(**{k: v for k, v in ckpt.train_config.items() if k in TrainConfig.__dataclass_fields__})
    data = ckpt.raw.get("data_config") or {}
    aug = AugmentConfig(**(data.get("augment") or {}))
    ds = CacheDataset(cache, dataset or ckpt.dataset or data.get("dataset"),
                      data.get("train_split", "train"), ckpt.streams, aug, seed=int(tc.seed))
    order = list(BucketBatchSampler(ds.lengths, tc.batch_size, shuffle=True, seed=int(tc.seed)))
    if len(order) < warmup + batches:
        raise ValueError(f"the training split has {len(order)} batches of {tc.batch_size}; "
                         f"{warmup + batches} are needed to measure training speed")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    device = next(model.parameters()).device
    try:
        loaded = (collate([ds[j] for j in idx]) for idx in order[: warmup + batches])
        return time_training(model, loaded, tc, device, warmup)["clips_per_s"]
    finally:
        model.eval()
        torch.set_num_threads(before)


def benchmark_checkpoint(ckpt: str | os.PathLike, onnx: str | os.PathLike | None = None,
                         int8: str | os.PathLike | None = None, frames: int = 200, threads: int = 1,
                         repeats: int = 20, warmup: int = 3,
                         workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """One table row: a checkpoint, its fp32 and int8 ONNX exports (made in ``workdir`` when not given)."""
    from evaluate.export import export_onnx, int8_path_for, load_checkpoint_model, quantize_int8

    loaded = load_checkpoint_model(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(workdir or tmp)
        if onnx is None:
            onnx = export_onnx(loaded.model, loaded.spec, loaded.vocab, loaded.config, where / "model.onnx",
                               loaded.input_names, preprocess=loaded.preprocess)
        if int8 is None:
            guess = int8_path_for(onnx)
            int8 = guess if guess.is_file() else quantize_int8(onnx, where / "model.int8.onnx")
        common = dict(frames=frames, threads=threads, repeats=repeats, warmup=warmup)
        pt = measure(loaded.model, loaded.spec, input_names=loaded.input_names, **common)
        fp = measure(onnx, loaded.spec, **common)
        q = measure(int8, loaded.spec, **common)
    return {
        "model": str(ckpt),
        "kind": loaded.config.get("kind") or "+".join(loaded.config.get("streams", [])),
        "parameters": pt["parameters"],
        "ckpt_bytes": Path(ckpt).stat().st_size,
        "onnx_bytes": fp["size_bytes"],
        "int8_bytes": q["size_bytes"],
        "torch_ms": pt["ms_per_clip"],
        "onnx_ms": fp["ms_per_clip"],
        "int8_ms": q["ms_per_clip"],
        "frames": frames,
        "threads": threads,
    }


def benchmark_onnx(onnx: str | os.PathLike, frames: int = 200, threads: int = 1, repeats: int = 20,
                   warmup: int = 3) -> dict[str, Any]:
    """A table row for an exported model alone (sizes and onnxruntime time)."""
    from models.onnx_meta import read_metadata

    meta = read_metadata(onnx)
    r = measure(onnx, meta.spec, frames=frames, threads=threads, repeats=repeats, warmup=warmup)
    quantised = "int8" in Path(onnx).name
    return {"model": str(onnx), "kind": meta.config.get("kind") or "+".join(meta.config.get("streams", [])),
            "parameters": r["parameters"], "ckpt_bytes": None,
            "onnx_bytes": None if quantised else r["size_bytes"], "int8_bytes": r["size_bytes"] if quantised else None,
            "torch_ms": None, "onnx_ms": None if quantised else r["ms_per_clip"],
            "int8_ms": r["ms_per_clip"] if quantised else None, "frames": frames, "threads": threads}


def _paced(frames: Iterable[Any], fed: list[float], fps: float | None) -> Iterator[Any]:
    """Pass frames on, noting when each is handed over; with ``fps``, no faster than a camera at that rate."""
    t0 = time.perf_counter()
    for i, frame in enumerate(frames):
        if fps:
            delay = t0 + i / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        fed.append(time.perf_counter())
        yield frame


def _live_session(clip: str | os.PathLike, model: Any, max_frames: int | None, threads: int, stream_cfg: Any,
                  extractor: Callable | Sequence[Callable] | None, loops: int, workers: int | None,
                  pace: bool) -> tuple[Any, list[tuple[float, Any]], list[float]]:
    """One live session on a clip, set up as ``evaluate.infer --stream`` does (graphs warm up while the
    model loads). Returns its ``StreamStats``, every update with the time it came, and when each frame was fed."""
    import itertools

    from evaluate.live.capture import capture_frames, prefetch
    from evaluate.live.mediapipe_pool import HolisticWorkers, default_workers
    from evaluate.live.runtime import load_recognizer, require_landmark_model
    from evaluate.live.window import StreamConfig, StreamStats, stream_glosses

    if loops < 1:
        raise ValueError(f"loops must be >= 1, got {loops}")
    started = time.perf_counter()
    own = HolisticWorkers(default_workers() if workers is None else workers, warm_up=True) if extractor is None else None
    try:
        rec = load_recognizer(model, threads) if isinstance(model, (str, os.PathLike)) else model
        require_landmark_model(rec)
        rate = None
        if pace:
            from preprocess.video import probe_video

            rate = probe_video(clip).fps or 25.0
            if own:
                own.wait()  # a camera feeds frames from the moment the session is ready, not before
        stats, fed, timed = StreamStats(), [], []
        played = itertools.islice(itertools.chain.from_iterable(capture_frames(clip) for _ in range(loops)), max_frames)
        frames = prefetch(_paced(played, fed, rate))  # decoding overlaps MediaPipe, as in evaluate.infer
        updates = stream_glosses(frames, own.extractors if own else extractor, rec, stream_cfg or StreamConfig(),
                                 stats, started=started)
        try:
            for update in updates:
                timed.append((time.perf_counter(), update))
        finally:
            updates.close()  # joins the landmark threads before the graphs close
    finally:
        if own:
            own.close()
    return stats, timed, fed


def live_fps(clip: str | os.PathLike, model: Any, max_frames: int | None = None, threads: int = 1,
             stream_cfg: Any = None, extractor: Callable | Sequence[Callable] | None = None, loops: int = 1,
             workers: int | None = None) -> dict[str, Any]:
    """Live recognition rate on a real clip: OpenCV decode (prefetched) -> MediaPipe Holistic -> sliding-window model.

    The same loop as ``python -m evaluate.infer --stream``: decoding on one thread, MediaPipe
    graphs on ``workers`` threads (frames dealt round-robin, built and warmed up while the model
    loads), the model on the calling thread; frames are fed as fast as the loop takes them.

    Args:
        clip: a video file, fed frame by frame as a webcam would.
        model: a landmark recognizer (``evaluate.infer``) or a path to an .onnx/.pt landmark model.
        max_frames: stop after this many frames (None: the whole clip).
        threads: model threads when ``model`` is a path.
        stream_cfg: ``evaluate.infer.StreamConfig`` (default window 128, hop 16).
        extractor: per-frame landmarks, or several (one thread each); default MediaPipe Holistic.
        loops: play the clip this many times in a row (short clips: a steadier rate).
        workers: MediaPipe graphs when ``extractor`` is None (default: CPU cores, at most 2).

    Returns:
        ``frames``, ``fps`` (end to end), ``steady_fps`` (after the first frame), ``startup_s``
        (from the session's start, model load, file open and graph build included, to the first
        frame's landmarks), ``workers``, ``landmarks_ms_per_frame`` (inside MediaPipe, summed over
        workers), ``wait_ms_per_frame`` (the loop waiting for landmarks), ``model_ms_per_run``,
        ``runs``, ``other_ms_per_frame`` (bookkeeping), ``glosses``.
    """
    stats, timed, _ = _live_session(clip, model, max_frames, threads, stream_cfg, extractor, loops, workers, False)
    n = max(stats.frames, 1)
    other = stats.wall_s - stats.setup_s - stats.wait_s - stats.model_s
    return {"clip": str(clip), "frames": stats.frames, "fps": stats.fps, "steady_fps": stats.steady_fps,
            "startup_s": stats.startup_s, "workers": stats.workers,
            "landmarks_ms_per_frame": 1000 * stats.extract_s / n, "wait_ms_per_frame": 1000 * stats.wait_s / n,
            "model_ms_per_run": 1000 * stats.model_s / max(stats.runs, 1), "runs": stats.runs,
            "other_ms_per_frame": 1000 * max(other, 0.0) / n,
            "glosses": timed[-1][1].committed if timed else []}


def sign_to_gloss(timed: Sequence[tuple[float, Any]], fed: Sequence[float], reduction: int = TIME_REDUCTION,
                  ) -> dict[str, Any]:
    """Per gloss of a live session: milliseconds from the feed of the sign's last frame to the gloss.

    A gloss's sign is taken to end with the output step of its CTC spike (the frames
    ``[j, j + 1) * reduction`` of spike step ``j``): the model has seen the sign by then. Two
    delays are given per gloss: until it is *printed* (made final, the line ``evaluate.infer``
    prints) and until it is first *shown* as tentative. Glosses made final only by the end of
    the stream are counted apart (``flushed``): their delay depends on when the stream stopped.

    Args:
        timed: ``(perf_counter time, StreamUpdate)`` of every update, in order.
        fed: ``perf_counter`` time each frame was fed, by frame index.

    Returns:
        ``printed_ms`` and ``shown_ms`` (one value per gloss made final during the stream),
        ``median``/``p90`` of each, ``glosses`` and ``flushed`` counts.
    """
    tol = 2 * reduction  # the same gloss seen again within this many frames is the same gloss
    shown: list[tuple[str, int, float]] = []  # (gloss, spike frame, first time shown)
    printed_ms, shown_ms, flushed = [], [], 0
    for t, update in timed:
        for g, f in zip(update.tentative, update.tentative_frames):
            if not any(s[0] == g and abs(s[1] - f) <= tol for s in shown):
                shown.append((g, f, t))
        if update.final:
            flushed += len(update.new)
            continue
        for g, f in zip(update.new, update.new_frames):
            last = min(f + reduction - 1, update.frame - 1, len(fed) - 1)  # the spike step's last frame fed
            first = min([s[2] for s in shown if s[0] == g and abs(s[1] - f) <= tol] + [t])
            printed_ms.append(1000 * (t - fed[last]))
            shown_ms.append(1000 * (first - fed[last]))

    def pct(x: list[float], q: float) -> float | None:
        return float(np.percentile(x, q)) if x else None

    return {"printed_ms": printed_ms, "shown_ms": shown_ms, "glosses": len(printed_ms), "flushed": flushed,
            "printed_median_ms": pct(printed_ms, 50), "printed_p90_ms": pct(printed_ms, 90),
            "shown_median_ms": pct(shown_ms, 50), "shown_p90_ms": pct(shown_ms, 90)}


def live_latency(clip: str | os.PathLike, model: Any, loops: int = 8, threads: int = 1, stream_cfg: Any = None,
                 extractor: Callable | Sequence[Callable] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Sign-to-gloss delays of live recognition (:func:`sign_to_gloss`) on a real clip fed at its own
    frame rate from the moment the session is ready, as a camera would feed it."""
    stats, timed, fed = _live_session(clip, model, None, threads, stream_cfg, extractor, loops, workers, True)
    feed_fps = (len(fed) - 1) / (fed[-1] - fed[0]) if len(fed) > 1 and fed[-1] > fed[0] else 0.0
    return {"clip": str(clip), "frames": stats.frames, "fps": stats.steady_fps, "feed_fps": feed_fps,
            **sign_to_gloss(timed, fed)}


def default_clip(name: str = DEFAULT_CLIP) -> Path | None:
    """A shared real clip used for the live figures, when the ../shared folder is present."""
    shared = Path(os.environ.get("SIGNDISTILL_SHARED", ROOT.parent / "shared"))
    clip = shared / name
    return clip if clip.is_file() else None


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows from ``benchmark_checkpoint``/``benchmark_onnx`` as a markdown table."""
    if not rows:
        return ""
    f, th = rows[0]["frames"], rows[0]["threads"]
    head = (f"| model | kind | params | ckpt MB | onnx MB | int8 MB | torch ms/{f} fr | onnx ms/{f} fr | "
            f"int8 ms/{f} fr |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['parameters'] / 1e6:.3f} M | {_mb(r['ckpt_bytes'])} | "
                     f"{_mb(r['onnx_bytes'])} | {_mb(r['int8_bytes'])} | {_ms(r['torch_ms'])} | "
                     f"{_ms(r['onnx_ms'])} | {_ms(r['int8_ms'])} |")
    return "\n".join(lines) + f"\n\n(CPU, {th} thread(s), batch 1, median over repeats after warm-up)"


def live_table(live: dict[str, Any], latency: dict[str, Any] | None = None) -> str:
    """The live figures (:func:`live_fps`, :func:`live_latency`) as a markdown table and what they mean."""
    def pair(a: float | None, b: float | None) -> str:
        return "-" if a is None else f"{a:.0f} / {b:.0f}"

    head = "| frames/s sustained | frames/s with start-up | start-up s |"
    rule = "|---:|---:|---:|"
    row = f"| {live['steady_fps']:.1f} | {live['fps']:.1f} | {live['startup_s']:.2f} |"
    if latency is not None:
        head += " gloss printed, ms after its sign (median / p90) | first shown, ms (median / p90) | glosses |"
        rule += "---:|---:|---:|"
        row += (f" {pair(latency['printed_median_ms'], latency['printed_p90_ms'])} |"
                f" {pair(latency['shown_median_ms'], latency['shown_p90_ms'])} |"
                f" {latency['glosses']} (+{latency['flushed']} at the end) |")
    notes = [f"live recognition of {Path(live['clip']).name} with {live['workers']} MediaPipe graph(s): frames/s over "
             f"{live['frames']} frames fed as fast as the loop takes them; start-up from the session's start (the "
             "graphs warm up while the model loads and the file opens) to the first frame's landmarks"]
    if latency is not None:
        notes.append(f"sign to gloss over {latency['frames']} frames of {Path(latency['clip']).name} fed at its own "
                     f"rate as a camera would ({latency['feed_fps']:.1f} frames/s fed, {latency['fps']:.1f} "
                     "processed): from the feed of the last frame of a gloss's CTC spike "
                     "to the gloss printed (final) or first shown (tentative); glosses made final only by the "
                     "end of the stream are not timed")
    notes.append(f"MediaPipe {live['landmarks_ms_per_frame']:.1f} ms/frame summed over its threads, the loop waited "
                 f"{live['wait_ms_per_frame']:.1f} ms/frame | model {live['model_ms_per_run']:.2f} ms/run x "
                 f"{live['runs']} | other {live['other_ms_per_frame']:.1f} ms/frame")
    return "\n".join([head, rule, row, ""] + [f"({n})" for n in notes])


@command
def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--scale", choices=SCALES, help="run the training-scale benchmark instead")
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.scale:  # the training-scale benchmark has its own options
        from evaluate.scale import main as scale_main

        return scale_main(rest)
    parser = argparse.ArgumentParser(prog=prog("evaluate.speed"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES,
                        help="run the training-scale benchmark instead (python -m evaluate.scale; its options follow)")
    parser.add_argument("--ckpt", nargs="*", default=[], help="checkpoint(s), one table row each")
    parser.add_argument("--onnx", help="exported fp32 model (with one --ckpt: its export; alone: timed alone)")
    parser.add_argument("--int8", help="exported int8 model (default: <onnx stem>.int8.onnx or made now)")
    parser.add_argument("--frames", type=int, default=200, help="frames per timed clip (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--live", nargs="?", const="auto", default=None, metavar="CLIP",
                        help="also measure live fps (MediaPipe + landmark model) on CLIP (default: the shared clip)")
    parser.add_argument("--live-frames", type=int, default=None, help="stop the live measurement after N frames")
    parser.add_argument("--live-loops", type=int, default=3, help="play the live clip this many times (default 3)")
    parser.add_argument("--live-latency-clip", metavar="CLIP", default=None,
                        help=f"clip for the sign-to-gloss delay of --live (default: the shared {DEFAULT_LATENCY_CLIP})")
    parser.add_argument("--live-latency-loops", type=int, default=4,
                        help="play that clip this many times at its own frame rate (default 4; 0 skips the delay)")
    parser.add_argument("--live-workers", type=int, default=None,
                        help="MediaPipe graphs on parallel threads for --live (default: CPU cores, at most 2)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if not args.ckpt and not args.onnx:
        parser.error("give --ckpt and/or --onnx")
    if args.onnx and len(args.ckpt) > 1:
        parser.error("--onnx belongs to one checkpoint; give a single --ckpt with it")
    common = dict(frames=args.frames, threads=args.threads, repeats=args.repeats, warmup=args.warmup)
    rows = [benchmark_checkpoint(c, args.onnx, args.int8, **common) for c in args.ckpt]
    if not args.ckpt:
        rows.append(benchmark_onnx(args.onnx, **common))
        if args.int8:
            rows.append(benchmark_onnx(args.int8, **common))
    print(markdown_table(rows))
    result: dict[str, Any] = {"rows": rows}
    if args.live:
        clip = default_clip() if args.live == "auto" else Path(args.live)
        if clip is None:
            raise FileNotFoundError(f"no live clip: {DEFAULT_CLIP} not found under ../shared; pass --live CLIP")
        model = args.int8 or args.onnx or args.ckpt[0]
        live = live_fps(clip, model, args.live_frames, args.threads, loops=args.live_loops,
                        workers=args.live_workers)
        result["live"] = live
        latency = None
        if args.live_latency_loops > 0:
            slow = Path(args.live_latency_clip) if args.live_latency_clip else default_clip(DEFAULT_LATENCY_CLIP) or clip
            latency = live_latency(slow, model, args.live_latency_loops, args.threads, workers=args.live_workers)
            result["live_latency"] = latency
        print("\n" + live_table(live, latency))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
