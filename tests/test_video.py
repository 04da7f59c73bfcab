"""Video decoding (decord, PyAV fallback, frame folders), resize/crop, and every bad input."""
from __future__ import annotations

import csv
import warnings

import cv2
import numpy as np
import pytest

from preprocess import datasets, video
from preprocess.video import TruncatedVideoWarning, VideoError, natural_key, read_frames, resize_crop

# Frames that really play, from shared/README.md. football's header claims 64, but two packets
# are discarded by the container's edit list, so 62 play.
CLIP_FRAMES = {
    "wlasl_68011_book": 55,
    "football_signingsavvy": 62,
    "soup_signingsavvy": 41,
    "wlasl_63185_whistle": 57,
    "autsl_signer0_sample1000_color": 43,
}


@pytest.fixture(scope="module")
def labels(shared_dir):
    with open(shared_dir / "clips" / "labels.csv", newline="") as f:
        return {row["file"].removesuffix(".mp4"): row for row in csv.DictReader(f)}


@pytest.fixture
def force_pyav(monkeypatch):
    def fail(path, max_frames):
        raise video._DecordFailed("forced by test")

    monkeypatch.setattr(video, "_read_decord", fail)


@pytest.mark.parametrize("clip,frames", sorted(CLIP_FRAMES.items()))
def test_decord_frame_counts_sizes_and_fps(shared_dir, labels, clip, frames):
    arr, fps = read_frames(shared_dir / "clips" / f"{clip}.mp4")
    row = labels[clip]
    assert arr.dtype == np.uint8 and arr.flags.c_contiguous
    assert arr.shape == (frames, int(row["height"]), int(row["width"]), 3)
    assert fps == pytest.approx(float(row["fps"]), abs=0.1)
    assert arr.std() > 10  # real picture content, not a blank decode


@pytest.mark.parametrize("clip", ["wlasl_68011_book", "football_signingsavvy"])
def test_pyav_fallback_matches_decord(shared_dir, clip, request):
    path = shared_dir / "clips" / f"{clip}.mp4"
    ref, ref_fps = read_frames(path)
    request.getfixturevalue("force_pyav")
    alt, alt_fps = read_frames(path)
    assert alt.shape == ref.shape
    assert alt_fps == pytest.approx(ref_fps, rel=1e-3)
    assert np.abs(alt.astype(np.int16) - ref.astype(np.int16)).mean() < 1.0


def test_max_frames_both_backends(shared_dir, request):
    path = shared_dir / "clips" / "wlasl_68011_book.mp4"
    full, _ = read_frames(path)
    head, _ = read_frames(path, max_frames=7)
    np.testing.assert_array_equal(head, full[:7])
    request.getfixturevalue("force_pyav")
    head_av, _ = read_frames(path, max_frames=7)
    assert head_av.shape == head.shape
    with pytest.raises(ValueError, match="max_frames"):
        read_frames(path, max_frames=0)


