"""The feature driver (`make features`) end to end on tiny generated corpora.

Videos are short mp4v clips of a textured square moving over a fixed noise background, with
pre-extracted keypoint files so MediaPipe is only needed where a test is about it (a blank
video with nobody in it, and ten frames of a real clip from ../shared when present).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess import cache
from preprocess.features import FeatureConfig, Result, main, select
from preprocess.pool import run_jobs
from preprocess.flow import FlowConfig, compute_flow, quantize_flow
from preprocess.manifest import Utterance
from preprocess.video import read_frames, resize_crop

ROOT = Path(__file__).resolve().parents[1]
RGB, FLOW = 24, 16  # small sizes keep every run well under a second per video
HEADER = "id|split|signer|glosses|video"


# ------------------------------------------------------------------------------------ fixtures


def moving_square(t: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 RGB [t, h, w, 3]: a checkered square moving right/down over fixed noise."""
    rng = np.random.default_rng(seed)
    out = np.repeat(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)[None], t, axis=0)
    checker = (np.kron(np.indices((4, 4)).sum(0) % 2, np.ones((3, 3))) * 255).astype(np.uint8)  # [12, 12]
    for i in range(t):
        y, x = 4 + i % (h - 16), 4 + (2 * i) % (w - 16)  # wraps around on long videos
        out[i, y:y + 12, x:x + 12] = checker[..., None]
    return out


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def keypoints_for(t: int, k: int = 543, seed: int = 0) -> np.ndarray:
    """float32 [t, k, 3] in [0, 1] with NaN for a missing left hand on every third frame."""
    kp = np.random.default_rng(seed).random((t, k, 3), dtype=np.float32)
    if k == 543:
        kp[::3, 501:522] = np.nan
    return kp


class Corpus:
    """A custom-layout corpus in a temp folder plus its dataset YAML."""

    def __init__(self, root: Path, features: dict | None = None):
        self.root = root / "corpus"
        (self.root / "videos").mkdir(parents=True)
        (self.root / "keypoints").mkdir()
        self.rows: list[str] = []
        self.kp: dict[str, np.ndarray] = {}
        self.yaml = root / "corpus.yaml"
        feats = features or {"rgb_size": RGB, "landmarks": "auto", "flow": {"method": "dis", "size": FLOW}}
        self.yaml.write_text(json.dumps({"name": "toy", "reader": "custom", "root": str(self.root),
                                         "features": feats}))  # JSON is YAML

    def add(self, utt_id: str, split: str = "train", t: int = 10, video: str | None = "mp4",
            keypoints: str | None = "npz", kp_frames: int | None = None, kp_points: int = 543,
            seed: int = 0) -> None:
        rel = ""
        if video == "mp4":
            rel = f"videos/{utt_id}.mp4"
            write_video(self.root / rel, moving_square(t, seed=seed))
        elif video is not None:  # a relative path that the test fills (or leaves missing)
            rel = video
        if keypoints:
            kp = keypoints_for(kp_frames or t, kp_points, seed)
            self.kp[utt_id] = kp
            if keypoints == "npz":
                np.savez(self.root / "keypoints" / f"{utt_id}.npz", keypoints=kp)
            else:
                np.save(self.root / "keypoints" / f"{utt_id}.npy", kp)
        self.rows.append(f"{utt_id}|{split}|s{seed % 2}|A B C|{rel}")
        (self.root / "corpus.csv").write_text("\n".join([HEADER, *self.rows]) + "\n")


