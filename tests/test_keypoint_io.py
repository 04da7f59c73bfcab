"""Keypoint files: .npy/.npz/.pose reading, every bad-input error, .pose round trips and export."""
from __future__ import annotations

import json

import numpy as np
import pytest

from preprocess.cache import utt_path, write_meta, write_npz_atomic
from preprocess.keypoint_io import (
    KeypointFileError,
    keypoint_fps,
    keypoint_num_frames,
    load_keypoints,
    main,
    save_pose,
)
from preprocess.layouts import HOLISTIC_543, LEFT_HAND, RIGHT_HAND
from preprocess.manifest import Utterance, write_manifest


def _random_points(t: int, k: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.05, 0.95, (t, k, c)).astype(np.float32)


# ------------------------------------------------------------------------------------ arrays


@pytest.mark.parametrize("c", [2, 3, 4])
def test_npy_channels(tmp_path, c):
    arr = _random_points(5, 7, c)
    path = tmp_path / "a.npy"
    np.save(path, arr)
    kp, mask, layout = load_keypoints(path)
    assert kp.shape == (5, 7, 3) and kp.dtype == np.float32
    assert mask.shape == (5, 7) and mask.dtype == bool and mask.all()
    assert layout == "custom_7"
    np.testing.assert_array_equal(kp[..., : min(c, 3)], arr[..., :3])
    if c == 2:
        assert (kp[..., 2] == 0).all()


def test_npy_nan_marks_missing(tmp_path):
    arr = _random_points(4, 543, 3)
    arr[1, 501:522] = np.nan  # left hand lost on frame 1
    arr[2, 0, 0] = np.nan  # a single coordinate is enough to drop a point
    path = tmp_path / "holistic.npy"
    np.save(path, arr.astype(np.float16))
    kp, mask, layout = load_keypoints(path)
    assert layout == HOLISTIC_543
    expected = ~np.isnan(arr).any(-1)
    np.testing.assert_array_equal(mask, expected)
    assert (kp[~expected] == 0).all() and np.isfinite(kp).all()
    np.testing.assert_allclose(kp[expected], arr[expected], atol=1e-3)  # float16 storage


def test_npz_mask_and_layout(tmp_path):
    arr = _random_points(6, 92, 3)
    mask = np.ones((6, 92), bool)
    mask[3, 50:71] = False
    path = tmp_path / "k.npz"
    np.savez(path, keypoints=arr, mask=mask, layout=np.array("mediapipe_92"))
    kp, valid, layout = load_keypoints(path)
    np.testing.assert_array_equal(valid, mask)
    assert (kp[~mask] == 0).all()
    np.testing.assert_array_equal(kp[mask], arr[mask])
    assert layout == "mediapipe_92"
    # the cache's own array names are accepted too; a layout that contradicts K is ignored
    np.savez(path, keypoints=arr, keypoints_mask=mask, layout=np.array(HOLISTIC_543))
    kp2, valid2, layout2 = load_keypoints(path)
    np.testing.assert_array_equal(valid2, mask)
    assert layout2 == "custom_92"


@pytest.mark.parametrize(
    "name, write, problem",
    [
        ("2d.npy", lambda p: np.save(p, np.zeros((10, 3), np.float32)), "must be [T, K, C]"),
        ("4d.npy", lambda p: np.save(p, np.zeros((2, 10, 3, 1), np.float32)), "must be [T, K, C]"),
        ("c5.npy", lambda p: np.save(p, np.zeros((2, 10, 5), np.float32)), "C=5"),
        ("c1.npy", lambda p: np.save(p, np.zeros((2, 10, 1), np.float32)), "C=1"),
        ("empty.npy", lambda p: np.save(p, np.zeros((0, 10, 3), np.float32)), "no frames"),
        ("text.npy", lambda p: np.save(p, np.array([[["a", "b", "c"]]])), "must be numbers"),
        ("garbage.npy", lambda p: p.write_bytes(b"this is not numpy"), "unreadable"),
        ("truncated.npy", lambda p: p.write_bytes(_npy_bytes()[:100]), "unreadable"),
        ("garbage.npz", lambda p: p.write_bytes(b"PK\x03\x04 broken zip"), "unreadable"),
        ("plain.npz", lambda p: p.write_bytes(_npy_bytes()), "plain .npy array"),
        ("nokp.npz", lambda p: np.savez(p, points=np.zeros((2, 3, 3))), "no 'keypoints'"),
        ("badmask.npz", lambda p: np.savez(p, keypoints=np.zeros((2, 3, 3)), mask=np.ones((2, 4), bool)),
         "mask must be [T, K]"),
        ("garbage.pose", lambda p: p.write_bytes(b"\x00\x01garbage"), "unreadable .pose"),
        ("kp.txt", lambda p: p.write_text("1 2 3"), "unsupported keypoint file type"),
    ],
)
def test_bad_files_raise_one_line(tmp_path, name, write, problem):
    path = tmp_path / name
    write(path)
    with pytest.raises(KeypointFileError) as err:
        load_keypoints(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and problem in msg and "\n" not in msg


def _npy_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((50, 543, 3), np.float32))
    return buf.getvalue()


