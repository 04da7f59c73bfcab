"""MediaPipe Holistic landmarks for a whole video: float32 [T, 543, 3] plus a detection mask.

Uses the legacy ``mediapipe.solutions.holistic`` API of mediapipe 0.10.21 because its models
ship inside the wheel and it runs offline; only ``model_complexity=1`` has its pose model in
the wheel (0 and 2 download one at start-up and fail offline), so other values are refused.

Layout (preprocess/layouts.py): pose 33, face 468, left hand 21, right hand 21. "Left" is the
*person's* left hand as MediaPipe labels it, whatever the camera mirroring. Channels are
(x, y, z): x and y normalised to the frame width/height (MediaPipe may place points slightly
outside [0, 1]), z as MediaPipe gives it for each part (pose: depth relative to the hips; face
and hands: relative depth). Pose visibility is not stored as a channel -- z keeps the cache
consistent with `.pose` files -- but ``min_pose_visibility`` can mask low-visibility pose points.
A part not found on a frame has mask False and coordinates 0.
"""
from __future__ import annotations

import glob
import os
import re
import sys
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np

from preprocess.configs import UserError
from preprocess.layouts import FACE, LEFT_HAND, POSE, RIGHT_HAND

NUM_POINTS = RIGHT_HAND[1]  # 543
FRAME_US = 33333  # microseconds between frames as mediapipe's solution API stamps them (30 fps)
# (part name, slice in the 543 layout, attribute of MediaPipe's result)
PARTS = (
    ("pose", POSE, "pose_landmarks"),
    ("face", FACE, "face_landmarks"),
    ("left_hand", LEFT_HAND, "left_hand_landmarks"),
    ("right_hand", RIGHT_HAND, "right_hand_landmarks"),
)


