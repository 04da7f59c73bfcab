"""A teacher run inside the training loop (``teacher.online``): same outputs as the cache on clean
clips, distillation end to end without a teacher cache, and a refusal for a teacher of other inputs."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill import train as dt
from distill.recipes import load_recipe
from distill.teacher_cache import StudentDataset, prepare_teacher_cache, student_collate
from models.checkpoint import load_checkpoint, load_model
from models.augment import LandmarkAugment
from models.data import CacheDataset
from test_data import DATASET, make_tiny_cache
from test_distill_train import tiny_recipe
from test_teacher_cache import make_teacher


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache"), n_train=6, n_dev=2)


@pytest.fixture(scope="module")
def twin(cache, tmp_path_factory) -> Path:
    """A CTC-only landmark student: a teacher that reads exactly its student's inputs."""
    tmp = tmp_path_factory.mktemp("twin")
    recipe = tiny_recipe("keypoints_small", tmp, cache)
    assert dt.main(["--recipe", str(recipe), "--no-kd", "--out", str(tmp / "run"), "--device", "cpu"]) == 0
    return tmp / "run" / "best.pt"


def online_recipe(tmp: Path, cache: Path) -> Path:
    path = tiny_recipe("keypoints_small", tmp, cache)
    raw = yaml.safe_load(path.read_text())
    raw["teacher"]["online"] = True
    path.write_text(yaml.safe_dump(raw))
    return path


def test_online_outputs_equal_the_cached_ones_on_clean_clips(cache, twin, tmp_path):
    recipe = load_recipe(online_recipe(tmp_path, cache))
    teacher, _ = load_model(twin)
    cached = prepare_teacher_cache(twin, cache, DATASET, "train", tmp_path / "to")
    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), augment=None)
    batch = student_collate([StudentDataset(ds, cached)[i] for i in range(4)])
    live = dt.online_teacher_outputs(teacher.eval(), recipe, batch[0], batch[1])
    steps = batch[5]["out_lengths"]
    assert live["logits"].shape == batch[5]["logits"].shape
    for j, n in enumerate(steps.tolist()):  # cache: float16 log-probabilities
        torch.testing.assert_close(live["logits"][j, :n], batch[5]["logits"][j, :n], atol=2e-2, rtol=1e-2)
    assert torch.allclose(live["logits"].exp().sum(-1), torch.ones(live["logits"].shape[:2]), atol=1e-4)


def test_online_distillation_needs_no_teacher_cache(cache, twin, tmp_path):
    out = tmp_path / "run"
    assert dt.main(["--recipe", str(online_recipe(tmp_path, cache)), "--teacher", str(twin), "--out", str(out),
                    "--device", "cpu"]) == 0
    assert not (out / "teacher_outputs").exists()
    ck = load_checkpoint(out / "best.pt").raw
    assert ck["distilled"] is True and ck["teacher"]["online"] is True and ck["teacher"]["path"] == str(twin)
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["train_levels"]["kd_posterior"] > 0  # the live teacher's KL is in the loss


def test_online_teacher_must_read_the_students_inputs(cache, tmp_path, capsys):
    teacher = make_teacher(tmp_path / "fused.pt", cache)  # reads rgb, keypoints and flow
    code = dt.main(["--recipe", str(online_recipe(tmp_path, cache)), "--teacher", str(teacher),
                    "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "online teacher" in err[0] and "fused.pt" in err[0] and "teacher.online: false" in err[0]


def transfer_recipe(tmp: Path, cache: Path, **transfer) -> Path:
    path = online_recipe(tmp, cache)
    raw = yaml.safe_load(path.read_text())
    raw["transfer"] = transfer or {"weight": 0.5, "augment": {"affine_prob": 1.0, "time_mask_prob": 1.0}}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_transfer_views_are_a_second_draw_of_the_same_clip(cache, twin, tmp_path):
    recipe = load_recipe(transfer_recipe(tmp_path, cache))
    assert recipe.transfer.weight == 0.5 and recipe.transfer.augment.swap_prob == 0.0  # no swap unless asked
    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), augment=None)
    data = StudentDataset(ds, None, None, recipe.transfer)
    items = [data[i] for i in range(3)]
    for it in items:  # same frames as the clip, other values (the affine map always runs here)
        assert it["transfer"]["keypoints"].shape == it["inputs"]["keypoints"].shape
        assert not torch.equal(it["transfer"]["keypoints"], it["inputs"]["keypoints"])
    again = data[0]["transfer"]["keypoints"]  # seeded by (seed, epoch, item): replayed on resume
    torch.testing.assert_close(again, items[0]["transfer"]["keypoints"])
    data.set_epoch(1)
    assert not torch.equal(data[0]["transfer"]["keypoints"], again)
    batch = student_collate(items)
    assert set(batch[6]) == {"keypoints", "keypoints_mask"}
    assert batch[6]["keypoints"].shape == batch[0]["keypoints"].shape