def test_missing_file(tmp_path):
    with pytest.raises(KeypointFileError, match="not found"):
        load_keypoints(tmp_path / "nope.npz")


def test_truncated_pose_file(tmp_path, shared_dir):
    data = (shared_dir / "poses" / "football.pose").read_bytes()
    path = tmp_path / "cut.pose"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(KeypointFileError, match="unreadable .pose"):
        load_keypoints(path)


# ------------------------------------------------------------------------------------ .pose


def test_real_football_pose(shared_dir):
    from pose_format import Pose

    path = shared_dir / "poses" / "football.pose"
    kp, mask, layout = load_keypoints(path)
    assert kp.shape == (62, 543, 3) and mask.shape == (62, 543) and layout == HOLISTIC_543
    # independent check against the library's own arrays (576 points: world landmarks dropped)
    raw = Pose.read(path.read_bytes())
    w, h = raw.header.dimensions.width, raw.header.dimensions.height
    data = np.ma.getdata(raw.body.data)[:, 0]
    present = ~np.ma.getmaskarray(raw.body.data)[:, 0].any(-1)
    assert data.shape == (62, 576, 3)
    np.testing.assert_array_equal(mask, present[:, :543])
    np.testing.assert_allclose(kp[mask][:, 0], data[:, :543][mask][:, 0] / w, rtol=1e-6)
    np.testing.assert_allclose(kp[mask][:, 1], data[:, :543][mask][:, 1] / h, rtol=1e-6)
    # sensible values: the body is found on every frame, the face sits inside the frame
    assert mask[:, :33].all()
    face = kp[:, 33:501][mask[:, 33:501]]
    assert (face[:, :2] > 0).all() and (face[:, :2] < 1).all()
    hands = mask[:, LEFT_HAND[0]:RIGHT_HAND[1]]
    assert hands.mean() > 0.5
    assert keypoint_num_frames(path) == 62
    assert keypoint_fps(path) == pytest.approx(29.97, abs=1e-3)


def test_real_pose_with_extra_dimension(shared_dir):
    path = shared_dir / "poses" / "autsl_signer0_sample1000.pose"  # XYZKC: 4 dims per point
    kp, mask, layout = load_keypoints(path)
    assert kp.shape == (43, 543, 3) and layout == HOLISTIC_543
    assert mask[:, :33].mean() > 0.9
    xy = kp[mask][:, :2]
    assert np.median(xy) > 0.2 and np.median(xy) < 0.8


def test_pose_components_are_reordered(tmp_path):
    """A holistic file whose components come in another order still yields pose/face/left/right."""
    from pose_format import Pose
    from pose_format.numpy.pose_body import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions

    sizes = {"RIGHT_HAND_LANDMARKS": 21, "POSE_WORLD_LANDMARKS": 33, "FACE_LANDMARKS": 468,
             "POSE_LANDMARKS": 33, "LEFT_HAND_LANDMARKS": 21}
    comps = [PoseHeaderComponent(n, [str(i) for i in range(s)], [], [], "XYZC") for n, s in sizes.items()]
    # x of every point encodes (component number, point index) so the order can be checked
    codes = np.concatenate([np.full(s, i) * 1000 + np.arange(s) for i, s in enumerate(sizes.values())])
    data = np.zeros((3, 1, len(codes), 3), np.float32)
    data[..., 0] = codes
    data[..., 1] = 50.0
    header = PoseHeader(0.2, PoseHeaderDimensions(10000, 100, 0), comps)
    body = NumPyPoseBody(fps=25, data=data, confidence=np.ones((3, 1, len(codes)), np.float32))
    path = tmp_path / "shuffled.pose"
    with open(path, "wb") as f:
        Pose(header, body).write(f)
    kp, mask, layout = load_keypoints(path)
    assert layout == HOLISTIC_543 and mask.all()
    got = np.rint(kp[0, :, 0] * 10000).astype(int)
    expected = np.concatenate([3000 + np.arange(33), 2000 + np.arange(468), 4000 + np.arange(21), np.arange(21)])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(kp[..., 1], 0.5)


