"""`make features`: fill the per-video cache (RGB, landmarks, optical flow) for one dataset.

Stages per utterance: decode (or read the dataset's keypoint file) -> landmarks -> flow ->
one atomic ``.npz`` write. The driver is idempotent: a file whose stored config hash matches
is skipped, a stale one is rebuilt, and a failure of one utterance is reported on one line,
logged to ``failures.jsonl`` and never touches files already written, so killing a run and
starting it again ends with the same bytes as an uninterrupted run.

Heavy modules (decord, MediaPipe, torch) are imported only where an utterance really needs
them, so a re-run over a finished cache costs little more than reading the file headers.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from preprocess import cache
from preprocess.configs import UserError, check_keys, from_dict, print_user_error, write_error
from preprocess.flow import DEVICES, DTYPES as FLOW_DTYPES, METHODS as FLOW_METHODS, FlowConfig, flow_scale
from preprocess.layouts import HOLISTIC_543
from preprocess.manifest import Utterance, atomic_write_bytes, atomic_write_text, read_manifest

LANDMARK_MODES = ("auto", "mediapipe", "file", "none")
STAGES = ("decode", "landmarks", "flow", "write")
VERSIONED_PACKAGES = ("mediapipe", "opencv-contrib-python", "torch", "torchvision", "numpy", "decord", "av")
KEYPOINT_PROBES = 8  # keypoint files read up front to learn the dataset's layout (majority vote)
# FlowConfig fields that change the stored flow, per method family (device and batch do not).
_FLOW_HASHED = {"common": ("method", "size", "dtype", "clip"), "dis": ("dis_preset",),
                "raft": ("raft_weights", "raft_iters")}


@dataclass(frozen=True)
class FeatureConfig:
    """What goes into every cache file of a dataset; its hash marks the files it wrote."""

    rgb_size: int = 112  # side of the square RGB crop stored (short side resized, centre crop); 0 = no RGB
    landmarks: str = "auto"  # "auto": the utterance's keypoint file if any, else MediaPipe | "mediapipe" | "file" | "none"
    flow: FlowConfig = field(default_factory=FlowConfig)  # optical flow (method "none" = no flow stream)
    max_frames: int = 0  # keep at most this many frames per utterance (0 = all)

    def __post_init__(self) -> None:
        if self.rgb_size < 0:
            raise ValueError(f"rgb_size must be >= 0 (0 = no RGB), got {self.rgb_size}")
        if self.landmarks not in LANDMARK_MODES:
            raise ValueError(f"landmarks must be one of {LANDMARK_MODES}, got {self.landmarks!r}")
        if self.max_frames < 0:
            raise ValueError(f"max_frames must be >= 0 (0 = all), got {self.max_frames}")

    @staticmethod
    def from_dict(d: Mapping[str, Any] | None, **overrides: Any) -> "FeatureConfig":
        """Build from a dataset YAML's ``features:`` mapping, then apply ``overrides``.

        Flow options may be nested (``flow: {method: dis, size: 56}``), flat with a ``flow_``
        prefix (``flow_method``, ``flow_size``, ``raft_weights``), or ``flow: dis`` for the
        method alone. Overrides use the flat names (the command line's).
        """
        top: dict[str, Any] = {}
        flow: dict[str, Any] = {}
        for key, value in {**(d or {}), **overrides}.items():
            if key == "flow" and isinstance(value, Mapping):
                flow.update(value)
            elif key == "flow":
                flow["method"] = "none" if value in (None, False) else str(value)
            elif key.startswith("flow_"):
                flow[key[len("flow_"):]] = value
            elif key in ("raft_weights", "device", "dis_preset", "raft_iters", "raft_batch"):
                flow[key] = value
            else:
                top[key] = value
        if top.get("max_frames") is None:
            top.pop("max_frames", None)
        check_keys(top, {f.name for f in fields(FeatureConfig)} - {"flow"}, "", "feature option(s)")
        return from_dict(FeatureConfig, {**top, "flow": from_dict(FlowConfig, flow, section="flow")})

    def hashed(self) -> dict[str, Any]:
        """The fields that change the bytes written (RAFT's device or batch size do not)."""
        f = self.flow
        keys = () if not f.enabled else _FLOW_HASHED["common"] + (
            _FLOW_HASHED["raft"] if f.is_raft else _FLOW_HASHED["dis"] if f.method == "dis" else ())
        return {"rgb_size": self.rgb_size, "landmarks": self.landmarks, "max_frames": self.max_frames,
                "flow": {k: getattr(f, k) for k in keys} if f.enabled else "none"}


class UtteranceError(UserError):
    """One utterance cannot be extracted; the message names the file and the fix."""


@dataclass(frozen=True)
class Plan:
    """Dataset-wide decisions every worker shares (picklable)."""

    cache_root: str  # the cache folder (files go to <cache_root>/<dataset>/<split>/<id>.npz)
    dataset: str  # dataset name, the cache sub-folder
    cfg: FeatureConfig  # effective config (RGB/flow off for keypoint-only corpora)
    chash: str  # config hash stored in every file
    layout: str | None  # keypoint layout every file must have (None = no keypoints)
    num_keypoints: int  # points per frame of that layout (0 = no keypoints)
    root: str  # dataset root, for relative paths in the manifest
    use_mediapipe: bool  # some utterance needs MediaPipe (workers build an extractor)


@dataclass
class Result:
    """What one utterance's extraction reports back to the driver."""

    id: str
    split: str
    ok: bool
    message: str = ""
    frames: int = 0
    times: dict[str, float] = field(default_factory=dict)
    hand_rate: float | None = None  # MediaPipe utterances only
    nbytes: int = 0
    source: str | None = None


# --------------------------------------------------------------------------------------------
# Per-utterance extraction (runs in a worker process or in-process with --workers 1)

_WORKER: dict[str, Any] = {}


def _init_worker(plan: Plan, driver_pid: int | None = None) -> None:
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


def die_with_parent(driver_pid: int, poll_s: float = 0.5) -> None:
    """End this worker process as soon as the driver that started it is gone.

    A killed driver (kill -9, out of memory) cannot shut its pool down, and orphaned workers
    would go on writing cache files and then wait forever for jobs. On Linux the kernel sends
    SIGKILL when the direct parent (the pool's fork server) exits; a daemon thread also polls
    the parent and the driver, which covers other platforms and the driver dying first.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # no libc symbol: the watchdog alone
            pass
    parent = os.getppid()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        while True:
            if os.getppid() != parent or not alive(driver_pid):
                os._exit(1)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _open_extractor():
    from preprocess.landmarks import HolisticExtractor

    ex = HolisticExtractor()
    ex.__enter__()
    # Close the graph when the process exits (pool shutdown or the in-process run ending).
    mp.util.Finalize(ex, ex.__exit__, args=(None, None, None), exitpriority=10)
    return ex


def _close_worker() -> None:
    ex = _WORKER.pop("extractor", None)
    if ex is not None:
        ex.__exit__(None, None, None)
    _WORKER.clear()


def _load_job(utt: Utterance) -> "Loaded | Result":
    """Stage 1 of one utterance (everything but MediaPipe and the write); never raises."""
    try:
        if "init_error" in _WORKER:
            raise UtteranceError(_WORKER["init_error"])
        return load_utterance(utt, _WORKER["plan"])
    except Exception as e:  # noqa: BLE001 - every failure must become one report line
        return Result(utt.id, utt.split, False, _failure_message(e), source=utt.source)


def _finish_job(loaded: "Loaded | Result") -> Result:
    """Stage 2 of one utterance (MediaPipe when needed, then the write); never raises."""
    if isinstance(loaded, Result):
        return loaded
    utt = loaded.utt
    try:
        return finish_utterance(loaded, _WORKER["plan"], _WORKER.get("extractor"))
    except Exception as e:  # noqa: BLE001
        return Result(utt.id, utt.split, False, _failure_message(e), source=utt.source)


def _job(utt: Utterance) -> Result:
    """Extract one utterance in a pool worker; never raises (a failure travels back as a Result)."""
    return _finish_job(_load_job(utt))


def _failure_message(e: BaseException) -> str:
    name = type(e).__name__
    msg = str(e).strip().splitlines()[0] if str(e).strip() else name
    if isinstance(e, UserError):  # bad input, already one line naming the file
        return msg
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"unexpected {name}{at}: {msg}"


def _resolve(path: str | None, root: str) -> Path | None:
    if not path:
        return None
    p = Path(path)
    return p if p.is_absolute() or not root else Path(root) / p


def _landmark_source(utt: Utterance, cfg: FeatureConfig) -> str:
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
    source = _resolve(utt.source, plan.root)
    lm_source = _landmark_source(utt, cfg) if plan.layout else "none"
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

        kp_path = _resolve(utt.keypoints, plan.root)
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
    check_arrays(stored, str(loaded.source or _resolve(utt.keypoints, plan.root) or utt.id))
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


# --------------------------------------------------------------------------------------------
# Running jobs: in-process, or a process pool that survives a worker crash


def run_jobs(
    jobs: Sequence[Any],
    job_fn: Callable[[Any], Result],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple,
    on_result: Callable[[Result], None],
    crash_result: Callable[[Any, str], Result],
    stages: tuple[Callable[[Any], Any], Callable[[Any], Result]] | None = None,
) -> None:
    """Run ``job_fn`` over ``jobs`` and hand each result to ``on_result`` as it finishes.

    ``workers == 1`` runs in this process (no pickling, easy to debug); with ``stages`` =
    (load, finish), ``job_fn(job) == finish(load(job))`` and the load of the next job overlaps
    the finish of this one. Otherwise a process
    pool runs them with a bounded number in flight. When a worker process dies (segfault in a
    native decoder, out of memory) the pool breaks: the files already written stay, the jobs
    that were in flight are retried one at a time in a fresh pool, and a job that kills its
    worker even alone is reported through ``crash_result`` instead of being retried again.
    """
    if workers <= 1:
        initializer(*initargs)
        try:
            if stages is None:
                for job in jobs:
                    on_result(job_fn(job))
                return
            # Two-stage pipeline: a thread runs stage 1 of the next job (decode, resize, flow:
            # native code that releases the GIL) while this thread runs stage 2 (MediaPipe).
            load, finish = stages
            with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as prefetch:
                ahead = prefetch.submit(load, jobs[0]) if jobs else None
                for i in range(len(jobs)):
                    loaded = ahead.result()
                    ahead = prefetch.submit(load, jobs[i + 1]) if i + 1 < len(jobs) else None
                    on_result(finish(loaded))
        finally:
            _close_worker()
        return

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    pending: deque = deque(jobs)
    solo: deque = deque()  # suspects of a crash, retried alone
    max_inflight = 2 * workers
    while pending or solo:
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer, initargs=initargs)
        inflight: dict[Future, tuple[Any, bool]] = {}
        broken = False
        try:
            while (pending or solo or inflight) and not broken:
                if solo:
                    if not inflight:
                        job = solo.popleft()
                        inflight[pool.submit(job_fn, job)] = (job, True)
                else:
                    while pending and len(inflight) < max_inflight:
                        job = pending.popleft()
                        inflight[pool.submit(job_fn, job)] = (job, False)
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    job, alone = inflight.pop(fut)
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if alone:
                            on_result(crash_result(job, "the worker process died on this utterance "
                                                        "(native crash or out of memory); inspect the file"))
                        else:
                            solo.append(job)
                        continue
                    except Exception as e:  # e.g. a result that cannot be pickled back
                        res = crash_result(job, f"unexpected {type(e).__name__} in the worker: {e}")
                    on_result(res)
            if broken:  # every other in-flight job died with the pool: retry each alone
                for fut, (job, alone) in inflight.items():
                    if fut.done() and fut.exception() is None:
                        on_result(fut.result())
                    elif alone:
                        on_result(crash_result(job, "the worker process died on this utterance"))
                    else:
                        solo.append(job)
                inflight.clear()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Planning: manifest, effective config, keypoint layout, meta.json


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Replace ``dst`` by ``src`` only when the bytes differ (a re-run must write nothing)."""
    data = src.read_bytes()
    if dst.is_file() and dst.read_bytes() == data:
        return
    atomic_write_bytes(dst, data)


def prepare_manifest(ds, out_dir: Path) -> list[Utterance]:
    """Run the dataset's reader into a scratch folder and publish manifest/vocab if they changed.

    Preparing aside and comparing keeps a re-run from touching any file, and lets shards on
    several machines publish the same manifest into one cache without a torn write.
    """
    from preprocess.datasets import prepare_dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    # A scratch folder outside the cache: a killed run leaves no debris among the cache files.
    with tempfile.TemporaryDirectory(prefix="signdistill-prepare-") as tmp:
        reader_log = logging.getLogger("preprocess.datasets")
        show_real_dir = _RenameInLog(tmp, str(out_dir))  # the reader's notes name the scratch folder
        reader_log.addFilter(show_real_dir)
        try:
            prepare_dataset(ds, tmp)
        finally:
            reader_log.removeFilter(show_real_dir)
        for name in ("manifest.jsonl", "vocab.json"):
            if (Path(tmp) / name).is_file():
                _copy_if_changed(Path(tmp) / name, out_dir / name)
    return read_manifest(out_dir / "manifest.jsonl")


class _RenameInLog(logging.Filter):
    """Rewrites one path in log records (keeps every record)."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__()
        self.old, self.new = old, new

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.old in message:
            record.msg, record.args = message.replace(self.old, self.new), None
        return True


def _probe_layout(utts: Sequence[Utterance], cfg: FeatureConfig, root: str,
                  previous: Mapping[str, Any] | None = None) -> tuple[str | None, int, str]:
    """(layout, num_keypoints, landmark_source) the whole dataset's cache will have.

    Keypoint files are read up front (a majority of the first few that load) so that one odd
    file fails on its own instead of setting the layout for everyone. ``previous`` is the
    meta.json of an earlier run: when it was written with the same extractor config and
    landmark sources its layout is reused, which keeps a re-run over a finished cache cheap.
    """
    if cfg.landmarks == "none":
        return None, 0, "none"
    sources = Counter(_landmark_source(u, cfg) for u in utts)
    uses_file, uses_mp = sources["file"] > 0, sources["mediapipe"] > 0
    kind = "+".join(k for k in ("file", "mediapipe") if sources[k]) or "none"
    if not uses_file:
        return (HOLISTIC_543, 543, kind) if uses_mp else (None, 0, "none")
    if (previous and previous.get("extractor") == json.loads(json.dumps(cfg.hashed()))
            and previous.get("landmark_source") == kind and previous.get("keypoint_layout")
            and int(previous.get("num_keypoints") or 0) > 0):
        return str(previous["keypoint_layout"]), int(previous["num_keypoints"]), kind
    from preprocess.keypoint_io import KeypointFileError, load_keypoints

    votes: Counter = Counter()
    for u in utts:
        if _landmark_source(u, cfg) != "file" or not u.keypoints:
            continue
        try:
            kp, _, layout = load_keypoints(str(_resolve(u.keypoints, root)))
        except KeypointFileError:
            continue
        if kp.ndim == 3:
            votes[(layout, int(kp.shape[1]))] += 1
        if sum(votes.values()) >= KEYPOINT_PROBES:
            break
    if not votes:  # no file loads: every file-backed utterance will fail with its own message
        return (HOLISTIC_543, 543, kind) if uses_mp else ("unknown", -1, kind)
    (layout, k), _ = votes.most_common(1)[0]
    return layout, k, kind


def build_plan(ds, utts: Sequence[Utterance], cfg: FeatureConfig, cache_root: str,
               reuse_meta: bool = True) -> tuple[Plan, dict]:
    """The effective config, its hash, the keypoint layout and the meta.json content."""
    has_video = any(u.source for u in utts)
    note = None
    if not has_video and (cfg.rgb_size or cfg.flow.enabled):
        note = "keypoint-only corpus (no videos): RGB and flow are not stored"
        cfg = replace(cfg, rgb_size=0, flow=replace(cfg.flow, method="none"))
    previous = None
    if reuse_meta:
        try:
            previous = json.loads((cache.dataset_dir(cache_root, ds.name) / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    layout, k, lm_kind = _probe_layout(utts, cfg, str(ds.root), previous)
    mp_cfg = None
    if cfg.landmarks in ("auto", "mediapipe"):  # from the config, not the data: --limit/--splits keep the hash
        from preprocess.landmarks import HolisticConfig  # cheap: mediapipe itself loads lazily

        mp_cfg = HolisticConfig().to_dict()
    chash = cache.config_hash({"extractor": cfg.hashed(), "keypoint_layout": layout, "mediapipe": mp_cfg})
    plan = Plan(cache_root=str(cache_root), dataset=ds.name, cfg=cfg, chash=chash, layout=layout,
                num_keypoints=k, root=str(ds.root), use_mediapipe="mediapipe" in lm_kind)
    streams = (["rgb"] if cfg.rgb_size else []) + (["keypoints", "keypoints_mask"] if layout else []) + \
              (["flow"] if cfg.flow.enabled else [])
    flow_meta = None
    if cfg.flow.enabled:
        flow_meta = {**cfg.hashed()["flow"], "scale": float(flow_scale(cfg.flow)),
                     "device": cfg.flow.device if cfg.flow.is_raft else None}
    meta = {
        "dataset": ds.name,
        "extractor": cfg.hashed(),
        "config_hash": chash,
        "streams": streams,
        "keypoint_layout": layout,
        "num_keypoints": k if layout else 0,
        "landmark_source": lm_kind,
        "mediapipe": {"solution": "holistic (legacy solutions API)", **mp_cfg} if "mediapipe" in lm_kind else None,
        "rgb_size": cfg.rgb_size,
        "rgb_storage": "uint8 array" if cfg.rgb_size else None,
        "flow": flow_meta,
        "max_frames": cfg.max_frames,
        "keypoint_only": not has_video,
        "note": note,
        "versions": dict(_versions()),
    }
    return plan, meta


def _write_meta_if_changed(cache_root: str, dataset: str, meta: dict) -> None:
    path = cache.dataset_dir(cache_root, dataset) / "meta.json"
    wanted = json.loads(json.dumps({"cache_format": cache.CACHE_FORMAT_VERSION, **meta}, default=str))
    try:
        if json.loads(path.read_text(encoding="utf-8")) == wanted:
            return
    except (OSError, ValueError):
        pass
    cache.write_meta(cache_root, dataset, meta)


# --------------------------------------------------------------------------------------------
# The driver


@dataclass
class Report:
    """Totals of one run (what the final table shows; the benchmark reads it too)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    hand_rates: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cache_bytes: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    failures_path: str = ""  # this run's failures.jsonl

    @property
    def hand_rate(self) -> float | None:
        rates = [r for r in self.hand_rates if not math.isnan(r)]
        return float(np.mean(rates)) if rates else None

    def add(self, r: Result) -> None:
        if not r.ok:
            self.failed += 1
            self.failures.append((r.id, r.message))
            return
        self.done += 1
        self.frames += r.frames
        for k, v in r.times.items():
            self.stage_s[k] = self.stage_s.get(k, 0.0) + v
        if r.hand_rate is not None:
            self.hand_rates.append(r.hand_rate)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def select(utts: Sequence[Utterance], splits: Iterable[str] | None, limit: int | None,
           shard: tuple[int, int]) -> list[Utterance]:
    """Split filter, then ``--limit``, then utterance k of that list goes to shard k % n."""
    wanted = set(splits) if splits else None
    out = [u for u in utts if wanted is None or u.split in wanted]
    if limit:
        out = out[:limit]
    i, n = shard
    return [u for k, u in enumerate(out) if k % n == i]


def _remove_stale_temps(cache_root: str, dataset: str, utts: Sequence[Utterance]) -> int:
    """Delete temp files a killed run left behind for ``utts`` (this shard's utterances only,
    so a shard running on another machine keeps its own in-progress writes)."""
    by_split: dict[str, set[str]] = {}
    for u in utts:
        by_split.setdefault(u.split, set()).add(u.id)
    removed = 0
    for split, ids in by_split.items():
        folder = cache.dataset_dir(cache_root, dataset) / split
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(".") and name.endswith(".npz.tmp"):
                utt_id = name[1:-len(".npz.tmp")].rsplit(".", 1)[0]  # ".<id>.<random>.npz.tmp"
                if utt_id in ids:
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except FileNotFoundError:
                        pass
    return removed


def _reset_failures(path: Path, other_shards: set[tuple[str, str]]) -> None:
    """Start this run's ``failures.jsonl``: records of earlier runs go, except those of utterances
    that belong to other shards of the same selection (their own runs rewrite them)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and (rec.get("split"), rec.get("id")) in other_shards:
            keep.append(line)
    if keep:
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))
    else:
        path.unlink()


def _hash_member(chash: str) -> bytes:
    """The exact bytes ``cache.write_npz_atomic`` stores as the ``config_hash.npy`` member."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(np.array(chash)), allow_pickle=False)
    return buf.getvalue()


def _is_valid(path: Path, chash: str, member: bytes) -> bool:
    """``cache.is_valid`` with a fast path: compare the raw hash member, no array parsing.

    On a finished cache this check is most of a re-run's cost; anything unexpected falls
    back to the reference check.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.read("config_hash.npy") == member:
                return True
    except (OSError, KeyError, zipfile.BadZipFile, EOFError):
        return False
    return cache.is_valid(path, chash)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.npz") if f.is_file())


def _fmt_rate(frames: int, seconds: float) -> str:
    return f"{frames / seconds:,.1f}" if seconds > 0 and frames else "-"


def report_table(rep: Report, title: str):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_column("frames/s", justify="right")
    t.add_row("videos done / skipped / failed", f"{rep.done} / {rep.skipped} / {rep.failed}", "")
    t.add_row("frames extracted", f"{rep.frames:,}", "")
    for stage in STAGES:
        s = rep.stage_s.get(stage, 0.0)
        t.add_row(f"  {stage} (sum over videos)", f"{s:.2f} s", _fmt_rate(rep.frames, s))
    t.add_row("wall time", f"{rep.wall_s:.2f} s", _fmt_rate(rep.frames, rep.wall_s))
    hr = rep.hand_rate
    t.add_row("hand-detection rate (MediaPipe videos)",
              f"{hr:.2f} over {len(rep.hand_rates)}" if hr is not None else "-", "")
    t.add_row("cache size", _fmt_bytes(rep.cache_bytes), "")
    return t


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m preprocess.features", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="dataset name (configs/datasets/<name>.yaml) or a YAML path")
    p.add_argument("--data-root", default=None, help="folder holding the corpus (overrides the YAML's root)")
    p.add_argument("--cache", default="cache", help="cache root; files go to <cache>/<dataset>/<split>/<id>.npz")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                   help="worker processes, one MediaPipe graph each (1 = in-process; default: half the cores)")
    p.add_argument("--shard", default="0/1", help="i/n: process utterances k with k %% n == i")
    p.add_argument("--splits", default=None, help="comma-separated splits (default: all)")
    p.add_argument("--limit", type=int, default=None, help="only the first N utterances (after --splits)")
    p.add_argument("--force", action="store_true", help="rebuild files even when they are valid")
    p.add_argument("--max-failed-frac", type=float, default=0.0,
                   help="exit 0 while at most this fraction of the shard's utterances failed (default 0: any "
                        "failure exits 1; e.g. 0.01 for a huge corpus with a few broken videos)")
    g = p.add_argument_group("extractor (defaults: the dataset YAML's features:)")
    g.add_argument("--rgb-size", type=int, default=None, help="RGB crop side (0 = no RGB)")
    g.add_argument("--landmarks", choices=LANDMARK_MODES, default=None, help="landmark source")
    g.add_argument("--flow", dest="flow_method", choices=FLOW_METHODS, default=None, help="optical flow method")
    g.add_argument("--flow-size", type=int, default=None, help="flow field side")
    g.add_argument("--flow-dtype", choices=FLOW_DTYPES, default=None, help="flow storage dtype")
    g.add_argument("--flow-clip", type=float, default=None, help="flow clip in pixels")
    g.add_argument("--raft-weights", default=None, help="local RAFT checkpoint")
    g.add_argument("--flow-device", dest="device", choices=DEVICES, default=None, help="RAFT device")
    g.add_argument("--max-frames", type=int, default=None, help="keep at most N frames per video (0 = all)")
    return p


CLI_FIELDS = ("rgb_size", "landmarks", "flow_method", "flow_size", "flow_dtype", "flow_clip",
              "raft_weights", "device", "max_frames")


def _failure_line(utt_id: str, message: str) -> str:
    return f"FAILED {utt_id}: {' '.join(message.split())}"


def run(args: argparse.Namespace, console=None) -> Report:
    """Do one extraction run (everything ``main`` does except argument parsing and exit codes).

    Raises:
        ValueError / FileNotFoundError: configuration problems (bad dataset, empty manifest).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from preprocess.datasets import load_dataset_config

    console = console or Console(highlight=False)
    t_start = time.perf_counter()
    shard = _parse_shard(args.shard)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    ds = load_dataset_config(args.dataset, args.data_root)
    overrides = {k: getattr(args, k) for k in CLI_FIELDS if getattr(args, k, None) is not None}
    cfg = FeatureConfig.from_dict(ds.features, **overrides)
    if cfg.flow.is_raft:  # before any video is read: not once per failed utterance
        from preprocess.device import resolve_device

        resolve_device(cfg.flow.device, "--flow-device")
    out_dir = cache.dataset_dir(args.cache, ds.name)
    all_utts = prepare_manifest(ds, out_dir)
    if not all_utts:
        raise ValueError(f"{out_dir / 'manifest.jsonl'}: the {ds.name} reader found no utterances under "
                         f"{ds.root}; check --data-root / the YAML's root")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    chosen = select(all_utts, splits, args.limit, (0, 1))
    if not chosen:
        raise ValueError(f"{out_dir / 'manifest.jsonl'}: no utterance in splits {splits}; "
                         f"it has {sorted({u.split for u in all_utts})}")
    plan, meta = build_plan(ds, chosen, cfg, args.cache, reuse_meta=not args.force)
    _write_meta_if_changed(args.cache, ds.name, meta)
    mine = select(chosen, None, None, shard)

    rep = Report(failures_path=str(out_dir / "failures.jsonl"))
    todo = []
    member = _hash_member(plan.chash)
    for u in mine:
        path = cache.utt_path(args.cache, ds.name, u.split, u.id)
        if not args.force and _is_valid(path, plan.chash, member):
            rep.skipped += 1
        else:
            todo.append(u)

    _remove_stale_temps(args.cache, ds.name, todo)
    failures_path = out_dir / "failures.jsonl"
    _reset_failures(failures_path, {(u.split, u.id) for u in chosen} - {(u.split, u.id) for u in mine})
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=False, disable=not todo)

    def on_result(r: Result) -> None:
        rep.add(r)
        if not r.ok:
            progress.console.print(_failure_line(r.id, r.message), markup=False, highlight=False, soft_wrap=True)
            with open(failures_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"id": r.id, "split": r.split, "source": r.source, "error": r.message,
                                    "config_hash": plan.chash, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                   ensure_ascii=False) + "\n")
        progress.update(task, advance=1, failed=rep.failed)

    def crash_result(u: Utterance, message: str) -> Result:
        return Result(u.id, u.split, False, message, source=u.source)

    with progress:
        task = progress.add_task(f"{ds.name} shard {args.shard}", total=len(todo), failed=0)
        if todo:
            run_jobs(todo, _job, min(args.workers, len(todo)), _init_worker, (plan, os.getpid()), on_result,
                     crash_result, stages=(_load_job, _finish_job))
    rep.wall_s = time.perf_counter() - t_start
    rep.cache_bytes = _dir_bytes(out_dir)
    return rep


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the readers' one-line notes
    console = Console(highlight=False)
    try:
        if not 0.0 <= args.max_failed_frac <= 1.0:
            raise UserError(f"--max-failed-frac must be in [0, 1], got {args.max_failed_frac}")
        rep = run(args, console)
    except (UserError, ValueError, OSError) as e:  # configuration problems: one line, exit 2
        return print_user_error(e)
    except KeyboardInterrupt:
        console.print("interrupted: finished files are kept; run the same command again to resume", markup=False)
        return 130
    if rep.skipped and not (rep.done or rep.failed):  # a finished cache: one line, not a table of zeros
        console.print(f"features: {args.dataset} (shard {args.shard}): all {rep.skipped} videos already cached "
                      f"({_fmt_bytes(rep.cache_bytes)}); nothing to do", markup=False, soft_wrap=True)
        return 0
    console.print(report_table(rep, f"features: {args.dataset} (shard {args.shard})"))
    total = rep.done + rep.skipped + rep.failed
    if rep.failed and (rep.done + rep.skipped == 0 or rep.failed > args.max_failed_frac * total):
        print(f"error: {rep.failed} of {total} utterances failed (listed above and in {rep.failures_path}); "
              "fix or remove them and rerun (finished files are kept), or pass "
              f"--max-failed-frac {rep.failed / total:.3g} to accept this", file=sys.stderr)
        return 1
    if rep.failed:
        print(f"warning: {rep.failed} of {total} utterances failed (within --max-failed-frac "
              f"{args.max_failed_frac}); see failures.jsonl", file=sys.stderr)
    elif rep.done + rep.skipped == 0:
        console.print("nothing to do for this shard", markup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