# What MediaPipe's native code prints while a graph starts (its calculators and TFLite load on the
# first frame): glog info/warning lines and TFLite's delegate banner. Its environment switches
# (GLOG_minloglevel) are read when the library loads, too late to help, so the native stderr
# itself is captured around the start and only other lines are passed on.
_GLOG = re.compile(r"^([IWEF])\d{4} ")  # glog: level letter, MMDD, time, thread, file:line]
_NOISE = (re.compile(r"^INFO: Created TensorFlow Lite"),
          re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"))
_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_state: tuple[int, int, threading.Thread] | None = None  # (saved fd 2, pipe write end, reader)


def is_native_noise(line: str) -> bool:
    """True for MediaPipe start-up chatter; glog E/F lines and anything unrecognised are not noise."""
    m = _GLOG.match(line)
    if m:
        return m.group(1) in "IW"
    return any(p.match(line) for p in _NOISE)


def _forward(read_fd: int, out_fd: int) -> None:
    """Copy lines from the pipe to the real stderr as they arrive, dropping the noise."""
    buf = b""
    with os.fdopen(read_fd, "rb", buffering=0) as r:
        while chunk := r.read(65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            keep = [ln for ln in lines if ln.strip() and not is_native_noise(ln.decode("utf-8", "replace"))]
            if keep:
                os.write(out_fd, b"\n".join(keep) + b"\n")
    if buf.strip() and not is_native_noise(buf.decode("utf-8", "replace")):
        os.write(out_fd, buf + b"\n")


@contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Route file descriptor 2 (where C++ logs go) through a filter for the block: noise is dropped,
    every other line reaches the real stderr as it is written (so an error before a crash shows).

    Sections may overlap across threads (two graphs starting at once): the first to enter
    redirects, the last to leave restores, so no thread restores another's redirection.
    """
    global _quiet_depth, _quiet_state
    with _quiet_lock:
        if _quiet_depth == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
                r, w = os.pipe()
                reader = threading.Thread(target=_forward, args=(r, saved), name="stderr-filter", daemon=True)
                reader.start()
                os.dup2(w, 2)
                _quiet_state = (saved, w, reader)
            except (OSError, ValueError):  # no usable fd 2 (e.g. closed): nothing to quieten
                _quiet_state = None
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_state is not None:
                saved, w, reader = _quiet_state
                _quiet_state = None
                try:
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, 2)  # fd 2 no longer points at the pipe ...
                os.close(w)  # ... so closing our end lets the reader see the end of it
                reader.join(timeout=5.0)
                os.close(saved)


class NoPersonError(UserError):
    """No pose, face or hand was found on any frame; message ``"<video>: <problem>"``."""


@dataclass(frozen=True)
class HolisticConfig:
    model_complexity: int = 1  # only 1 ships in the mediapipe wheel (offline)
    min_detection_confidence: float = 0.5  # person/hand detector threshold
    min_tracking_confidence: float = 0.5  # below this the tracker re-runs detection
    smooth_landmarks: bool = True  # temporal filtering of pose landmarks across frames
    min_pose_visibility: float = 0.0  # pose points below this visibility get mask False (0: keep all)

    def __post_init__(self) -> None:
        if self.model_complexity != 1:
            raise ValueError(
                f"model_complexity={self.model_complexity!r} is not supported: only 1 ships inside the "
                "mediapipe 0.10.21 wheel; 0 and 2 download their model at start-up and fail offline"
            )
        for name in ("min_detection_confidence", "min_tracking_confidence", "min_pose_visibility"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HolisticExtractor:
    """MediaPipe Holistic in video (tracking) mode, for whole videos or one frame at a time.

    ``extractor(frames, name)`` extracts a whole video; ``process_frame(frame)`` extracts the
    next frame of a stream (a camera, or a file read frame by frame), tracking from the
    previous call, and ``reset()`` starts a new video. Both give the same arrays for the same
    frames. One instance per worker process or thread: the graph is built lazily on first use
    (so an unused instance pickles into a worker) and reset before every whole video so
    tracking never carries over from one video into the next. Use as a context manager, or
    call :meth:`close`.
    """

    def __init__(self, config: HolisticConfig | None = None, *, graph_threads: int | None = None,
                 **overrides: Any) -> None:
        base = config or HolisticConfig()
        self.config = HolisticConfig(**{**base.to_dict(), **overrides}) if overrides else base
        if graph_threads is not None and graph_threads < 1:
            raise ValueError(f"graph_threads must be >= 1, got {graph_threads}")
        # threads of the graph's own scheduler (None: MediaPipe's default, one per core); the
        # landmarks are the same either way, only the scheduling differs
        self.graph_threads = graph_threads
        self._graph = None
        self._used = False  # a frame went through the graph since it was built or reset

    def __enter__(self) -> "HolisticExtractor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"config": self.config, "graph_threads": self.graph_threads}  # the native graph is rebuilt on demand

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"], graph_threads=state.get("graph_threads"))

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None
            self._used = False

    def reset(self) -> None:
        """Start a new video: drop the tracking state, so its first frame runs person detection afresh."""
        if self._graph is not None and self._used:
            self._graph.reset()
        self._used = False

    def _build_graph(self):
        holistic = import_holistic()

        threads = self.graph_threads

        class Holistic(holistic.Holistic):
            def _initialize_graph_interface(self, *args: Any, **kwargs: Any):
                # the solution API builds its graph from the config this returns (mediapipe 0.10.21)
                config = super()._initialize_graph_interface(*args, **kwargs)
                if threads is not None:
                    _set_graph_threads(config, threads)
                return config

        c = self.config
        return Holistic(
            static_image_mode=False,
            model_complexity=c.model_complexity,
            smooth_landmarks=c.smooth_landmarks,
            enable_segmentation=False,
            refine_face_landmarks=False,
            min_detection_confidence=c.min_detection_confidence,
            min_tracking_confidence=c.min_tracking_confidence,
        )

    def _extract_into(self, frame: np.ndarray, keypoints: np.ndarray, mask: np.ndarray, step: int = 1) -> None:
        """Run one frame and write its landmarks into ``keypoints`` [543, 3] and ``mask`` [543] (zeroed)."""
        image = np.ascontiguousarray(frame)
        image.flags.writeable = False  # lets MediaPipe wrap the buffer without a copy
        if not self._used:  # a new or reset graph logs while it is built and (re)starts on its first frame
            with quiet_native_stderr():
                if self._graph is None:
                    self._graph = self._build_graph()
                result = self._graph.process(image)
        else:
            if step > 1 and self._used and hasattr(self._graph, "_simulated_timestamp"):
                # the solution API stamps frames 1/30 s apart; tell the smoothing filters about skipped frames
                self._graph._simulated_timestamp += FRAME_US * (step - 1)
            result = self._graph.process(image)
        self._used = True
        min_vis = self.config.min_pose_visibility
        for part, (lo, hi), attr in PARTS:
            found = getattr(result, attr)
            if found is None:
                continue
            lms = found.landmark
            keypoints[lo:hi] = [(p.x, p.y, p.z) for p in lms]
            if part == "pose" and min_vis > 0.0:
                mask[lo:hi] = [p.visibility >= min_vis for p in lms]
                keypoints[lo:hi][~mask[lo:hi]] = 0.0
            else:
                mask[lo:hi] = True

    def warm_up(self) -> None:
        """Build the graph and run one blank frame through it, so the next frame is not slowed by start-up.

        Most of a graph's start-up is paid on its first frame (models initialised on first use);
        a blank frame pays it without leaving tracking state: on the ten ../shared/clips the
        landmarks that follow are bit-identical to those of a fresh graph. Does nothing to a
        graph that has already run.
        """
        if self._used:
            return
        blank = np.zeros((64, 64, 3), dtype=np.uint8)
        self._extract_into(blank, np.zeros((NUM_POINTS, 3), dtype=np.float32), np.zeros(NUM_POINTS, dtype=bool))

    def process_frame(self, frame: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of the next frame of the current video (tracking from the previous call).

        Args:
            frame: uint8 RGB [H, W, 3].
            step: frames of the video since this extractor's previous frame: n when n
                extractors share one video round-robin, so MediaPipe's landmark smoothing sees
                the true time gap (measured on ../shared/clips: ~40% smaller pose offsets from
                a single graph's landmarks than without it, same detection rates).

        Returns:
            keypoints float32 [543, 3] and mask bool [543] (False and zeros where not found).
        """
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
        if step < 1:
            raise ValueError(f"step must be >= 1 frame, got {step}")
        keypoints = np.zeros((NUM_POINTS, 3), dtype=np.float32)
        mask = np.zeros(NUM_POINTS, dtype=bool)
        self._extract_into(frame, keypoints, mask, step)
        return keypoints, mask

    def __call__(self, frames: np.ndarray, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of one whole video (tracking starts afresh: ``reset()`` first).

        Args:
            frames: uint8 RGB [T, H, W, 3], the frames of one video in order.
            name: the video's path or id, used in error messages.

        Returns:
            keypoints float32 [T, 543, 3] and mask bool [T, 543].

        Raises:
            NoPersonError: nothing was detected on any frame.
        """
        label = name or "<frames>"
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{label}: frames must be uint8 RGB [T, H, W, 3], got {frames.dtype} {frames.shape}")
        t = frames.shape[0]
        if t == 0:
            raise ValueError(f"{label}: no frames to extract landmarks from")
        self.reset()
        keypoints = np.zeros((t, NUM_POINTS, 3), dtype=np.float32)
        mask = np.zeros((t, NUM_POINTS), dtype=bool)
        for i in range(t):
            self._extract_into(frames[i], keypoints[i], mask[i])
        if not mask.any():
            raise NoPersonError(
                f"{label}: no person detected on any of {t} frames; check the video shows a signer "
                f"(or lower min_detection_confidence, now {self.config.min_detection_confidence})"
            )
        return keypoints, mask


_import_lock = threading.Lock()


def import_holistic():
    """``mediapipe.python.solutions.holistic``, without running the ``__init__`` of ``mediapipe``
    and of ``mediapipe.python.solutions`` first.

    Those two import every solution, ``drawing_utils`` (which imports matplotlib.pyplot) and the
    tasks API: about 0.55 s of mediapipe's 0.8 s import on 2 cores, paid at every live session's
    start, for nothing the Holistic graph uses. So, when mediapipe is not imported yet, both
    packages are entered as lazy package objects: their submodules import as usual
    (``mediapipe.python`` runs its own ``__init__``, which loads the native bindings; every
    solution but the drawing ones is imported, as their protos are registered then); a
    submodule of ``solutions`` asked as an attribute is imported then; any other attribute runs
    the package's real ``__init__`` (``solutions``'s first, as a normal import would), so other
    code in the process sees the usual package.
    """
    import importlib
    import importlib.util

    with _import_lock:
        if "mediapipe" not in sys.modules:
            spec = importlib.util.find_spec("mediapipe")
            if spec is None or not spec.submodule_search_locations:
                raise UserError("mediapipe is not installed: pip install -e . (it pins mediapipe==0.10.21)")
            root = list(spec.submodule_search_locations)[0]
            folder = os.path.join(root, "python", "solutions")
            solutions = _lazy_package("mediapipe.python.solutions", folder, submodules=True)
            top = _lazy_package("mediapipe", root, before=solutions)
            try:
                importlib.import_module("mediapipe.python").solutions = solutions
            except BaseException:
                for m in (top, solutions):
                    sys.modules.pop(m.__name__, None)
                raise
            # the other solutions register the calculator option protos the Holistic graph's config
            # refers to (e.g. face_mesh's landmark refinement): import them all, but the drawing ones
            for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
                mod = os.path.basename(path)[:-3]
                if not (mod.startswith(("_", "drawing_")) or mod.endswith("_test")):
                    importlib.import_module(f"mediapipe.python.solutions.{mod}")
        return importlib.import_module("mediapipe.python.solutions.holistic")


def _lazy_package(name: str, folder: str, submodules: bool = False, before: Any = None) -> Any:
    """Enter package ``name`` (in ``folder``) in ``sys.modules`` without running its ``__init__.py``.

    Its ``__getattr__`` runs that ``__init__`` once, on the first attribute it lacks (after
    ``before``'s, itself a lazy package); with ``submodules``, a name that is one of its
    submodules imports just that submodule instead (``from pkg import sub`` asks the package first).
    """
    import importlib
    import importlib.util
    import types

    init = os.path.join(folder, "__init__.py")
    module = types.ModuleType(name)
    module.__spec__ = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    module.__path__, module.__file__, module.__package__ = [folder], init, name

    def run_init() -> None:
        if module.__dict__.pop("__getattr__", None) is None:
            return  # already run
        if before is not None:
            before.__run_init__()
        with open(init, encoding="utf-8") as f:
            exec(compile(f.read(), init, "exec"), module.__dict__)

    def __getattr__(attr: str) -> Any:
        if submodules and (os.path.isdir(os.path.join(folder, attr)) or os.path.isfile(os.path.join(folder, f"{attr}.py"))):
            return importlib.import_module(f"{name}.{attr}")
        if "__getattr__" not in module.__dict__:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        run_init()
        return getattr(module, attr)

    module.__getattr__, module.__run_init__ = __getattr__, run_init
    sys.modules[name] = module
    return module


def _set_graph_threads(config: Any, threads: int) -> None:
    """Give a CalculatorGraphConfig's default scheduler ``threads`` threads."""
    from mediapipe.framework import thread_pool_executor_pb2

    default = [e for e in config.executor if not e.name]
    if not default:
        config.num_threads = threads
        return
    for executor in default:
        executor.options.Extensions[thread_pool_executor_pb2.ThreadPoolExecutorOptions.ext].num_threads = threads


def detection_rates(mask: np.ndarray) -> dict[str, float]:
    """Fraction of frames on which each part was found, for the extraction report.

    Args:
        mask: bool [T, 543].

    Returns:
        ``{"pose", "face", "left_hand", "right_hand", "any_hand"}`` -> fraction in [0, 1]
        (all 0.0 for an empty video).
    """
    if mask.ndim != 2 or mask.shape[1] != NUM_POINTS:
        raise ValueError(f"mask must be [T, {NUM_POINTS}], got {mask.shape}")
    t = mask.shape[0]
    found = {part: mask[:, lo:hi].any(axis=1) for part, (lo, hi), _ in PARTS}  # each [T]
    found["any_hand"] = found["left_hand"] | found["right_hand"]
    return {part: float(f.mean()) if t else 0.0 for part, f in found.items()}