def run(corpus: Corpus, cache_dir: Path, *extra: str) -> int:
    return main(["--dataset", str(corpus.yaml), "--cache", str(cache_dir), "--workers", "1", *extra])


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` (but the append-only failure log): mtime and bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "failures.jsonl"}


def contents(folder: Path) -> dict[str, bytes]:
    return {k: v for k, (_, v) in snapshot(folder).items()}


def failures(cache_dir: Path) -> dict[str, str]:
    path = cache_dir / "toy" / "failures.jsonl"
    if not path.is_file():
        return {}
    return {r["id"]: r["error"] for r in map(json.loads, path.read_text().splitlines())}


# ------------------------------------------------------------------------------------ tests


def test_feature_config_from_yaml_dict_and_overrides():
    cfg = FeatureConfig.from_dict({"rgb_size": 64, "flow": {"method": "farneback", "size": 32}},
                                  flow_size=24, landmarks="file")
    assert (cfg.rgb_size, cfg.landmarks, cfg.flow.method, cfg.flow.size) == (64, "file", "farneback", 24)
    assert FeatureConfig.from_dict({"flow": "none"}).flow.enabled is False
    with pytest.raises(ValueError, match="rgb_sise"):
        FeatureConfig.from_dict({"rgb_sise": 3})
    with pytest.raises(ValueError, match="landmarks"):
        FeatureConfig(landmarks="openpose")
    # the device does not change the stored bytes, so it must not change the hash
    assert FeatureConfig.from_dict({}, flow_device="cpu").hashed() == FeatureConfig().hashed()
    assert FeatureConfig(rgb_size=32).hashed() != FeatureConfig(rgb_size=48).hashed()


def test_select_shards_partition_the_manifest():
    utts = [Utterance(f"u{i}", "train" if i % 3 else "dev", "", [], None, 0) for i in range(10)]
    parts = [select(utts, None, None, (i, 3)) for i in range(3)]
    assert sorted(u.id for p in parts for u in p) == sorted(u.id for u in utts)
    assert [u.id for u in parts[1]] == ["u1", "u4", "u7"]
    assert [u.id for u in select(utts, ["dev"], 2, (0, 1))] == ["u0", "u3"]


def test_round_trip_rerun_skips_and_config_change_rebuilds(tmp_path, capsys):
    c = Corpus(tmp_path)
    c.add("a", "train", t=10, keypoints="npz", seed=1)
    c.add("b", "train", t=12, keypoints="npy", seed=2)
    c.add("c", "dev", t=8, keypoints="npz", seed=3)
    out = tmp_path / "cache"
    assert run(c, out) == 0
    assert "3 / 0 / 0" in capsys.readouterr().out

    meta = cache.read_meta(out, "toy")
    assert meta["keypoint_layout"] == "mediapipe_holistic_543" and meta["num_keypoints"] == 543
    assert meta["rgb_size"] == RGB and meta["flow"]["method"] == "dis" and meta["flow"]["size"] == FLOW
    assert meta["flow"]["scale"] == pytest.approx(FlowConfig().clip / 127)
    assert meta["versions"]["mediapipe"] == "0.10.21"
    assert (out / "toy" / "manifest.jsonl").is_file() and (out / "toy" / "vocab.json").is_file()

    fcfg = FlowConfig(method="dis", size=FLOW)
    for utt_id, split, t in (("a", "train", 10), ("b", "train", 12), ("c", "dev", 8)):
        path = cache.utt_path(out, "toy", split, utt_id)
        assert cache.is_valid(path, meta["config_hash"])
        arrays = cache.load_utt(path)
        frames, _ = read_frames(c.root / "videos" / f"{utt_id}.mp4")
        assert len(frames) == t
        assert arrays["rgb"].dtype == np.uint8 and arrays["rgb"].shape == (t, RGB, RGB, 3)
        np.testing.assert_array_equal(arrays["rgb"], resize_crop(frames, RGB))
        kp, kmask = arrays["keypoints"], arrays["keypoints_mask"]
        assert kp.dtype == np.float16 and kp.shape == (t, 543, 3)
        assert kmask.dtype == bool and kmask.shape == (t, 543)
        source = c.kp[utt_id]
        expected_mask = np.isfinite(source).all(-1)
        np.testing.assert_array_equal(kmask, expected_mask)
        assert not kmask[0, 501:522].any() and kmask[1, 501:522].all()
        np.testing.assert_allclose(kp[kmask].astype(np.float32), source[expected_mask], atol=5e-4, rtol=0)
        assert not kp[~kmask].any()  # missing points are stored as 0, never NaN
        flow = arrays["flow"]
        assert flow.dtype == np.int8 and flow.shape == (t, 2, FLOW, FLOW)
        assert not flow[-1].any() and flow[:-1].any()
        # flow is computed from the stored RGB crop (it is larger than the flow size)
        np.testing.assert_array_equal(flow, quantize_flow(compute_flow(arrays["rgb"], fcfg), fcfg))

    # a second run skips everything and writes nothing
    before = snapshot(out)
    assert run(c, out) == 0
    assert "all 3 videos already cached" in capsys.readouterr().out
    assert snapshot(out) == before

    # a different rgb_size makes every file stale: all rebuilt, with the new size
    assert run(c, out, "--rgb-size", "16") == 0
    assert "3 / 0 / 0" in capsys.readouterr().out
    meta2 = cache.read_meta(out, "toy")
    assert meta2["config_hash"] != meta["config_hash"] and meta2["rgb_size"] == 16
    for utt_id, split in (("a", "train"), ("c", "dev")):
        path = cache.utt_path(out, "toy", split, utt_id)
        assert cache.is_valid(path, meta2["config_hash"])
        assert cache.load_utt(path, ("rgb",))["rgb"].shape[1:] == (16, 16, 3)


def test_shards_together_equal_a_full_run(tmp_path, capsys):
    c = Corpus(tmp_path)
    for i in range(5):
        c.add(f"u{i}", "train" if i < 3 else "test", t=6 + i, seed=i)
    sharded, full = tmp_path / "sharded", tmp_path / "full"
    assert run(c, sharded, "--shard", "0/2") == 0
    assert "3 / 0 / 0" in capsys.readouterr().out  # utterances 0, 2, 4
    assert main(["--dataset", str(c.yaml), "--cache", str(sharded), "--workers", "2", "--shard", "1/2"]) == 0
    assert "2 / 0 / 0" in capsys.readouterr().out  # utterances 1, 3, in a process pool
    assert run(c, full) == 0
    assert contents(sharded) == contents(full)
    assert len([p for p in contents(full) if p.endswith(".npz")]) == 5


def test_resume_after_kill_gives_identical_files(tmp_path):
    # TV-L1 (~20 ms a frame pair even at 16x16): slow enough that the kill lands mid-run
    c = Corpus(tmp_path, {"rgb_size": RGB, "flow": {"method": "tvl1", "size": 16}})
    for i in range(8):
        c.add(f"v{i}", t=10, seed=i)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "preprocess.features", "--dataset", str(c.yaml), "--cache", str(killed),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(killed.glob("toy/train/*.npz")):
            assert proc.poll() is None, "the run ended before any file appeared"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 1 <= len(list(killed.glob("toy/train/*.npz"))) < 8  # really interrupted mid-run
    # what a kill during a write leaves behind: the resumed run must clear it
    (killed / "toy" / "train" / ".v7.k1ll3d_x.npz.tmp").write_bytes(b"half a zip")
    assert main(cmd[3:]) == 0  # resume: the remaining files are built
    assert main([*cmd[3:5], "--cache", str(clean), "--workers", "1"]) == 0
    assert contents(killed) == contents(clean)  # same files, same bytes, no temp debris


def test_bad_inputs_are_reported_and_the_run_carries_on(tmp_path, capsys, request):
    c = Corpus(tmp_path)
    c.add("good1", t=8, seed=1)
    c.add("good2", "dev", t=9, seed=2)
    garbage = c.root / "videos" / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    c.add("garbage", video="videos/garbage.mp4", keypoints=None)
    data = write_video(c.root / "videos" / "full.mp4", moving_square(30)).read_bytes()
    (c.root / "videos" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    c.add("truncated", video="videos/truncated.mp4", t=30)
    (c.root / "videos" / "empty").mkdir()
    c.add("empty_folder", video="videos/empty")
    c.add("missing", video="videos/missing.mp4")
    c.add("kp_2d", t=8)
    np.save(c.root / "keypoints" / "kp_2d.npy", np.zeros((8, 543 * 3), np.float32))
    (c.root / "keypoints" / "kp_2d.npz").unlink()
    c.add("kp_50_points", t=8, kp_points=50)
    c.add("kp_too_long", t=10, kp_frames=13)
    write_video(c.root / "videos" / "blank.mp4", np.zeros((10, 96, 96, 3), np.uint8))
    c.add("nobody", video="videos/blank.mp4", keypoints=None)
    real = None
    try:  # ten real frames through MediaPipe when ../shared is there
        shared = request.getfixturevalue("shared_dir")
    except pytest.skip.Exception:
        shared = None
    if shared is not None:
        frames, fps = read_frames(shared / "clips" / "wlasl_68011_book.mp4", max_frames=10)
        write_video(c.root / "videos" / "real.mp4", frames, fps)
        c.add("real", video="videos/real.mp4", keypoints=None)
        real = frames
    out = tmp_path / "cache"

    # the good files exist before the bad run; the bad run must not touch them
    assert run(c, out, "--limit", "2") == 0
    good_before = snapshot(out / "toy" / "train") | snapshot(out / "toy" / "dev")
    capsys.readouterr()
    assert run(c, out) == 1  # some utterances failed: the stage fails (the good files are kept)
    printed = capsys.readouterr().out
    bad = {
        "garbage": "garbage.mp4", "truncated": "truncated.mp4", "empty_folder": "videos/empty",
        "missing": "missing.mp4", "kp_2d": "kp_2d.npy", "kp_50_points": "kp_50_points.npz",
        "kp_too_long": "kp_too_long.npz", "nobody": "blank.mp4",
    }
    logged = failures(out)
    assert set(logged) == set(bad)
    for utt_id, file_name in bad.items():
        line = next(ln for ln in printed.splitlines() if ln.startswith(f"FAILED {utt_id}: "))
        assert file_name in line and file_name in logged[utt_id]
        assert not cache.utt_path(out, "toy", "train", utt_id).exists()
    assert "not found" in logged["missing"]
    assert "13 keypoint frames" in logged["kp_too_long"] and "10 frames" in logged["kp_too_long"]
    assert "50" in logged["kp_50_points"] and "543" in logged["kp_50_points"]
    assert "no person" in logged["nobody"]
    assert "no .png/.jpg" in logged["empty_folder"] or "no frames" in logged["empty_folder"]
    assert f"{int(real is not None)} / 2 / {len(bad)}" in printed, printed  # done / skipped / failed
    assert (snapshot(out / "toy" / "train") | snapshot(out / "toy" / "dev")).items() >= good_before.items()
    if real is not None:
        arrays = cache.load_utt(cache.utt_path(out, "toy", "train", "real"))
        assert arrays["keypoints"].shape == (10, 543, 3) and arrays["rgb"].shape == (10, RGB, RGB, 3)
        pose_found = arrays["keypoints_mask"][:, :33].any(axis=1)
        assert pose_found.mean() >= 0.9  # the signer is found on (nearly) every frame
        assert "over 1" in printed  # one MediaPipe video in the hand-detection rate


def test_keypoint_only_corpus_stores_only_keypoints(tmp_path, capsys):
    c = Corpus(tmp_path)
    c.add("k1", video=None, keypoints="npy", t=7, kp_points=50, seed=1)
    c.add("k2", "test", video=None, keypoints="npz", t=5, kp_points=50, seed=2)
    out = tmp_path / "cache"
    assert run(c, out) == 0
    meta = cache.read_meta(out, "toy")
    assert meta["keypoint_only"] is True and meta["streams"] == ["keypoints", "keypoints_mask"]
    assert meta["keypoint_layout"] == "custom_50" and meta["rgb_size"] == 0 and meta["flow"] is None
    arrays = cache.load_utt(cache.utt_path(out, "toy", "test", "k2"))
    assert set(arrays) == {"keypoints", "keypoints_mask"} and arrays["keypoints"].shape == (5, 50, 3)
    np.testing.assert_allclose(arrays["keypoints"].astype(np.float32), c.kp["k2"], atol=5e-4, rtol=0)


def test_exit_codes_for_total_failure_and_config_errors(tmp_path, capsys):
    c = Corpus(tmp_path)
    c.add("lost", video="videos/lost.mp4", keypoints=None)
    out = tmp_path / "cache"
    assert run(c, out) == 1  # everything failed
    assert "FAILED lost: " in capsys.readouterr().out
    assert run(c, out, "--shard", "2/2") == 2
    assert "--shard" in capsys.readouterr().err
    (c.root / "corpus.csv").write_text(HEADER + "\n")  # empty manifest
    assert run(c, out) == 2
    assert "no utterances" in capsys.readouterr().err
    c.yaml.write_text(json.dumps({"reader": "custom", "root": str(c.root), "features": {"rgb": 3}}))
    assert run(c, out) == 2
    assert "rgb" in capsys.readouterr().err


def _crash_on_odd(job: int) -> Result:
    """Pool job for the crash test: odd jobs kill their worker process outright."""
    if job % 2:
        os._exit(3)
    return Result(str(job), "train", True, frames=job)


def test_worker_crash_fails_only_the_crashing_jobs():
    results: list[Result] = []
    run_jobs(list(range(6)), _crash_on_odd, 2, int, (), results.append,
             lambda job, msg: Result(str(job), "train", False, msg))
    by_id = {r.id: r for r in results}
    assert sorted(by_id) == [str(i) for i in range(6)]
    assert all(by_id[str(i)].ok for i in (0, 2, 4))
    assert all(not by_id[str(i)].ok and "worker process died" in by_id[str(i)].message for i in (1, 3, 5))


def test_in_process_run_sets_up_once_and_releases_even_on_a_bug():
    calls: list[str] = []
    results: list[Result] = []
    hooks = dict(initializer=lambda tag: calls.append(tag), initargs=("init",), on_result=results.append,
                 crash_result=lambda job, msg: Result(str(job), "train", False, msg),
                 finalizer=lambda: calls.append("release"))
    finish = lambda job: Result(str(job), "train", True, frames=job)  # noqa: E731
    run_jobs([1, 2, 3], finish, 1, stages=(lambda job: job, finish), **hooks)
    assert calls == ["init", "release"] and [(r.id, r.frames) for r in results] == [("1", 1), ("2", 2), ("3", 3)]

    def buggy(job: int) -> Result:
        raise RuntimeError(f"bug on {job}")

    calls.clear()
    with pytest.raises(RuntimeError, match="bug on 1"):  # in-process, a bug keeps its traceback
        run_jobs([1, 2], buggy, 1, **hooks)
    assert calls == ["init", "release"]


def test_fast_validity_check_agrees_with_the_cache_contract(tmp_path):
    from preprocess.features.driver import _hash_member, _is_valid

    arrays = {"keypoints": np.zeros((3, 5, 3), np.float16), "keypoints_mask": np.ones((3, 5), bool)}
    good = tmp_path / "good.npz"
    cache.write_npz_atomic(good, arrays, "a" * 16)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a torn copy
    for path, chash in ((good, "a" * 16), (good, "b" * 16), (garbage, "a" * 16), (tmp_path / "none.npz", "a" * 16)):
        assert _is_valid(path, chash, _hash_member(chash)) == cache.is_valid(path, chash)
    assert _is_valid(good, "a" * 16, _hash_member("a" * 16))
