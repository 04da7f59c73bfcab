"""Cross-validation folds, keypoint normalisation options, same-seed determinism and the CV report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evaluate import cv
from models import train as train_mod
from models.checkpoint import load_checkpoint
from models.keypoint_input import KeypointInput, KeypointNormConfig
from preprocess import cache as cache_lib
from preprocess.configs import UserError
from preprocess.folds import assign_folds, make_fold_view
from preprocess.manifest import Utterance, read_manifest
from preprocess.vocab import Vocabulary
from test_data import DATASET, make_tiny_cache
from test_train import TINY_MODEL


def _utts(glosses: list[str], signers: list[str]) -> list[Utterance]:
    return [Utterance(f"u{i}", "train", s, g.split(), None, 10) for i, (g, s) in enumerate(zip(glosses, signers))]


@pytest.mark.parametrize("group_by", ["none", "sentence", "signer"])
def test_folds_cover_everything_once_and_keep_groups_together(group_by):
    sents = ["A B", "A B", "C", "D E", "C", "F", "G H", "A B", "I", "J"]
    signers = ["s0", "s1", "s2", "s0", "s1", "s2", "s0", "s1", "s2", "s0"]
    utts = _utts(sents, signers)
    folds = assign_folds(utts, 3, group_by, seed=0)
    assert sorted(set(folds)) == [0, 1, 2] and len(folds) == len(utts)
    key = {"none": lambda u: u.id, "sentence": lambda u: " ".join(u.glosses), "signer": lambda u: u.signer}[group_by]
    for g in {key(u) for u in utts}:
        assert len({f for u, f in zip(utts, folds) if key(u) == g}) == 1  # a group never straddles folds
    assert assign_folds(utts, 3, group_by, seed=0) == folds  # seeded: the same folds every time


def test_fewer_groups_than_folds_is_one_line():
    utts = _utts(["A", "B", "C", "D"], ["s0", "s1", "s0", "s1"])
    with pytest.raises(UserError, match=r"form 2 signer group\(s\), fewer than the 3 folds.*--folds 2"):
        assign_folds(utts, 3, "signer")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cvcache"), n_train=10, n_dev=0)


def test_fold_view_splits_links_vocab_and_unseen_count(cache):
    view = make_fold_view(cache, DATASET, 1, 3)
    utts = read_manifest(cache_lib.dataset_dir(cache, DATASET) / "manifest.jsonl", split="train")
    assert sorted(view.train + view.test) == sorted(u.id for u in utts) and not set(view.train) & set(view.test)
    vdir = cache_lib.dataset_dir(cache, view.name)
    by_split = {s: {u.id for u in read_manifest(vdir / "manifest.jsonl", split=s)} for s in ("train", "test")}
    assert by_split == {"train": set(view.train), "test": set(view.test)}
    for uid in view.test:  # hard links: the same bytes, no copy
        src = cache_lib.utt_path(cache, DATASET, "train", uid)
        dst = cache_lib.utt_path(cache, view.name, "test", uid)
        assert dst.stat().st_ino == src.stat().st_ino
    train_glosses = {g for u in utts if u.id in view.train for g in u.glosses}
    assert Vocabulary.load(vdir / "vocab.json").tokens[1:] == tuple(sorted(train_glosses))
    held = [g for u in utts if u.id in view.test for g in u.glosses]
    assert (view.unseen_tokens, view.test_tokens) == (sum(g not in train_glosses for g in held), len(held))
    assert json.loads((vdir / "meta.json").read_text())["fold"]["parent"] == DATASET
    again = make_fold_view(cache, DATASET, 1, 3)  # idempotent
    assert again == view


def test_fold_view_dev_part_comes_from_the_training_folds(cache):
    view = make_fold_view(cache, DATASET, 0, 2, dev_frac=0.25)
    assert view.dev and not set(view.dev) & set(view.test) and not set(view.dev) & set(view.train)


# ----------------------------------------------------------------------------- normalisation


def _reference(kp: np.ndarray, mask: np.ndarray, centre_point: int, deltas: int) -> np.ndarray:
    """Independent numpy form: centre on one point (its clip mean where missing), one scale per clip."""
    t, k, _ = kp.shape
    ref = kp[:, centre_point, :2]
    seen = mask[:, centre_point]
    centre = np.where(seen[:, None], ref, ref[seen].mean(0) if seen.any() else 0.0)  # [T, 2]
    d = np.where(mask[..., None], kp[..., :2] - centre[:, None], 0.0)  # [T, K, 2]
    scale = max(np.sqrt((d**2).sum() / (2 * mask.sum())), 1e-3)
    z = np.where(mask, kp[..., 2], 0.0)[..., None]
    pos = np.clip(np.concatenate([d / scale, z / scale], -1), -10, 10) * mask[..., None]  # [T, K, 3]
    feats = [pos, mask[..., None].astype(np.float64)]
    if deltas:
        both = mask[1:] & mask[:-1]
        vel = np.zeros_like(pos)
        vel[1:] = np.where(both[..., None], pos[1:] - pos[:-1], 0.0)
        feats.append(vel)
        if deltas > 1:
            ok_v = np.zeros_like(mask)
            ok_v[1:] = both
            acc = np.zeros_like(pos)
            acc[1:] = np.where((ok_v[1:] & ok_v[:-1])[..., None], vel[1:] - vel[:-1], 0.0)
            feats.append(acc)
    return np.concatenate(feats, -1).reshape(t, -1)


@pytest.mark.parametrize("deltas", [0, 1, 2])
def test_point_centre_and_utterance_scale_match_an_independent_computation(deltas):
    rng = np.random.default_rng(deltas)
    t, k = 9, 3
    kp = rng.random((2, t + 2, k, 3)).astype(np.float32)
    mask = rng.random((2, t + 2, k)) > 0.2
    mask[0, 3, 2] = False  # the reference point missing on a frame: its clip mean is used there
    mask[0, 5, :] = False  # every point missing on a frame: zeros there, the clip's other frames unaffected
    lengths = torch.tensor([t, t - 3])
    mod = KeypointInput(list(range(k)), "custom_3", k, KeypointNormConfig("point", 2, "utterance", deltas))
    got = mod(torch.from_numpy(kp), torch.from_numpy(mask), lengths)
    assert got.shape == (2, t + 2, k * (4 + 3 * deltas))
    for b in range(2):
        n = int(lengths[b])
        want = _reference(kp[b, :n].astype(np.float64), mask[b, :n], 2, deltas)
        np.testing.assert_allclose(got[b, :n].numpy(), want, atol=1e-5)
        assert torch.isfinite(got[b]).all()
        assert not got[b, n:].any()  # padded frames are zero
    assert not got[0, 5].any()  # the frame with no point: no position, no mask, no motion


def test_utterance_scale_makes_signer_size_and_position_irrelevant():
    rng = np.random.default_rng(0)
    kp = torch.from_numpy(rng.random((1, 12, 3, 3)).astype(np.float32))
    mask = torch.ones(1, 12, 3, dtype=torch.bool)
    mod = KeypointInput([0, 1, 2], "custom_3", 3, KeypointNormConfig("point", 2, "utterance", 2))
    moved = kp.clone()
    moved[..., :2] = kp[..., :2] * 1.7 + 0.2  # a bigger signer, further right and down
    moved[..., 2] = kp[..., 2] * 1.7
    torch.testing.assert_close(mod(moved, mask, torch.tensor([12])), mod(kp, mask, torch.tensor([12])),
                               atol=1e-4, rtol=1e-4)


def test_bad_reference_point_and_options_are_one_line():
    with pytest.raises(ValueError, match=r"center_point 5 is not a point of the cached layout 'custom_3' \(3 points"):
        KeypointInput([0, 1, 2], "custom_3", 3, KeypointNormConfig("point", 5))
    with pytest.raises(ValueError, match="needs center_point"):
        KeypointNormConfig("point")
    with pytest.raises(ValueError, match="deltas must be 0, 1 or 2"):
        KeypointNormConfig(deltas=3)


# ----------------------------------------------------------------------------- determinism + CV


def _teacher_yaml(path: Path, cache: Path, dataset: str = DATASET, epochs: int = 2) -> Path:
    cfg = {"data": {"dataset": dataset, "cache": str(cache), "augment": {"crop_size": 0, "flip_prob": 0.0,
                                                                          "time_scale": 0.2}},
           "model": {**TINY_MODEL, "streams": ["keypoints"], "fusion": "none", "keypoint_subset": "mediapipe_92",
                     "keypoint_scale": "utterance", "keypoint_deltas": 1},
           "train": {"epochs": epochs, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0.5, "seed": 3, "threads": 2}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_runs_with_the_same_seed_give_identical_checkpoints(cache, tmp_path):
    """Threads are fixed by the config (2 here, whatever torch had before), so the weights are bit-equal."""
    cfg = _teacher_yaml(tmp_path / "t.yaml", cache)
    for run in ("a", "b"):
        torch.set_num_threads(1 if run == "a" else 2)  # the caller's setting must not matter
        assert train_mod.main(["--config", str(cfg), "--out", str(tmp_path / run), "--device", "cpu"]) == 0
    torch.set_num_threads(1)
    a, b = (load_checkpoint(tmp_path / r / "last.pt").raw for r in ("a", "b"))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["train_config"]["threads"] == 2


def test_summary_pools_errors_per_seed_and_claims_only_beyond_the_spread():
    runs = []
    for seed, (t_err, s_err) in enumerate([(30, 20), (34, 22), (32, 21)]):  # errors per fold, 50 refs per fold
        for fold, n_ref in enumerate((50, 50)):
            runs.append(cv.RunResult("twin", fold, seed, 100.0 * t_err / n_ref, t_err, n_ref, 0))
            runs.append(cv.RunResult("student", fold, seed, 100.0 * s_err / n_ref, s_err, n_ref, 0))
    s = cv.summarise(runs)
    twin = [100.0 * 2 * e / 100 for e in (30, 34, 32)]  # pooled over both folds: 2e errors of 100 references
    assert s["models"]["twin"]["pooled_by_seed"] == {0: twin[0], 1: twin[1], 2: twin[2]}
    assert math.isclose(s["models"]["twin"]["mean"], float(np.mean(twin)))
    assert math.isclose(s["models"]["twin"]["sd"], float(np.std(twin, ddof=1)))
    pair = s["pairs"]["student-twin"]
    assert pair["a_beats_b"] and math.isclose(pair["mean_diff"], float(np.mean([-20.0, -24.0, -22.0]))) and pair["n"] == 3
    close = [cv.RunResult(m, 0, seed, 0.0, e, 100, 0) for seed in range(3)
             for m, e in (("twin", 30 + seed), ("student", 29 + 3 * (seed % 2)))]
    assert not cv.summarise(close)["pairs"]["student-twin"]["a_beats_b"]  # a gap within the spread: no claim


def test_cross_validation_end_to_end_at_toy_size(cache, tmp_path, capsys):
    from test_distill_train import tiny_recipe

    teacher = _teacher_yaml(tmp_path / "teacher.yaml", cache, epochs=1)
    recipe = tiny_recipe("signkd_landmark", tmp_path, cache)
    raw = yaml.safe_load(recipe.read_text())
    raw["teacher"]["features"] = ["temporal"]
    raw["kd"]["features"] = {"temporal": 0.5}
    recipe.write_text(yaml.safe_dump(raw))
    args = ["--dataset", DATASET, "--cache", str(cache), "--out", str(tmp_path / "cv"), "--folds", "2",
            "--seeds", "0", "--teacher-config", str(teacher), "--recipe", str(recipe), "--beam", "2"]
    assert cv.main(args) == 0
    out = capsys.readouterr().out
    assert "| teacher |" in out and "| student |" in out and "| twin |" in out
    report = json.loads((tmp_path / "cv" / DATASET / "report.json").read_text())
    assert len(report["runs"]) == 6 and {r["fold"] for r in report["runs"]} == {0, 1}
    n_train = len(read_manifest(cache_lib.dataset_dir(cache, DATASET) / "manifest.jsonl", split="train"))
    assert sum(r["n_ref"] for r in report["runs"] if r["model"] == "twin") == sum(
        len(u.glosses) for u in read_manifest(cache_lib.dataset_dir(cache, DATASET) / "manifest.jsonl", split="train"))
    assert n_train == 10
    mtime = (tmp_path / "cv" / DATASET / "report.json").stat().st_mtime_ns
    assert cv.main(args) == 0  # a finished CV re-runs nothing and reports the same
    again = json.loads((tmp_path / "cv" / DATASET / "report.json").read_text())
    assert again["runs"] == report["runs"] and mtime <= (tmp_path / "cv" / DATASET / "report.json").stat().st_mtime_ns


def test_dataset_flag_trains_one_config_on_another_corpus(cache, tmp_path, monkeypatch):
    from distill import train as dt
    from test_distill_train import tiny_recipe

    view = make_fold_view(cache, DATASET, 0, 2)
    cfg = _teacher_yaml(tmp_path / "t.yaml", cache, epochs=1)
    monkeypatch.chdir(tmp_path)  # default outputs land under ./exp
    assert train_mod.main(["--config", str(cfg), "--dataset", view.name, "--device", "cpu"]) == 0
    run = tmp_path / "exp" / "teachers" / f"t_{view.name}"
    assert load_checkpoint(run / "last.pt").dataset == view.name
    recipe = tiny_recipe("signkd_landmark", tmp_path, cache)
    raw = yaml.safe_load(recipe.read_text())
    raw["teacher"].update(name="t", features=["temporal"])
    raw["kd"]["features"] = {"temporal": 0.5}
    recipe.write_text(yaml.safe_dump(raw))
    assert dt.main(["--recipe", str(recipe), "--dataset", view.name, "--device", "cpu"]) == 0  # finds that teacher
    results = json.loads((tmp_path / "exp" / "students" / f"signkd_landmark_{view.name}" / "results.json").read_text())
    assert results["teacher"]["path"].endswith(f"t_{view.name}/best.pt") and "test" in results["splits"]


def test_students_distil_from_the_ensemble_of_their_fold_twins(cache, tmp_path):
    from test_distill_train import tiny_recipe

    recipe = tiny_recipe("signkd_landmark", tmp_path, cache)
    report = cv.cross_validate(DATASET, None, str(recipe), str(cache), tmp_path / "cv", folds=2, seeds=(0, 1),
                               models=("twin", "student"), beam=2, ensemble_teacher="twin")
    models = [(r["model"], r["fold"], r["seed"]) for r in report["runs"]]
    assert sorted(m for m in models if m[0] == "ensemble") == [("ensemble", 0, -1), ("ensemble", 1, -1)]
    assert len([m for m in models if m[0] == "student"]) == 4 and "teacher" not in {m[0] for m in models}
    base = tmp_path / "cv" / DATASET / make_fold_view(cache, DATASET, 0, 2).name
    student = json.loads((base / "seed1" / "student" / "results.json").read_text())
    assert student["teacher"]["path"] == ",".join(str(base / f"seed{s}" / "twin" / "best.pt") for s in (0, 1))
    pair = report["summary"]["pairs"]["ensemble-twin"]
    assert pair["n"] == 2 and not pair["a_beats_b"]  # two seeds are never enough for a claim
    with pytest.raises(UserError, match="keep twin in --models"):
        cv.cross_validate(DATASET, None, str(recipe), str(cache), tmp_path / "cv2", folds=2, seeds=(0,),
                          models=("student",), ensemble_teacher="twin")


def test_inner_fold_view_keeps_the_parent_vocabulary(cache):
    outer = make_fold_view(cache, DATASET, 0, 2)
    inner = make_fold_view(cache, outer.name, 1, 2, split="train", parent_vocab=True)
    assert inner.name.endswith("_pv") and sorted(inner.train + inner.test) == sorted(outer.train)
    vocab = lambda name: Vocabulary.load(cache_lib.dataset_dir(cache, name) / "vocab.json").tokens  # noqa: E731
    assert vocab(inner.name) == vocab(outer.name)
    own = make_fold_view(cache, outer.name, 1, 2, split="train")  # without it: the inner training part's own
    assert own.name != inner.name and set(vocab(own.name)) <= set(vocab(outer.name))


def cached_recipe(tmp: Path, cache: Path) -> Path:
    """The small-corpus recipe with a cached teacher and no transfer views (what these options need)."""
    from test_distill_train import tiny_recipe

    path = tiny_recipe("keypoints_small", tmp, cache)
    raw = yaml.safe_load(path.read_text())
    raw["teacher"]["online"] = False
    raw.pop("transfer", None)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cross_fitted_students_learn_each_clip_from_the_twin_that_never_saw_it(cache, tmp_path):
    from distill.teacher_cache import TeacherCache, prepare_teacher_cache

    recipe = cached_recipe(tmp_path, cache)
    report = cv.cross_validate(DATASET, None, str(recipe), str(cache), tmp_path / "cv", folds=2, seeds=(0,),
                               models=("student",), beam=2, cross_fit=2)
    assert report["cross_fit"] == 2 and {r["model"] for r in report["runs"]} == {"student"}
    outer = make_fold_view(cache, DATASET, 0, 2)
    base = tmp_path / "cv" / DATASET / outer.name
    student = base / "seed0" / "student"
    assert load_checkpoint(student / "best.pt").raw["teacher"]["out_of_fold"] is True
    mixed = TeacherCache(student / "teacher_outputs" / "train")
    for j in range(2):  # each clip is taught by the member whose view held it out ...
        inner = make_fold_view(cache, outer.name, j, 2, split="train", parent_vocab=True)
        assert {mixed.index["out_of_fold"][u][0] for u in inner.test} == {j}
        assert all(len(mixed.index["out_of_fold"][u]) == 1 for u in inner.test)
        # ... with exactly that member's posteriors (its own plain cache over the same clips)
        alone = prepare_teacher_cache(base / "crossfit" / f"member{j}" / "best.pt", cache, outer.name, "train",
                                      tmp_path / f"alone{j}")
        for u in inner.test:
            np.testing.assert_array_equal(mixed.load(u)["logits"], alone.load(u)["logits"])
        other = next(u for u in outer.train if u not in inner.test)
        assert not np.array_equal(mixed.load(other)["logits"], alone.load(other)["logits"])


def test_out_of_fold_teacher_refusals(cache, tmp_path):
    from distill.recipes import TeacherSpec
    from distill.teacher_cache import prepare_teacher_cache

    recipe = cached_recipe(tmp_path, cache)
    outer = make_fold_view(cache, DATASET, 1, 2)
    cv.run_student(str(recipe), outer, 0, tmp_path / "twin", str(cache), None, None, False, "cpu")
    with pytest.raises(UserError, match=r"every member .*twin/best.pt.* trained on 5 of the 5 clips"):
        prepare_teacher_cache(tmp_path / "twin" / "best.pt", cache, outer.name, "train", tmp_path / "to",
                              out_of_fold=True)
    from distill.teacher_cache import out_of_fold_members

    with pytest.raises(FileNotFoundError, match="manifest of .*twin/best.pt's dataset is missing"):
        out_of_fold_members([load_checkpoint(tmp_path / "twin" / "best.pt")], [tmp_path / "twin" / "best.pt"],
                            tmp_path / "no_cache", ["u0"])
    with pytest.raises(UserError, match="drop teacher.features"):
        prepare_teacher_cache(tmp_path / "twin" / "best.pt", cache, DATASET, "test", tmp_path / "to",
                              features=["temporal"], out_of_fold=True)
    with pytest.raises(ValueError, match="cannot run online"):
        TeacherSpec("t", online=True, out_of_fold=True)
    with pytest.raises(ValueError, match="drop reduce_dim"):
        TeacherSpec("t", online=True, reduce_dim=8)
    for bad in ({"cross_fit": 1}, {"cross_fit": 2, "ensemble_teacher": "twin"}, {"cross_fit": 2, "models": ("twin",)}):
        with pytest.raises(UserError, match="--cross-fit K"):
            cv.cross_validate(DATASET, None, str(recipe), str(cache), tmp_path / "cv", folds=2,
                              **{"models": ("twin", "student"), **bad})


def test_teacher_recipe_trains_another_students_ctc_run_as_the_teacher(cache, tmp_path):
    recipe = cached_recipe(tmp_path, cache)
    wide = tmp_path / "wide.yaml"
    raw = yaml.safe_load(recipe.read_text())
    raw["student"]["dim"] = 2 * raw["student"]["dim"]
    wide.write_text(yaml.safe_dump(raw))
    report = cv.cross_validate(DATASET, None, str(recipe), str(cache), tmp_path / "cv", folds=2, seeds=(0,),
                               models=("teacher", "student"), beam=2, teacher_recipe=str(wide))
    assert {r["model"] for r in report["runs"]} == {"teacher", "student"} and report["teacher_recipe"] == str(wide)
    base = tmp_path / "cv" / DATASET / make_fold_view(cache, DATASET, 1, 2).name / "seed0"
    teacher = load_checkpoint(base / "teacher" / "best.pt")
    assert teacher.is_student and teacher.config["dim"] == raw["student"]["dim"]
    assert not teacher.raw.get("distilled")  # trained CTC-only
    student = json.loads((base / "student" / "results.json").read_text())
    assert student["teacher"]["path"] == str(base / "teacher" / "best.pt")
    with pytest.raises(UserError, match="give the teacher once"):
        cv.cross_validate(DATASET, "t.yaml", str(recipe), str(cache), tmp_path / "cv2", folds=2,
                          teacher_recipe=str(wide))
