"""Ensemble teachers: mean posterior of the members, side-by-side features, and distillation from several checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill import train as dt
from distill.teacher_cache import prepare_teacher_cache, teacher_fingerprint
from models.checkpoint import load_model
from models.data import CacheDataset, collate
from models.ensemble import load_ensemble
from preprocess.configs import UserError
from test_data import DATASET, make_tiny_cache
from test_distill_train import tiny_recipe
from test_teacher_cache import CROP, make_teacher


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache"), n_train=6, n_dev=2)


@pytest.fixture(scope="module")
def members(cache, tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("members")
    return [make_teacher(tmp / f"m{i}.pt", cache, seed=i) for i in range(3)]


def test_ensemble_is_the_mean_probability_and_concatenated_features(cache, members):
    ens, ckpt = load_ensemble(members)
    singles = [load_model(p)[0] for p in members]
    ds = CacheDataset(cache, DATASET, "train", ("rgb", "keypoints", "flow"), augment=None, crop_size=CROP)
    inputs, lengths, *_ = collate([ds[i] for i in range(3)])
    with torch.no_grad():
        out = ens(inputs, lengths)
        outs = [m(inputs, lengths) for m in singles]
    probs = torch.stack([o.main.float().softmax(-1) for o in outs]).mean(0)  # independent: average probabilities
    torch.testing.assert_close(out.main.exp(), probs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.main.log_softmax(-1), out.main, atol=1e-5, rtol=1e-5)  # already normalised
    for name in ("frame", "temporal"):
        torch.testing.assert_close(out.features[name], torch.cat([o.features[name] for o in outs], -1))
    assert len(ckpt.members) == 3 and [m.path for m in ckpt.members] == list(members)
    assert teacher_fingerprint(ckpt) != teacher_fingerprint(ckpt.members[0])


def test_ensemble_members_must_share_the_vocabulary(cache, members, tmp_path):
    other = make_teacher(tmp_path / "other.pt", cache, vocab=["<blank>", "X", "Y", "Z", "W", "V"])
    with pytest.raises(UserError, match=r"ensemble member .*other.pt has another vocabulary"):
        load_ensemble([members[0], other])


def test_distillation_from_an_ensemble_of_checkpoints(cache, members, tmp_path):
    recipe = tiny_recipe("signkd_landmark", tmp_path, cache)
    out = tmp_path / "run"
    assert dt.main(["--recipe", str(recipe), "--out", str(out), "--teacher", *map(str, members)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["teacher"]["path"] == ",".join(map(str, members))
    index = json.loads((out / "teacher_outputs" / "train" / "index.json").read_text())
    _, ckpt = load_ensemble(members)
    assert index["teacher_fingerprint"] == teacher_fingerprint(ckpt)
    single = prepare_teacher_cache(members[0], cache, DATASET, "train", tmp_path / "single", ("frame", "temporal"))
    assert index["features"]["temporal"]["dim"] == 3 * single.dims["temporal"]  # members side by side


def test_distill_warns_when_the_teacher_is_weaker_than_the_twin(tmp_path):
    teacher = tmp_path / "teacher" / "best.pt"
    teacher.parent.mkdir()
    (teacher.parent / "metrics.jsonl").write_text('{"epoch": 1, "dev_wer": 40.0}\n{"epoch": 2, "dev_wer": 35.5}\n')
    out = tmp_path / "students" / "rec"
    assert dt.warn_if_teacher_weaker([teacher], out) is None  # no twin yet: nothing to compare
    twin = tmp_path / "students" / "rec_ctc" / "results.json"
    twin.parent.mkdir(parents=True)
    twin.write_text(json.dumps({"splits": {"dev": {"wer": 30.0}}}))
    msg = dt.warn_if_teacher_weaker([teacher], out)
    assert msg and "35.50%" in msg and "30.00%" in msg and "worse than the CTC-only twin" in msg
    twin.write_text(json.dumps({"splits": {"dev": {"wer": 36.0}}}))
    assert dt.warn_if_teacher_weaker([teacher], out) is None  # a stronger teacher: silent
