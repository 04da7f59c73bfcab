"""`python -m distill.train`: recipes, KD reaching the student, the CTC-only twin, refusals, on a tiny cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from distill import train as dt
from distill.recipes import load_recipe
from distill.teacher_cache import StudentDataset, prepare_teacher_cache, student_collate
from models.base import ModelOutput
from models.checkpoint import load_checkpoint, load_model
from models.data import AugmentConfig, CacheDataset
from preprocess import cache as cache_lib
from preprocess.configs import preset_dir
from test_data import DATASET, make_tiny_cache
from test_teacher_cache import make_teacher

RECIPES = ("kdmslrt", "signkd_landmark", "signkd_rgb", "crkd", "smkd")
TINY_STUDENTS = {
    "landmark": {"dim": 8, "layers": 1, "heads": 2, "ff_dim": 16},  # narrower than the teacher: projectors
    "rgb": {"rgb_channels": 2, "hidden": 16},
    "lrinet": {"lrinet_width": 0.0625, "lrinet_stem_repeats": 1},
}


def tiny_recipe(name: str, tmp: Path, cache: Path, **changes) -> Path:
    """configs/recipes/<name>.yaml shrunk to the tiny cache: tiny dims, 1 epoch per stage, few corrector epochs."""
    raw = yaml.safe_load((preset_dir("recipes") / f"{name}.yaml").read_text())
    raw["data"].update(dataset=DATASET, cache=str(cache))
    raw["data"]["augment"]["crop_size"] = 12 if raw["student"]["kind"] != "landmark" else 0
    raw["student"].update(TINY_STUDENTS[raw["student"]["kind"]])
    raw["train"].update(epochs=1, batch_size=4)
    for s in raw.get("stages") or ():
        s["epochs"] = 1
    if "correction" in raw:
        raw["correction"].update(epochs=2, d_model=16, ff_dim=16, nhead=2)
    raw["eval"] = {"beam": 2}
    for k, v in changes.items():
        raw[k] = v
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache"), n_train=8, n_dev=3)


@pytest.fixture(scope="module")
def teacher(cache, tmp_path_factory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "best.pt", cache)


@pytest.fixture(scope="module")
def kd_run(cache, teacher, tmp_path_factory) -> Path:
    """One epoch of the kdmslrt recipe (KD + landmark augmentation + text correction)."""
    tmp = tmp_path_factory.mktemp("kdmslrt")
    recipe = tiny_recipe("kdmslrt", tmp, cache)
    assert dt.main(["--recipe", str(recipe), "--teacher", str(teacher), "--out", str(tmp / "run"), "--device", "cpu"]) == 0
    return tmp / "run"


def test_every_recipe_loads_and_states_the_paper():
    for name in RECIPES:
        r = load_recipe(name)
        assert r.name == name and r.paper, name
        assert r.data.dataset == "synthsign" and r.data.augment.flip_prob == 0.0
        assert r.distills, name
    assert load_recipe("crkd").paper["alpha"] == 140 and load_recipe("crkd").paper["beta"] == 120
    assert [s.data for s in load_recipe("smkd").stages] == ["sentences", "sentences+segments"]
    assert load_recipe("kdmslrt").correction is not None and load_recipe("kdmslrt").landmark_augment is not None
    assert load_recipe("signkd_rgb").kind == "rgb" and load_recipe("signkd_landmark").kind == "landmark"


def test_kdmslrt_one_epoch_writes_checkpoint_and_results(kd_run, teacher, cache):
    ck = load_checkpoint(kd_run / "best.pt").raw
    assert ck["student_config"]["kind"] == "landmark" and ck["model_config"] == ck["student_config"]
    assert ck["recipe"]["name"] == "kdmslrt" and ck["distilled"] is True
    from distill.teacher_cache import teacher_fingerprint

    assert ck["teacher"]["fingerprint"] == teacher_fingerprint(load_checkpoint(teacher))
    assert set(ck["extra_modules"]) == {"context.proj.weight", "context.proj.bias"}  # student 8 -> teacher 16
    metrics = json.loads((kd_run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"main", "conv_main", "kd_posterior", "kd_context"} == set(metrics["train_levels"])
    res = json.loads((kd_run / "results.json").read_text())
    assert res["mode"] == "kd" and 0 <= res["splits"]["dev"]["wer"]
    assert "wer" in res["splits"]["dev"]["corrected"] and (kd_run / "corrector.pt").is_file()
    assert (kd_run / "teacher_outputs" / "train" / "index.json").is_file()
    model, _ = load_model(kd_run / "best.pt")  # evaluate/export rebuild it from its own config
    assert sum(p.numel() for p in model.parameters()) == res["params"]


def test_no_kd_twin_is_the_ctc_objective(cache, tmp_path):
    recipe = tiny_recipe("kdmslrt", tmp_path, cache)
    r = load_recipe(recipe)
    assert dt.make_extra_loss(r, use_kd=False, use_smkd=False, projectors=None) is None
    out = tmp_path / "ctc"
    assert dt.main(["--recipe", str(recipe), "--no-kd", "--out", str(out), "--device", "cpu",
                    "--teacher", str(tmp_path / "absent.pt")]) == 0  # no teacher needed
    ck = load_checkpoint(out / "best.pt").raw
    assert ck["distilled"] is False and ck["teacher"] is None and "extra_modules" not in ck
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert set(metrics["train_levels"]) == {"main", "conv_main"}
    assert metrics["train_loss"] == pytest.approx(sum(metrics["train_levels"].values()), rel=1e-5)
    assert not (out / "teacher_outputs").exists()


def test_kd_loss_reaches_the_student(cache, teacher, tmp_path):
    recipe = load_recipe(tiny_recipe("signkd_landmark", tmp_path, cache))
    tc = prepare_teacher_cache(teacher, cache, DATASET, "train", tmp_path / "to", recipe.teacher.features)
    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), AugmentConfig(0, 0.0, 0.2))
    batch = student_collate([StudentDataset(ds, tc)[i] for i in range(4)])
    torch.manual_seed(0)
    student = dt.build_recipe_student(recipe.student, len(ds.vocab), ds.spec())
    projectors = dt.make_projectors(recipe, student(*batch[:2]), tc.dims)
    assert set(projectors) == {"frame", "temporal"}  # student 8 -> teacher 64 (fused frame) and 16
    loss_fn = dt.make_extra_loss(recipe, use_kd=True, use_smkd=False, projectors=projectors)
    params = list(student.parameters()) + list(projectors.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    student.eval()  # no dropout: the loss is a function of the weights only
    losses = []
    for _ in range(15):
        loss, parts = loss_fn(student(batch[0], batch[1]), batch, 0)
        assert set(parts) == {"kd_posterior", "kd_frame", "kd_temporal"}
        opt.zero_grad()
        loss.backward()
        if not losses:
            grad = sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None)
            assert grad > 0  # the teacher's signal reaches the student's weights
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_other_recipes_run_one_epoch(cache, teacher, tmp_path):
    rgb_teacher = make_teacher(tmp_path / "rgb.pt", cache, streams=("rgb",), fusion="none")
    # smkd: every kind of stage (segments alone with the frame-level cross-entropy, then both together)
    smkd_stages = [{"name": "sentences", "epochs": 1},
                   {"name": "segments", "data": "segments", "epochs": 1, "level_weights": {"conv_main": 1.0},
                    "segment_ce": 1.0},
                   {"name": "mixed", "data": "sentences+segments", "epochs": 1}]
    for name, t in (("signkd_landmark", teacher), ("signkd_rgb", teacher), ("crkd", rgb_teacher), ("smkd", None)):
        changes = {"stages": smkd_stages} if name == "smkd" else {}
        args = ["--recipe", str(tiny_recipe(name, tmp_path, cache, **changes)), "--out", str(tmp_path / name),
                "--device", "cpu"]
        assert dt.main(args + (["--teacher", str(t)] if t else [])) == 0, name
        res = json.loads((tmp_path / name / "results.json").read_text())
        assert res["mode"] == "kd" and "dev" in res["splits"], name
    assert (tmp_path / "smkd" / "segments.json").is_file()
    for stage in ("sentences", "segments", "mixed"):
        assert (tmp_path / "smkd" / stage / "best.pt").is_file()
    segments = json.loads((tmp_path / "smkd" / "segments.json").read_text())
    for uid, spans in segments.items():  # spans tile each clip, one per gloss, in order
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    seg_metrics = json.loads((tmp_path / "smkd" / "segments" / "metrics.jsonl").read_text().splitlines()[0])
    assert set(seg_metrics["train_levels"]) == {"conv_main", "segment_ce"}
    mixed = json.loads((tmp_path / "smkd" / "mixed" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"main", "conv_main", "smkd"} == set(mixed["train_levels"])
    assert (tmp_path / "smkd" / "best.pt").read_bytes() == (tmp_path / "smkd" / "mixed" / "best.pt").read_bytes()
    assert load_checkpoint(tmp_path / "crkd" / "best.pt").config["lrinet_width"] == 0.0625
    # the generic loader (evaluate.eval, export, tables) rebuilds the narrow LRINet from its checkpoint
    lrinet, _ = load_model(tmp_path / "crkd" / "best.pt")
    assert lrinet.cfg.width == 0.0625 and lrinet.cfg.stem_repeats == 1
    from evaluate.eval import main as eval_main
    assert eval_main(["--ckpt", str(tmp_path / "crkd" / "best.pt"), "--cache", str(cache), "--dataset", DATASET,
                      "--split", "dev", "--out", str(tmp_path / "crkd_eval")]) == 0


# --------------------------------------------------------------------------- bad input


def _one_line_error(capsys, args: list[str], *needles: str) -> str:
    capsys.readouterr()  # drop what earlier runs printed
    assert dt.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    for n in needles:
        assert n in err, err
    return err


def test_refuses_teacher_with_another_vocabulary(cache, tmp_path, capsys):
    bad = make_teacher(tmp_path / "t.pt", cache, vocab=["<blank>", "A", "B", "C", "D", "X"])
    recipe = tiny_recipe("signkd_landmark", tmp_path, cache)
    _one_line_error(capsys, ["--recipe", str(recipe), "--teacher", str(bad), "--out", str(tmp_path / "o")],
                    "vocabulary mismatch", str(bad))
    assert not (tmp_path / "o" / "last.pt").exists()


def test_refuses_teacher_with_another_time_reduction(cache, teacher, tmp_path, capsys, monkeypatch):
    class HalfRate(torch.nn.Module):  # reduces time by 2, not 4
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, inputs, lengths):
            t = next(iter(inputs.values())).shape[1] // 2
            return ModelOutput({"main": torch.zeros(1, t, 6) + self.w}, lengths // 2, {})

    real = dt.load_ensemble
    monkeypatch.setattr(dt, "load_ensemble", lambda paths, device="cpu": (HalfRate(), real(paths)[1]))
    recipe = tiny_recipe("signkd_landmark", tmp_path, cache)
    _one_line_error(capsys, ["--recipe", str(recipe), "--teacher", str(teacher), "--out", str(tmp_path / "o")],
                    "time reduction mismatch", "32 frames into 16 steps but the student into 8")


def test_refuses_stale_teacher_cache_then_rebuilds(kd_run, cache, tmp_path, capsys):
    teacher = make_teacher(tmp_path / "t" / "best.pt", cache)
    recipe = tiny_recipe("kdmslrt", tmp_path, cache)
    out = tmp_path / "run"
    args = ["--recipe", str(recipe), "--teacher", str(teacher), "--out", str(out), "--device", "cpu"]
    assert dt.main(args) == 0
    make_teacher(teacher, cache, seed=5)  # the teacher was retrained since
    _one_line_error(capsys, args + ["--resume"], "stale teacher-output cache", "--rebuild-teacher-cache")
    assert dt.main(args + ["--resume", "--rebuild-teacher-cache"]) == 0


def test_refuses_rgb_student_on_keypoint_only_corpus(tmp_path, teacher, capsys):
    cache = make_tiny_cache(tmp_path / "kp")
    meta = cache_lib.read_meta(cache, DATASET)
    meta.update(rgb_size=0, streams=["keypoints", "keypoints_mask", "flow"])
    cache_lib.write_meta(cache, DATASET, meta)
    recipe = tiny_recipe("signkd_rgb", tmp_path, cache)
    _one_line_error(capsys, ["--recipe", str(recipe), "--teacher", str(teacher), "--out", str(tmp_path / "o")],
                    "needs RGB frames", "keypoint-only")


def test_refuses_flips_with_a_teacher(cache, tmp_path, capsys):
    recipe = tiny_recipe("signkd_landmark", tmp_path, cache)
    raw = yaml.safe_load(recipe.read_text())
    raw["data"]["augment"]["flip_prob"] = 0.5
    recipe.write_text(yaml.safe_dump(raw))
    _one_line_error(capsys, ["--recipe", str(recipe)], "flip", "unmirrored")