@pytest.mark.parametrize("layout, k", [(HOLISTIC_543, 543), ("mediapipe_92", 92), ("custom_17", 17)])
def test_save_pose_round_trip(tmp_path, layout, k):
    kp = _random_points(9, k, 3, seed=k).astype(np.float16)
    mask = np.random.default_rng(k).random((9, k)) > 0.2
    kp[~mask] = 0
    path = tmp_path / f"{layout}.pose"
    save_pose(path, kp, mask, layout, fps=24.0, width=210, height=260)
    back, back_mask, back_layout = load_keypoints(path)
    assert back_layout == layout
    np.testing.assert_array_equal(back_mask, mask)
    np.testing.assert_allclose(back, kp.astype(np.float32), atol=1e-6)
    assert keypoint_num_frames(path) == 9
    assert keypoint_fps(path) == 24.0


def test_save_pose_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="needs 543 points"):
        save_pose(tmp_path / "a.pose", np.zeros((2, 10, 3)), np.ones((2, 10), bool), HOLISTIC_543, 25, 100, 100)
    with pytest.raises(ValueError, match="mask must be"):
        save_pose(tmp_path / "a.pose", np.zeros((2, 10, 3)), np.ones((2, 9), bool), "custom_10", 25, 100, 100)
    assert not list(tmp_path.iterdir())


def test_num_frames_of_arrays(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((13, 5, 2), np.float32))
    np.savez(tmp_path / "b.npz", keypoints=np.zeros((21, 5, 3), np.float16))
    assert keypoint_num_frames(tmp_path / "a.npy") == 13
    assert keypoint_num_frames(tmp_path / "b.npz") == 21
    assert keypoint_fps(tmp_path / "a.npy") is None


# ------------------------------------------------------------------------------------ export CLI


def test_to_pose_cli(tmp_path):
    cache = tmp_path / "cache"
    arrays = {}
    for i in range(2):
        kp = _random_points(5 + i, 543, 3, seed=i).astype(np.float16)
        mask = np.ones((5 + i, 543), bool)
        mask[:, 501:522] = i == 0
        arrays[f"u{i}"] = (kp, mask)
        write_npz_atomic(utt_path(cache, "toy", "dev", f"u{i}"), {"keypoints": kp, "keypoints_mask": mask}, "h")
    write_npz_atomic(utt_path(cache, "toy", "dev", "rgb_only"), {"rgb": np.zeros((2, 4, 4, 3), np.uint8)}, "h")
    write_meta(cache, "toy", {"keypoint_layout": HOLISTIC_543})
    write_manifest(cache / "toy" / "manifest.jsonl",
                   [Utterance(f"u{i}", "dev", "s", ["A"], None, 5 + i, fps=20.0 + i) for i in range(2)])
    out = tmp_path / "poses"
    rc = main(["to-pose", "--cache", str(cache), "--dataset", "toy", "--split", "dev", "--out", str(out),
               "--width", "320", "--height", "240"])
    assert rc == 1  # the rgb-only file is reported, the others are written
    assert sorted(p.name for p in out.iterdir()) == ["u0.pose", "u1.pose"]
    for uid, (kp, mask) in arrays.items():
        back, back_mask, layout = load_keypoints(out / f"{uid}.pose")
        assert layout == HOLISTIC_543
        np.testing.assert_array_equal(back_mask, mask)
        np.testing.assert_allclose(back, np.where(mask[..., None], kp.astype(np.float32), 0), atol=1e-6)
        assert keypoint_fps(out / f"{uid}.pose") == 20.0 + int(uid[1])


def test_to_pose_cli_without_landmarks(tmp_path, capsys):
    write_meta(tmp_path, "toy", {"rgb_size": 64})
    rc = main(["to-pose", "--cache", str(tmp_path), "--dataset", "toy", "--split", "dev", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no keypoint_layout" in capsys.readouterr().err
    assert json.loads((tmp_path / "toy" / "meta.json").read_text())["rgb_size"] == 64
