"""Teacher-output cache: round trip against the teacher itself, staleness, reduction, time alignment."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.teacher_cache import (StaleTeacherCache, StudentDataset, TeacherCache, align_to_student,
                                   prepare_teacher_cache, projection, rescale_index, student_collate,
                                   teacher_fingerprint)
from models.augment import LandmarkAugmentConfig
from models.build import ModelConfig, build_model
from models.checkpoint import load_checkpoint, save_checkpoint
from models.data import AugmentConfig, CacheDataset, collate, meta_config
from preprocess import cache as cache_lib
from test_data import DATASET, make_tiny_cache

TINY = {"keypoint_dim": 16, "hidden": 16, "lstm_layers": 1, "dropout": 0.0, "tiny_channels": 4,
        "flow_channels": 4, "rgb_backbone": "tiny"}
CROP = 12


def make_teacher(path: Path, cache: Path, streams=("rgb", "keypoints", "flow"), fusion="attention",
                 seed: int = 0, vocab: list[str] | None = None) -> Path:
    """A random-weight teacher checkpoint in the format models.train writes (no training needed)."""
    ds = CacheDataset(cache, DATASET, "train", streams, augment=None, crop_size=CROP)
    cfg = ModelConfig(streams=tuple(streams), fusion=fusion, **TINY)
    torch.manual_seed(seed)
    model = build_model(cfg, len(ds.vocab), ds.spec())
    save_checkpoint(path, {
        "model_config": cfg.to_dict(), "input_spec": asdict(ds.spec()), "vocab": vocab or list(ds.vocab.tokens),
        "cache": {"dataset": DATASET, "config": meta_config(ds.meta), "config_hash": ds.meta.get("config_hash")},
        "streams": list(streams), "crop_size": CROP, "model": model.state_dict(), "epoch": 1,
    })
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def teacher(cache, tmp_path_factory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "best.pt", cache)


def test_round_trip_matches_the_teacher_on_each_clip(cache, teacher, tmp_path):
    out = tmp_path / "teacher_outputs" / "train"
    tc = prepare_teacher_cache(teacher, cache, DATASET, "train", out, features=("frame", "temporal", "context"))
    assert tc.rates == {"logits": "step", "frame": "frame", "temporal": "step", "context": "step"}
    index = json.loads((out / "index.json").read_text())
    assert index["teacher_fingerprint"] == teacher_fingerprint(load_checkpoint(teacher))
    assert index["features"]["frame"]["dim"] == 32 + 16 + 16  # tiny rgb (8 * 4) + keypoints (16) + flow (4 * 4)

    # independent computation: the teacher alone on each un-augmented, center-cropped clip
    from models.checkpoint import load_model

    model, _ = load_model(teacher)
    ds = CacheDataset(cache, DATASET, "train", ("rgb", "keypoints", "flow"), augment=None, crop_size=CROP)
    for i in (0, 3):
        inputs, lengths, *_ = collate([ds[i]])
        with torch.no_grad():
            ref = model(inputs, lengths)
        got = tc.load(ds.utts[i].id)
        t = int(lengths[0])
        assert got["logits"].shape == (t // 4, len(ds.vocab)) and got["frame"].shape == (t, 64)
        np.testing.assert_allclose(got["logits"], ref.main.log_softmax(-1)[0].numpy(), atol=2e-2, rtol=1e-2)
        np.testing.assert_allclose(got["frame"], ref.features["frame"][0].numpy(), atol=2e-2, rtol=1e-2)
        np.testing.assert_allclose(got["context"], ref.features["context"][0].numpy(), atol=2e-2, rtol=1e-2)
        assert np.exp(got["logits"]).sum(-1) == pytest.approx(1.0, abs=2e-2)

    # a second call reuses the files as they are
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    prepare_teacher_cache(teacher, cache, DATASET, "train", out, features=("frame", "temporal", "context"))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")} == before


def test_stale_cache_is_refused_then_rebuilt(cache, tmp_path):
    teacher = make_teacher(tmp_path / "t" / "best.pt", cache, streams=("keypoints",), fusion="none")
    out = tmp_path / "outputs"
    prepare_teacher_cache(teacher, cache, DATASET, "train", out, features=("frame",))
    # same weights saved again with other bookkeeping: not a change
    ck = load_checkpoint(teacher)
    save_checkpoint(teacher, {**ck.raw, "epoch": 7})
    prepare_teacher_cache(teacher, cache, DATASET, "train", out, features=("frame",))
    # other features requested (the recipe changed): stale
    with pytest.raises(StaleTeacherCache, match="features changed"):
        prepare_teacher_cache(teacher, cache, DATASET, "train", out, features=("frame", "context"))
    # new weights: refused with one line naming the fix
    make_teacher(teacher, cache, streams=("keypoints",), fusion="none", seed=1)
    with pytest.raises(StaleTeacherCache) as e:
        prepare_teacher_cache(teacher, cache, DATASET, "train", out, features=("frame",))
    msg = str(e.value)
    assert "\n" not in msg and "teacher changed" in msg and "--rebuild-teacher-cache" in msg
    tc = prepare_teacher_cache(teacher, cache, DATASET, "train", out, features=("frame",), rebuild=True)
    assert tc.index["teacher_fingerprint"] == teacher_fingerprint(load_checkpoint(teacher))
    uid = next(iter(tc.index["utts"]))
    assert tc.load(uid)["frame"].shape[1] == 16
    # a file from an older build cannot be read by the new index
    other = TeacherCache(out)
    other.fingerprint = "something-else"
    with pytest.raises(StaleTeacherCache):
        other.load(uid)


def test_wide_features_are_reduced_by_a_fixed_projection(cache, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", cache, streams=("keypoints",), fusion="none")
    full = prepare_teacher_cache(teacher, cache, DATASET, "train", tmp_path / "full", features=("context",))
    small = prepare_teacher_cache(teacher, cache, DATASET, "train", tmp_path / "small", features=("context",),
                                  reduce_dim=4)
    assert small.dims == {"context": 4} and small.index["features"]["context"]["source_dim"] == 16
    uid = next(iter(full.index["utts"]))
    want = full.load(uid)["context"] @ projection("context", 16, 4)
    np.testing.assert_allclose(small.load(uid)["context"], want, atol=3e-2, rtol=2e-2)


# ------------------------------------------------------------------------- time alignment


def _ramp_cache(root: Path) -> Path:
    """The tiny cache with keypoint 0's x equal to frame / 100 in every clip (a clock the student sees)."""
    make_tiny_cache(root)
    meta = cache_lib.read_meta(root, DATASET)
    for path in (root / DATASET / "train").glob("*.npz"):
        arr = cache_lib.load_utt(path)
        t = len(arr["keypoints"])
        arr["keypoints"][:, 0, 0] = np.arange(t) / 100
        arr["keypoints_mask"][:, 0] = True
        cache_lib.write_npz_atomic(path, arr, meta["config_hash"])
    return root