def _write_folder(folder, names, size=(12, 16)):
    """Frames whose red channel is their index in natural order; blue/green fixed."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rgb = np.zeros((*size, 3), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10 * i, 200, 7
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_frame_folder_natural_sort_and_rgb(tmp_path):
    names = [f"images{i}.png" for i in range(1, 13)]  # images2 must come before images10
    _write_folder(tmp_path / "clip", names)
    (tmp_path / "clip" / "notes.txt").write_text("not a frame")
    frames, fps = read_frames(tmp_path / "clip")
    assert frames.shape == (12, 12, 16, 3) and fps == 25.0
    np.testing.assert_array_equal(frames[:, 0, 0, 0], 10 * np.arange(12))  # red = order index
    assert (frames[..., 1] == 200).all() and (frames[..., 2] == 7).all()  # BGR -> RGB
    pattern, _ = read_frames(str(tmp_path / "clip" / "*.png"), max_frames=5)
    np.testing.assert_array_equal(pattern, frames[:5])
    assert sorted(["a10.png", "a2.png", "a1.png"], key=natural_key) == ["a1.png", "a2.png", "a10.png"]


@pytest.mark.parametrize("suffix", sorted(datasets.IMAGE_SUFFIXES))
def test_every_frame_suffix_the_readers_count_is_decoded(tmp_path, suffix):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        bgr = np.zeros((12, 16, 3), np.uint8)
        bgr[..., 2], bgr[..., 1] = 10 * i, 200  # red = index (RGB order after decoding)
        cv2.imwrite(str(folder / f"f{i}{suffix}"), bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # webp: lossless
    frames, _ = read_frames(folder)
    assert datasets.count_frames(folder) == video.probe_video(folder).num_frames == len(frames) == 3
    if suffix not in (".jpg", ".jpeg"):  # lossy
        np.testing.assert_array_equal(frames[:, 0, 0, 0], [0, 10, 20])
        assert (frames[..., 1] == 200).all()


def test_real_phoenix_frames(shared_dir):
    frames, fps = read_frames(shared_dir / "data" / "phoenix14t" / "sample", folder_fps=25.0)
    assert frames.shape == (2, 260, 210, 3) and fps == 25.0  # 210x260 (width x height) PNGs


def _truncated(shared_dir, tmp_path, fraction=0.3):
    data = (shared_dir / "clips" / "wlasl_68011_book.mp4").read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_truncated_video_is_an_error_by_default(shared_dir, tmp_path):
    path = _truncated(shared_dir, tmp_path)
    with pytest.raises(VideoError, match="truncated") as err:
        read_frames(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_truncated_video_prefix_kept_when_allowed(shared_dir, tmp_path):
    path = _truncated(shared_dir, tmp_path)
    full, _ = read_frames(shared_dir / "clips" / "wlasl_68011_book.mp4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        part, _ = read_frames(path, allow_truncated=True)
    assert 0 < len(part) < len(full)
    assert np.abs(part.astype(np.int16) - full[: len(part)].astype(np.int16)).mean() < 1.0
    assert any(issubclass(w.category, TruncatedVideoWarning) and str(path) in str(w.message) for w in caught)


def _bad_inputs(tmp_path):
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video\n" * 50)
    empty_file = tmp_path / "empty.mp4"
    empty_file.write_bytes(b"")
    empty_dir = tmp_path / "no_frames"
    empty_dir.mkdir()
    nested = tmp_path / "phoenix_id"
    _write_folder(nested / "1", ["images0001.png"])
    corrupt = tmp_path / "corrupt_frames"
    _write_folder(corrupt, ["f1.png"])
    (corrupt / "f2.png").write_bytes(b"garbage")
    mixed = tmp_path / "mixed_sizes"
    _write_folder(mixed, ["f1.png"], size=(12, 16))
    _write_folder(mixed, ["f2.png"], size=(10, 16))
    return [
        (tmp_path / "missing.mp4", "no such file", tmp_path / "missing.mp4"),
        (text, "not a readable video", text),
        (empty_file, "empty file", empty_file),
        (empty_dir, "no .png/.jpg/.jpeg/.bmp/.webp frames", empty_dir),
        (nested, "sub-folders 1/", nested),
        (corrupt, "unreadable image", corrupt / "f2.png"),
        (mixed, "differs from the first frame", mixed / "f2.png"),
        (str(tmp_path / "nothing" / "*.png"), "no frame files match", tmp_path / "nothing" / "*.png"),
    ]


def test_bad_inputs_give_one_line_naming_the_path(tmp_path):
    for source, problem, named in _bad_inputs(tmp_path):
        with pytest.raises(VideoError) as err:
            read_frames(source)
        message = str(err.value)
        assert message.startswith(f"{named}: "), message
        assert problem in message and "\n" not in message, message
        assert err.value.path == str(named)


def test_resize_crop_keeps_the_centre_square():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :50] = (255, 0, 0)
    frame[:, 50:150] = (0, 255, 0)  # the centre square
    frame[:, 150:] = (0, 0, 255)
    out = resize_crop(np.stack([frame, frame]), 50)
    assert out.shape == (2, 50, 50, 3) and out.dtype == np.uint8
    assert (out == (0, 255, 0)).all()
    tall = resize_crop(frame.transpose(1, 0, 2)[None], 40)  # portrait: crop rows
    assert tall.shape == (1, 40, 40, 3) and (tall == (0, 255, 0)).all()
    up = resize_crop(np.stack([frame]), 150)  # enlarging uses linear interpolation
    assert up.shape == (1, 150, 150, 3) and (up == (0, 255, 0)).all()


def test_resize_crop_matches_resize_then_crop(shared_dir):
    frames, _ = read_frames(shared_dir / "clips" / "wlasl_68011_book.mp4", max_frames=3)  # 636x360
    out = resize_crop(frames, 112)
    # independent route: scale the short side to 112, then cut the centre 112 columns
    w = round(636 * 112 / 360)
    ref = np.stack([cv2.resize(f, (w, 112), interpolation=cv2.INTER_AREA) for f in frames])
    x0 = (w - 112) // 2
    ref = ref[:, :, x0:x0 + 112]
    assert out.shape == ref.shape
    assert np.abs(out.astype(np.int16) - ref.astype(np.int16)).mean() < 4.0
    with pytest.raises(ValueError, match="size"):
        resize_crop(frames, 0)
