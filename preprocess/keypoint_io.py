"""Pre-extracted keypoint files in, community `.pose` files out.

Corpora often ship landmarks instead of (or beside) videos. They come as plain arrays
(``.npy`` ``[T, K, C]`` with NaN where a point is missing, ``.npz`` with ``keypoints`` and an
optional ``mask``) or as ``.pose`` files of the pose-format library. Everything is turned into
the cache's convention: ``float32 [T, K, 3]`` (x, y in [0, 1] of the frame, then z), a
``bool [T, K]`` mask, and a layout name (``mediapipe_holistic_543`` or ``custom_K``), so the
feature extractor can copy them into the cache exactly like landmarks it computed itself.

``save_pose`` goes the other way so cached landmarks open in the community's viewers:
``python -m preprocess.keypoint_io to-pose --cache CACHE --dataset NAME --split S --out DIR``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from preprocess.commandline import add_cache, add_out, command, prog
from preprocess.configs import UserError
from preprocess.layouts import FACE, HOLISTIC_543, LEFT_HAND, POSE, RIGHT_HAND, SUBSETS, layout_name

log = logging.getLogger(__name__)

KEYPOINT_SUFFIXES = (".npy", ".npz", ".pose")

# pose-format component names of MediaPipe Holistic, in our 543-point order, with their sizes.
HOLISTIC_COMPONENTS = (
    ("POSE_LANDMARKS", POSE[1] - POSE[0]),
    ("FACE_LANDMARKS", FACE[1] - FACE[0]),
    ("LEFT_HAND_LANDMARKS", LEFT_HAND[1] - LEFT_HAND[0]),
    ("RIGHT_HAND_LANDMARKS", RIGHT_HAND[1] - RIGHT_HAND[0]),
)
# Components a holistic file may carry that have no place in the image-space layout.
DROPPED_COMPONENTS = frozenset({"POSE_WORLD_LANDMARKS"})


class KeypointFileError(UserError):
    """A keypoint file that cannot be used; the message is one line naming the file."""


def _fail(path: str | os.PathLike, problem: str) -> KeypointFileError:
    return KeypointFileError(f"{path}: {' '.join(problem.split())}")  # always one line


# --------------------------------------------------------------------------------------- load


def load_keypoints(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str]:
    """Read a ``.npy``/``.npz``/``.pose`` keypoint file.

    Returns:
        keypoints: float32 [T, K, 3]; x, y as stored (``.pose`` pixels are divided by the
            header's width/height), z (0 when the file has only x, y); 0 where missing.
        mask: bool [T, K], False where a point is missing (NaN, masked or zero confidence).
        layout: ``mediapipe_holistic_543`` for holistic files, else the stored layout name
            (``.npz`` member ``layout``) or ``custom_K``.

    Raises:
        KeypointFileError: unreadable file or wrong shapes, one line naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in KEYPOINT_SUFFIXES:
        raise _fail(path, f"unsupported keypoint file type {suffix!r}; use one of {list(KEYPOINT_SUFFIXES)}")
    if not path.is_file():
        raise _fail(path, "keypoint file not found")
    if suffix == ".pose":
        return _load_pose(path)
    if suffix == ".npy":
        array = _np_load(path)
        if not isinstance(array, np.ndarray):
            raise _fail(path, "expected a single array in the .npy file")
        kp, mask = _from_array(path, array, None)
        return kp, mask, layout_name(kp.shape[1])
    return _load_npz(path)


def _np_load(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        detail = str(e).splitlines()[0] if str(e) else "corrupt"
        raise _fail(path, f"unreadable keypoint file ({type(e).__name__}: {detail})") from None


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    z = _np_load(path)
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _fail(path, "expected an .npz archive (keypoints[, mask]), found a plain .npy array")
    try:
        names = set(z.files)
        if "keypoints" not in names:
            raise _fail(path, f"no 'keypoints' array in the .npz (it holds {sorted(names)})")
        mask_name = next((n for n in ("mask", "keypoints_mask") if n in names), None)
        try:
            array = z["keypoints"]
            mask = z[mask_name] if mask_name else None
            stored_layout = str(z["layout"]) if "layout" in names else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise _fail(path, f"corrupt .npz member ({type(e).__name__}: {e})") from None
    finally:
        z.close()
    kp, valid = _from_array(path, array, mask)
    return kp, valid, _checked_layout(stored_layout, kp.shape[1])


def _checked_layout(stored: str | None, num_points: int) -> str:
    """The stored layout name when it agrees with the point count, else the generic name."""
    if stored and stored in SUBSETS and SUBSETS[stored].size == num_points:
        return stored
    if stored and stored == f"custom_{num_points}":
        return stored
    return layout_name(num_points)


def _from_array(path: Path, array: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``[T, K, C]`` (C in 2..4) and turn NaN/mask into the cache convention."""
    if array.dtype.kind not in "fiu":
        raise _fail(path, f"keypoints must be numbers, got dtype {array.dtype}")
    if array.ndim != 3:
        raise _fail(path, f"keypoints must be [T, K, C] (frames, points, coords), got shape {tuple(array.shape)}")
    t, k, c = array.shape
    if c not in (2, 3, 4):
        raise _fail(path, f"keypoints need 2, 3 or 4 values per point (x, y[, z[, visibility]]), got C={c}")
    if t == 0 or k == 0:
        raise _fail(path, f"keypoints have no frames or no points (shape {tuple(array.shape)})")
    xyz = np.zeros((t, k, 3), np.float32)
    xyz[..., : min(c, 3)] = array[..., :3]  # C=2: z stays 0; C=4: drop visibility
    valid = np.isfinite(xyz).all(axis=-1)  # [T, K]; NaN/inf marks a missing point
    if mask is not None:
        if mask.shape != (t, k):
            raise _fail(path, f"mask must be [T, K] = {(t, k)} like the keypoints, got {tuple(mask.shape)}")
        if mask.dtype.kind not in "biu":
            raise _fail(path, f"mask must be boolean, got dtype {mask.dtype}")
        valid &= mask.astype(bool)
    xyz[~valid] = 0.0
    return xyz, valid


def _read_pose(path: Path):
    try:
        from pose_format import Pose
    except ImportError as e:  # pragma: no cover - pose-format is a pinned dependency
        raise _fail(path, f"reading .pose files needs the pose-format package ({e})") from None
    try:
        return Pose.read(path.read_bytes())
    except Exception as e:  # the library raises assorted errors on truncated/corrupt input
        raise _fail(path, f"unreadable .pose file ({type(e).__name__}: {e})") from None


def _holistic_order(components) -> list[int] | None:
    """Point indices that reorder a holistic file into our 543 layout, or None if not holistic."""
    offsets, start = {}, 0
    for comp in components:
        offsets[comp.name] = (start, len(comp.points))
        start += len(comp.points)
    wanted = {name for name, _ in HOLISTIC_COMPONENTS}
    if not wanted <= offsets.keys() or not set(offsets) - wanted <= DROPPED_COMPONENTS:
        return None
    order: list[int] = []
    for name, size in HOLISTIC_COMPONENTS:
        first, count = offsets[name]
        if count != size:
            return None
        order.extend(range(first, first + count))
    return order


def _load_pose(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    pose = _read_pose(path)
    header, data = pose.header, pose.body.data
    if data.ndim != 4:
        raise _fail(path, f"pose body must be [frames, people, points, dims], got shape {tuple(data.shape)}")
    t, people, _, dims = data.shape
    if t == 0:
        raise _fail(path, "the .pose file has no frames")
    if people == 0:
        raise _fail(path, "the .pose file has no person")
    width, height = header.dimensions.width, header.dimensions.height
    if width <= 0 or height <= 0:
        raise _fail(path, f"header frame size is {width}x{height}; cannot normalise pixel coordinates")
    values = np.asarray(np.ma.getdata(data)[:, 0], dtype=np.float32)  # [T, P, D], person 0
    missing = np.ma.getmaskarray(data)[:, 0].any(axis=-1)  # [T, P]
    confidence = np.asarray(pose.body.confidence)[:, 0]  # [T, P]
    missing |= confidence <= 0

    order = _holistic_order(header.components)
    if order is not None:
        values, missing, layout = values[:, order], missing[:, order], HOLISTIC_543
    else:
        single = header.components[0].name if len(header.components) == 1 else None
        layout = _checked_layout(single, values.shape[1])

    xyz = np.zeros(values.shape[:2] + (3,), np.float32)
    xyz[..., : min(dims, 3)] = values[..., :3]  # XYZKC files carry a 4th value: drop it
    xyz[..., 0] /= width
    xyz[..., 1] /= height
    valid = ~missing & np.isfinite(xyz).all(axis=-1)
    xyz[~valid] = 0.0
    return xyz, valid, layout


def keypoint_num_frames(path: str | os.PathLike) -> int:
    """Frame count of a keypoint file, reading only its header where the format allows."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                return int(_npy_header_shape(f)[0])
        if suffix == ".npz":
            with zipfile.ZipFile(path) as zf, zf.open("keypoints.npy") as f:
                return int(_npy_header_shape(f)[0])
        if suffix == ".pose":
            return _pose_num_frames(path)
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
        raise _fail(path, f"cannot read the frame count ({type(e).__name__}: {e})") from None
    raise _fail(path, f"unsupported keypoint file type {suffix!r}; use one of {list(KEYPOINT_SUFFIXES)}")


def _npy_header_shape(f) -> tuple[int, ...]:
    major, _ = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, _ = read(f)
    return shape


def _pose_num_frames(path: Path) -> int:
    from pose_format.pose_header import PoseHeader
    from pose_format.utils.reader import BufferReader, ConstStructs

    reader = BufferReader(path.read_bytes())
    header = PoseHeader.read(reader)
    if header.version < 0.2 - 1e-6:  # old layouts: let the library parse the body
        return int(_read_pose(path).body.data.shape[0])
    reader.unpack(ConstStructs.float)  # fps
    return int(reader.unpack(ConstStructs.uint))


def keypoint_fps(path: str | os.PathLike) -> float | None:
    """Frame rate stored in a ``.pose`` header (arrays carry none: None)."""
    path = Path(path)
    if path.suffix.lower() != ".pose":
        return None
    from pose_format.pose_header import PoseHeader
    from pose_format.utils.reader import BufferReader, ConstStructs

    try:
        reader = BufferReader(path.read_bytes())
        header = PoseHeader.read(reader)
        if header.version < 0.2 - 1e-6:
            return float(_read_pose(path).body.fps)
        return float(reader.unpack(ConstStructs.float))
    except Exception as e:
        raise _fail(path, f"cannot read the frame rate ({type(e).__name__}: {e})") from None


def keypoint_frame_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) in pixels stored in a ``.pose`` header (arrays carry none: None)."""
    path = Path(path)
    if path.suffix.lower() != ".pose":
        return None
    from pose_format.pose_header import PoseHeader
    from pose_format.utils.reader import BufferReader

    try:
        dims = PoseHeader.read(BufferReader(path.read_bytes())).dimensions
    except Exception as e:
        raise _fail(path, f"cannot read the frame size ({type(e).__name__}: {e})") from None
    return (int(dims.width), int(dims.height)) if dims.width > 0 and dims.height > 0 else None


# --------------------------------------------------------------------------------------- save


def _components(layout: str, num_points: int):
    """pose-format header components for ``layout`` (holistic ones carry limbs for viewers)."""
    from pose_format.pose_header import PoseHeaderComponent

    if layout == HOLISTIC_543:
        try:  # names and limbs come from mediapipe's own connection tables
            from pose_format.utils.holistic import holistic_components

            by_name = {c.name: c for c in holistic_components("XYZC")}
            return [by_name[name] for name, _ in HOLISTIC_COMPONENTS]
        except ImportError:  # pragma: no cover - mediapipe is a pinned dependency
            return [PoseHeaderComponent(name, [str(i) for i in range(size)], [], [], "XYZC")
                    for name, size in HOLISTIC_COMPONENTS]
    return [PoseHeaderComponent(layout, [str(i) for i in range(num_points)], [], [], "XYZC")]


def save_pose(path: str | os.PathLike, keypoints: np.ndarray, mask: np.ndarray, layout: str,
              fps: float, width: int, height: int) -> None:
    """Write cache landmarks as a ``.pose`` file (one person), atomically.

    Args:
        keypoints: [T, K, 3] x, y in [0, 1] of the frame, then z (float16 or float32).
        mask: bool [T, K], False where a point is missing (written with confidence 0).
        layout: the cache's layout name; ``mediapipe_holistic_543`` becomes the four
            MediaPipe Holistic components, anything else one component named ``layout``.
        fps, width, height: frame rate and the frame size x, y are scaled back to.
    """
    from pose_format import Pose
    from pose_format.numpy.pose_body import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderDimensions

    keypoints = np.asarray(keypoints)
    mask = np.asarray(mask, dtype=bool)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"{path}: keypoints must be [T, K, 3], got shape {keypoints.shape}")
    if mask.shape != keypoints.shape[:2]:
        raise ValueError(f"{path}: mask must be [T, K] = {keypoints.shape[:2]}, got {mask.shape}")
    if layout == HOLISTIC_543 and keypoints.shape[1] != 543:
        raise ValueError(f"{path}: layout {HOLISTIC_543} needs 543 points, got {keypoints.shape[1]}")
    if width <= 0 or height <= 0 or fps <= 0:
        raise ValueError(f"{path}: width, height and fps must be positive, got {width}x{height} at {fps}")

    pixels = keypoints.astype(np.float32) * np.array([width, height, 1.0], np.float32)
    pixels[~mask] = 0.0
    data = pixels[:, None]  # [T, 1, K, 3]: one person
    confidence = mask.astype(np.float32)[:, None]  # [T, 1, K]
    data = np.ma.masked_array(data, mask=np.repeat(~mask[:, None, :, None], 3, axis=-1))
    header = PoseHeader(0.2, PoseHeaderDimensions(int(width), int(height), 0), _components(layout, keypoints.shape[1]))
    pose = Pose(header, NumPyPoseBody(fps=float(fps), data=data, confidence=confidence))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".pose.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pose.write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------- CLI


def export_split(cache: str | os.PathLike, dataset: str, split: str, out: str | os.PathLike,
                 width: int | None = None, height: int | None = None,
                 manifest: str | os.PathLike | None = None) -> tuple[int, int]:
    """Export every cache file of one split to ``<out>/<id>.pose``; returns (written, failed).

    Each file gets its own utterance's frame size and rate (the manifest's, else the source
    video's headers), so viewers draw the skeleton at the video's aspect ratio and speed;
    ``width``/``height`` force one size for every file.
    """
    from preprocess.cache import dataset_dir, load_utt, read_meta
    from preprocess.manifest import read_manifest

    meta = read_meta(cache, dataset)
    layout = meta.get("keypoint_layout")
    if not layout:
        raise ValueError(f"{dataset_dir(cache, dataset) / 'meta.json'}: no keypoint_layout; "
                         "the cache was built without landmarks")
    manifest = Path(manifest) if manifest else dataset_dir(cache, dataset) / "manifest.jsonl"
    utts = {u.id: u for u in read_manifest(manifest)} if manifest.is_file() else {}
    if not utts:
        log.warning("%s: no manifest; writing every file at 25 fps", manifest)
    files = sorted((dataset_dir(cache, dataset) / split).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{dataset_dir(cache, dataset) / split}: no cache files for split {split!r}")
    written = failed = 0
    guessed: list[str] = []
    for f in files:
        try:
            arrays = load_utt(f, ("keypoints", "keypoints_mask"))
            u = utts.get(f.stem)
            size = (width, height) if width and height else _frame_size(u)
            if size is None:
                guessed.append(f.stem)
                size = (width or 1000, height or 1000)
            save_pose(Path(out) / f"{f.stem}.pose", arrays["keypoints"], arrays["keypoints_mask"],
                      layout, u.fps if u else 25.0, size[0], size[1])
            written += 1
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
            log.error("%s", str(e).strip("'\""))
            failed += 1
    if guessed:
        log.warning("%d of %d files have no known frame size (e.g. %s): written at %dx%d; pass --width/--height",
                    len(guessed), len(files), guessed[0], width or 1000, height or 1000)
    return written, failed


def _frame_size(utt) -> tuple[int, int] | None:
    """(width, height) of an utterance's source: the manifest's, else the video's headers, else None."""
    if utt is None:
        return None
    if utt.width > 0 and utt.height > 0:
        return utt.width, utt.height
    if utt.source:
        from preprocess.video import VideoError, probe_video

        try:
            info = probe_video(utt.source)
        except VideoError:
            return None
        if info.width > 0 and info.height > 0:
            return info.width, info.height
    return None


def render_utterance(cache: str | os.PathLike, dataset: str, utt: str, out: str | os.PathLike,
                     width: int | None = None, height: int | None = None) -> int:
    """A cached utterance's landmarks drawn on a black canvas as an MP4 (no video needed), its
    reference glosses as the caption; returns the frames written."""
    from preprocess.cache import dataset_dir, load_utt, read_meta
    from preprocess.manifest import read_manifest
    from preprocess.render import render_landmarks

    layout = read_meta(cache, dataset).get("keypoint_layout")
    if not layout:
        raise ValueError(f"{dataset_dir(cache, dataset) / 'meta.json'}: no keypoint_layout; "
                         "the cache was built without landmarks")
    manifest = dataset_dir(cache, dataset) / "manifest.jsonl"
    utts = {u.id: u for u in read_manifest(manifest)} if manifest.is_file() else {}
    u = utts.get(utt)
    if u is None:
        raise ValueError(f"{manifest}: no utterance {utt!r} (e.g. {', '.join(list(utts)[:3]) or 'none'}); "
                         "check --utt")
    arrays = load_utt(dataset_dir(cache, dataset) / u.split / f"{utt}.npz", ("keypoints", "keypoints_mask"))
    size = _frame_size(u) or (512, 512)
    if width and height:
        size = (width, height)
    elif width or height:  # one side given: keep the source's aspect ratio
        size = (width, round(width * size[1] / size[0])) if width else (round(height * size[0] / size[1]), height)
    elif max(size) > 720:  # a preview need not be full HD
        k = 720 / max(size)
        size = (round(size[0] * k), round(size[1] * k))
    return render_landmarks(arrays["keypoints"].astype(np.float32), arrays["keypoints_mask"].astype(bool), out,
                            u.fps or 25.0, size, layout, caption=u.glosses)


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("preprocess.keypoint_io"), description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-pose", help="export cached landmarks of one split as .pose files")
    add_cache(p, "feature cache root (holds <dataset>/meta.json)", required=True)
    p.add_argument("--dataset", required=True, help="dataset name inside the cache")
    p.add_argument("--split", required=True, help="train, dev or test")
    add_out(p, "output folder for <id>.pose", required=True)
    p.add_argument("--manifest", default=None, help="manifest with fps (default <cache>/<dataset>/manifest.jsonl)")
    p.add_argument("--width", type=int, default=None,
                   help="frame width x is scaled to (default: each utterance's own video size)")
    p.add_argument("--height", type=int, default=None,
                   help="frame height y is scaled to (default: each utterance's own video size)")
    r = sub.add_parser("render", help="draw one cached utterance's landmarks as an MP4 (no video needed)")
    add_cache(r, "feature cache root (holds <dataset>/meta.json)", required=True)
    r.add_argument("--dataset", required=True, help="dataset name inside the cache")
    r.add_argument("--utt", required=True, help="utterance id")
    add_out(r, "output .mp4", required=True)
    r.add_argument("--width", type=int, default=None, help="video width (default: the source's, at most 720)")
    r.add_argument("--height", type=int, default=None, help="video height (default: the source's, at most 720)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "render":
        n = render_utterance(args.cache, args.dataset, args.utt, args.out, args.width, args.height)
        print(f"wrote {args.out} ({n} frames)")
        return 0
    written, failed = export_split(args.cache, args.dataset, args.split, args.out,
                                   args.width, args.height, args.manifest)
    print(f"wrote {written} .pose files to {args.out}" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