def _clock_teacher(root: Path, ds: CacheDataset) -> TeacherCache:
    """A hand-written teacher cache whose outputs are clocks: frame-rate t, step-rate 4k + 1.5 (window centre)."""
    d = root / "clock"
    index = {"format": 2, "teacher_path": "clock", "teacher_fingerprint": "t", "data_fingerprint": "d", "data": {},
             "level": "main", "vocab_size": 1, "utts": {},
             "features": {"frame": {"rate": "frame", "dim": 1}, "temporal": {"rate": "step", "dim": 1}}}
    for u, t in zip(ds.utts, ds.lengths):
        steps = np.arange(max(1, t // 4)) * 4 + 1.5
        cache_lib.write_npz_atomic(d / f"{u.id}.npz", {
            "logits": steps[:, None].astype(np.float16), "temporal": steps[:, None].astype(np.float16),
            "frame": np.arange(t, dtype=np.float16)[:, None], "correct": np.array(True)}, "t-d")
        index["utts"][u.id] = t
    (d / "index.json").write_text(json.dumps(index))
    return TeacherCache(d)


def test_rescale_replica_and_alignment_follow_the_students_frames(tmp_path):
    cache = _ramp_cache(tmp_path / "c")
    aug = AugmentConfig(crop_size=0, flip_prob=0.0, time_scale=0.4)
    base = CacheDataset(cache, DATASET, "train", ("keypoints",), aug, seed=3)
    clock = _clock_teacher(tmp_path, base)
    data = StudentDataset(base, clock)
    rescaled = 0
    for epoch in range(3):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            seen = item["inputs"]["keypoints"][:, 0, 0].numpy() * 100  # source frame of each student frame
            idx = rescale_index(base.lengths[i], len(base.targets[i]), aug, 3, epoch, i)
            np.testing.assert_allclose(seen, idx, atol=0.05)  # the replica is the dataset's own rescale
            rescaled += len(idx) != base.lengths[i]
            teach = item["teacher"]
            np.testing.assert_allclose(teach["frame"][:, 0].numpy(), seen, atol=0.05)
            # step i covers the student's frames 4i..4i+3: its teacher time is their mean source frame
            steps = len(seen) // 4
            assert teach["temporal"].shape == (max(1, steps), 1)
            want = seen[: steps * 4].reshape(steps, 4).mean(1)
            last = (base.lengths[i] // 4 - 1) * 4 + 1.5  # the teacher has no step beyond its last window
            np.testing.assert_allclose(teach["temporal"][:steps, 0].numpy(), np.clip(want, 1.5, last), atol=0.6)
    assert rescaled > 5  # the check above really saw rescaled clips

    # collate pads frame-rate arrays to T and step-rate ones to T // 4, like the student's outputs
    inputs, lengths, _, _, _, teacher, _ = student_collate([data[0], data[1], data[2]])
    assert teacher["frame"].shape == (3, int(lengths.max()), 1)
    assert teacher["temporal"].shape == (3, int(lengths.max()) // 4, 1)
    assert teacher["out_lengths"].tolist() == (lengths // 4).clamp(min=1).tolist()


def test_landmark_time_warp_moves_the_teacher_with_the_clip(tmp_path):
    cache = _ramp_cache(tmp_path / "c")
    aug = AugmentConfig(crop_size=0, flip_prob=0.0, time_scale=0.2)
    base = CacheDataset(cache, DATASET, "train", ("keypoints",), aug, seed=0)
    lm = LandmarkAugmentConfig(swap_prob=0.0, affine_prob=0.0, time_warp_prob=1.0, time_warp=0.3,
                               time_mask_prob=0.0, point_drop=0.0)
    data = StudentDataset(base, _clock_teacher(tmp_path, base), lm)
    warped = 0
    for i in range(len(data)):
        item = data[i]
        seen = item["inputs"]["keypoints"][:, 0, 0].numpy() * 100  # interpolated clock after the warp
        warped += not np.allclose(seen, np.round(seen), atol=1e-3)
        np.testing.assert_allclose(item["teacher"]["frame"][:, 0].numpy(), seen, atol=0.05)
    assert warped > 3


def test_align_is_identity_without_augmentation():
    rng = np.random.default_rng(0)
    frame, step = rng.normal(size=(21, 3)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    out = align_to_student({"f": frame, "s": step}, {"f": "frame", "s": "step"}, np.arange(21, dtype=np.float64))
    np.testing.assert_allclose(out["f"], frame, atol=1e-6)
    np.testing.assert_allclose(out["s"], step, atol=1e-6)