NO_AUGMENT = {k: 0.0 for k in ("affine_prob", "time_warp_prob", "time_mask_prob", "point_drop")}


def test_spliced_views_join_the_clip_to_another_training_clip(cache, tmp_path):
    recipe = load_recipe(transfer_recipe(tmp_path, cache, weight=1.0, splice=1.0, augment=NO_AUGMENT))
    assert recipe.transfer.splice == 1.0
    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), augment=None)
    clips = [ds[j]["inputs"]["keypoints"].numpy() for j in range(len(ds))]
    data = StudentDataset(ds, None, None, recipe.transfer)
    for i in range(len(ds)):
        own, view = clips[i], data[i]["transfer"]["keypoints"].numpy()
        t = len(own)
        assert view.shape == own.shape
        cut = int(np.argmin((view == own).all(axis=(1, 2)))) if not (view == own).all() else t
        assert t // 4 <= cut <= 3 * t // 4 and (view[:cut] == own[:cut]).all()
        rest = view[cut:]  # a run of consecutive (cyclic) frames of one other clip
        donors = [j for j in range(len(ds)) if j != i and any(
            all((rest[k] == clips[j][(s + k) % len(clips[j])]).all() for k in range(len(rest)))
            for s in range(len(clips[j])))]
        assert donors, f"clip {i}: the view's frames after the cut are no other clip's"
    again = StudentDataset(ds, None, None, recipe.transfer)[2]["transfer"]
    assert torch.equal(again["keypoints"], data[2]["transfer"]["keypoints"])  # seeded: replayed on resume
    plain = StudentDataset(ds, None, None, replace(recipe.transfer, splice=0.0))[2]["transfer"]["keypoints"]
    assert torch.equal(plain, ds[2]["inputs"]["keypoints"])  # splice 0, no augment: the clip itself


def test_splice_reads_a_short_clip_cyclically_and_refuses_a_bad_cut():
    kp = np.arange(8 * 2 * 3, dtype=np.float32).reshape(8, 2, 3)
    other = -np.arange(3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3) - 1
    out, mask = LandmarkAugment.splice(kp, np.ones((8, 2), bool), other, np.zeros((3, 2), bool), cut=3, start=1)
    assert out.shape == kp.shape and (out[:3] == kp[:3]).all()
    assert [int(out[k, 0, 0]) for k in range(3, 8)] == [int(other[j, 0, 0]) for j in (1, 2, 0, 1, 2)]
    assert mask[:3].all() and not mask[3:].any()
    with pytest.raises(ValueError, match="cut 9 outside"):
        LandmarkAugment.splice(kp, np.ones((8, 2), bool), other, np.zeros((3, 2), bool), cut=9, start=0)


def test_transfer_splice_must_be_a_probability(cache, tmp_path):
    with pytest.raises(ValueError, match=r"transfer.splice must be in \[0, 1\]"):
        load_recipe(transfer_recipe(tmp_path, cache, weight=1.0, splice=1.5))


def test_transfer_views_add_their_kl_to_the_loss(cache, twin, tmp_path):
    out = tmp_path / "run"
    assert dt.main(["--recipe", str(transfer_recipe(tmp_path, cache)), "--teacher", str(twin), "--out", str(out),
                    "--device", "cpu"]) == 0
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["train_levels"]["kd_transfer"] > 0 and metrics["train_levels"]["kd_posterior"] > 0
    assert load_checkpoint(out / "best.pt").raw["recipe"]["transfer"]["weight"] == 0.5


def test_transfer_views_need_an_online_teacher_and_a_landmark_student(cache, tmp_path):
    path = transfer_recipe(tmp_path, cache)
    raw = yaml.safe_load(path.read_text())
    raw["teacher"]["online"] = False
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="teacher.online: true"):
        load_recipe(path)
    raw["teacher"]["online"], raw["transfer"] = True, {"weight": 0}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="transfer.weight must be > 0"):
        load_recipe(path)


def test_transfer_views_refuse_other_students_and_torchrun(cache, twin, tmp_path, monkeypatch, capsys):
    rgb = tiny_recipe("signkd_rgb", tmp_path, cache)
    raw = yaml.safe_load(rgb.read_text())
    raw["teacher"]["online"], raw["transfer"] = True, {"weight": 1.0}
    rgb.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="landmark students, not 'rgb'"):
        load_recipe(rgb)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = dt.main(["--recipe", str(transfer_recipe(tmp_path, cache)), "--teacher", str(twin),
                    "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "outside the DDP wrapper" in err[0]
