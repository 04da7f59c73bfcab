"""`python -m evaluate.tables`: the teacher benchmark and the KD ablation table from runs built here."""
from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from evaluate import tables
from evaluate.eval import evaluate
from models import train as train_mod
from models.build import count_parameters
from models.checkpoint import load_model, save_checkpoint, spec_to_dict
from models.data import CacheDataset
from models.students import StudentConfig, build_student
from preprocess import cache as cache_lib
from preprocess.manifest import read_manifest, write_manifest
from test_data import DATASET, make_tiny_cache

TINY_MODEL = {"keypoint_dim": 16, "hidden": 16, "lstm_layers": 1, "dropout": 0.1, "flow_channels": 4}
FAST = tables.Settings(beam=10, frames=16, repeats=1, warmup=0, onnx=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The tiny cache of test_data plus a test split (copies of the dev clips under other ids)."""
    root = make_tiny_cache(tmp_path_factory.mktemp("cache"), n_train=6, n_dev=3)
    manifest = cache_lib.dataset_dir(root, DATASET) / "manifest.jsonl"
    utts = read_manifest(manifest)
    test = []
    for u in utts:
        if u.split == "dev":
            t = dataclasses.replace(u, id="test" + u.id, split="test")
            dst = cache_lib.utt_path(root, DATASET, "test", t.id)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cache_lib.utt_path(root, DATASET, "dev", u.id), dst)
            test.append(t)
    write_manifest(manifest, [*utts, *test])
    return root


def _teacher(cache: Path, out: Path, streams: tuple[str, ...], fusion: str) -> Path:
    cfg = {"data": {"dataset": DATASET, "cache": str(cache), "augment": {"crop_size": 0, "flip_prob": 0.0}},
           "model": {**TINY_MODEL, "streams": list(streams), "fusion": fusion},
           "train": {"epochs": 1, "batch_size": 3, "lr": 3e-3, "warmup_epochs": 0.5, "seed": 1}}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train_mod.train(train_mod.load_config(path), out, device="cpu")
    return out


@pytest.fixture(scope="module")
def teacher_runs(cache, tmp_path_factory) -> Path:
    """A keypoint teacher and a late-fusion teacher (1 epoch each), and a run with no best.pt yet."""
    runs = tmp_path_factory.mktemp("teachers")
    _teacher(cache, runs / "kp", ("keypoints",), "none")
    _teacher(cache, runs / "kp_flow_late", ("keypoints", "flow"), "late")
    (runs / "still_starting").mkdir()
    return runs


def test_teacher_table_rows_match_independent_figures(teacher_runs, cache, tmp_path, monkeypatch):
    from evaluate import speed

    measured, measure = [], speed.training_clips_per_s

    def spy(*args, **kwargs):  # the real measurement, its results kept
        measured.append(measure(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(speed, "training_clips_per_s", spy)
    out_md, out_json = tmp_path / "t.md", tmp_path / "t.json"
    assert tables.main(["teachers", "--runs", str(teacher_runs), "--cache", str(cache), "--frames", "16",
                        "--repeats", "1", "--warmup", "0", "--out", str(out_md), "--json", str(out_json),
                        "--train-batches", "1", "--quiet"]) == 0
    table = json.loads(out_json.read_text())["teachers"]
    rows = {r["name"]: r for r in table["rows"]}
    assert list(rows) == ["kp", "kp_flow_late"]  # single streams first; the folder without best.pt skipped
    assert [Path(p).name for p in table["skipped"]] == ["still_starting"]
    for name, streams, fusion in (("kp", ["keypoints"], "none"), ("kp_flow_late", ["keypoints", "flow"], "late")):
        r, run = rows[name], teacher_runs / name
        model, _ = load_model(run / "best.pt")
        assert r["streams"] == streams and r["fusion"] == fusion and r["fused"] == (len(streams) > 1)
        assert r["parameters"] == count_parameters(model)
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert r["train_clips_per_s_log"] == pytest.approx(statistics.median(m["train_clips_per_s"] for m in metrics))
        assert r["train_clips_per_s"] > 0 and r["train_clips_per_s"] in measured and not r["notes"], r["notes"]
        assert r["epochs"] == 1 and r["epochs_planned"] == 1 and not r["training"]
        assert r["ms_per_clip"] > 0
        for split in ("dev", "test"):
            want = evaluate(run / "best.pt", cache, DATASET, split, beam=10, out=tmp_path / name / split)
            assert r[f"{split}_wer"] == pytest.approx(want.wer) and r[split]["n_ref"] == want.n_ref
            assert (run / "eval" / split / f"{split}.ctm").is_file()
    assert len(measured) == 2  # --train-batches: each row's clips/s measured afresh, not the log's
    md = out_md.read_text()
    lines = md.splitlines()
    assert lines[0] == "### Teachers" and lines[4].startswith("| kp | keypoints | none |")
    assert f"| {rows['kp']['dev_wer']:.2f} | {rows['kp']['test_wer']:.2f} |" in md
    assert "Skipped (no best.pt yet): still_starting" in md
    assert md.rstrip().splitlines()[-1] == table["check"]["message"]
    assert table["check"]["best_fused"] == "kp_flow_late" and table["check"]["ok"] in (True, False)


def _t(name: str, fused: bool, dev: float | None, test: float | None) -> dict:
    return {"name": name, "fused": fused, "dev_wer": dev, "test_wer": test}


@pytest.mark.parametrize("rows, ok, best, losses", [
    ([_t("rgb", False, 30.0, 31.0), _t("kp", False, 10.0, 12.0), _t("late", True, 8.0, 9.0),
      _t("att", True, 7.0, 8.5)], True, "att", []),
    # the best fused teacher is picked on dev; it loses on test to the keypoint stream
    ([_t("kp", False, 10.0, 8.0), _t("att", True, 7.0, 9.0), _t("late", True, 9.0, 7.0)], False, "att",
     [["kp", "test", 9.0, 8.0]]),
    # a tie is not a win
    ([_t("kp", False, 7.0, 9.5), _t("att", True, 7.0, 9.0)], False, "att", [["kp", "dev", 7.0, 7.0]]),
    # runs without both WERs do not take part
    ([_t("kp", False, None, 1.0), _t("flow", False, 20.0, 20.0), _t("att", True, 5.0, 6.0)], True, "att", []),
    ([_t("att", True, 5.0, 6.0), _t("late", True, 6.0, 7.0)], None, None, []),
])
def test_fused_beats_singles(rows, ok, best, losses):
    check = tables.fused_beats_singles(rows)
    assert check["ok"] is ok and check["best_fused"] == best and check["losses"] == losses
    prefix = {True: "PASS", False: "FAIL", None: "fused-vs-single check not possible"}[ok]
    assert check["message"].startswith(prefix)
    if ok is False:
        n, sp, f, w = losses[0]
        assert f"{n} on {sp} ({f:.2f} vs {w:.2f})" in check["message"]


def _student_run(run: Path, cache: Path, seed: int) -> Path:
    """A landmark student checkpoint as distill.train writes it (plus optimizer state to leave out)."""
    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), augment=None)
    cfg = StudentConfig(kind="landmark", dim=16, layers=1, heads=2, ff_dim=32)
    torch.manual_seed(seed)
    student = build_student(cfg, len(ds.vocab), ds.spec())
    save_checkpoint(run / "best.pt", {
        "model_config": cfg.to_dict(), "student_config": cfg.to_dict(), "input_spec": spec_to_dict(ds.spec()),
        "vocab": list(ds.vocab.tokens), "cache": {"dataset": DATASET, "config": {}}, "streams": ["keypoints"],
        "crop_size": 0, "epoch": 3, "model": student.state_dict(),
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(20000)}}}})
    return run


@pytest.fixture(scope="module")
def student_runs(cache, tmp_path_factory) -> tuple[Path, Path]:
    """Recipes alpha (CTC twin without results.json; distilled run with one) and beta (nothing trained)."""
    base = tmp_path_factory.mktemp("students")
    recipes, runs = base / "recipes", base / "runs"
    recipes.mkdir()
    (recipes / "alpha.yaml").write_text(yaml.safe_dump({"student": {"kind": "landmark"}}))
    (recipes / "beta.yaml").write_text(yaml.safe_dump({"student": {"kind": "rgb"}}))
    _student_run(runs / "alpha_ctc", cache, seed=0)
    kd = _student_run(runs / "alpha", cache, seed=1)
    ctc = {sp: evaluate(runs / "alpha_ctc" / "best.pt", cache, DATASET, sp, beam=10, out=base / "ref" / sp).wer
           for sp in ("dev", "test")}
    splits = {sp: {"wer": ctc[sp] - 1.0, "sub": 1, "del": 0, "ins": 0, "n_ref": 9,
                   "corrected": {"wer": ctc[sp] - 2.0, "sub": 0, "del": 0, "ins": 0, "n_ref": 9}}
              for sp in ("dev", "test")}
    (kd / "results.json").write_text(json.dumps({"recipe": "alpha", "mode": "kd", "student": "landmark",
                                                 "beam": 10, "splits": splits}))
    return recipes, runs


def test_student_table_measures_runs_and_lists_missing_ones(student_runs, cache, tmp_path):
    recipes, runs = student_runs
    table = tables.student_table(runs, dataclasses.replace(FAST, cache=str(cache), onnx=True), recipes, progress=False)
    rows = {(r["recipe"], r["mode"]): r for r in table["rows"]}
    assert list(rows) == [("alpha", "ctc"), ("alpha", "kd"), ("beta", "ctc"), ("beta", "kd")]

    ctc, kd = rows["alpha", "ctc"], rows["alpha", "kd"]
    model, ck = load_model(runs / "alpha_ctc" / "best.pt")
    assert ctc["parameters"] == kd["parameters"] == count_parameters(model)
    raw = sum(v.numel() * v.element_size() for v in ck.weights.values())
    assert raw < ctc["weights_bytes"] < raw + 64_000  # the weights + torch.save's framing ...
    assert ctc["weights_bytes"] < (runs / "alpha_ctc" / "best.pt").stat().st_size - 80_000  # ... not the optimizer
    assert ctc["int8_bytes"] > 0 and ctc["int8_ms"] > 0 and ctc["torch_ms"] > 0
    for split in ("dev", "test"):  # the twin has no results.json: decoded here, like evaluate.eval
        want = evaluate(runs / "alpha_ctc" / "best.pt", cache, DATASET, split, beam=10, out=tmp_path / split)
        assert ctc[f"{split}_wer"] == pytest.approx(want.wer) and ctc["wer_source"] == "decoded here"
        assert kd[f"{split}_wer"] == pytest.approx(want.wer - 1.0)  # results.json's figure
        assert kd[f"{split}_corrected_wer"] == pytest.approx(want.wer - 2.0) and ctc[f"{split}_corrected_wer"] is None
    assert ctc["status"].startswith("no results.json") and kd["status"] == "done"
    assert kd["kd_beats_ctc"] is True and table["kd_beats_ctc"] == {"alpha": True, "beta": None}

    for mode, cmd in (("ctc", f"python -m distill.train --recipe beta --no-kd --cache {cache} --out {runs / 'beta_ctc'}"),
                      ("kd", f"python -m distill.train --recipe beta --cache {cache} --out {runs / 'beta'}")):
        r = rows["beta", mode]
        assert r["status"] == "not trained" and r["command"] == cmd and r["student"] == "rgb"
    md = tables.students_markdown(table, FAST)
    assert f"| beta | KD | rgb | not trained: `{rows['beta', 'kd']['command']}` |" in md
    line = next(x for x in md.splitlines() if x.startswith("| alpha | KD |"))
    assert line.endswith(f"| {kd['dev_corrected_wer']:.2f} / {kd['test_corrected_wer']:.2f} | yes |")


def test_results_with_another_beam_are_redecoded(student_runs, cache, tmp_path):
    recipes, runs = student_runs
    run = tmp_path / "alpha"
    shutil.copytree(runs / "alpha", run)
    res = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**res, "beam": 2}))
    row = tables.student_row(run, "alpha", True, dataclasses.replace(FAST, cache=str(cache)))
    want = evaluate(run / "best.pt", cache, DATASET, "dev", beam=10, out=tmp_path / "ref")
    assert row["dev_wer"] == pytest.approx(want.wer) and row["wer_source"] == "decoded here"
    assert any("beam 2" in n for n in row["notes"])


@pytest.mark.parametrize("a, b, want", [
    ((5.0, 6.0), (7.0, 8.0), True), ((5.0, 9.0), (7.0, 8.0), False), ((7.0, 6.0), (7.0, 8.0), False),
    ((None, 6.0), (7.0, 8.0), None),
])
def test_kd_beats_ctc(a, b, want):
    assert tables.kd_beats_ctc({"dev_wer": a[0], "test_wer": a[1]}, {"dev_wer": b[0], "test_wer": b[1]}) is want


def test_epoch_ratio_and_its_cell():
    kd, ctc = {"epoch_s": {"main": 3.0}}, {"epoch_s": {"main": 2.5}}
    assert tables.epoch_ratio(kd, ctc) == pytest.approx(1.2)
    staged = {"epoch_s": {"sentences": 2.0, "mixed": 8.0}}
    assert tables.epoch_ratio(staged, ctc) is None and tables.epoch_ratio(kd, {}) is None
    assert tables._epoch({**kd, "epoch_ratio": 1.2}) == "3.0 (1.20x)"
    assert tables._epoch(staged) == "2.0 / 8.0" and tables._epoch({}) == "-"


def test_train_commands_for_the_default_layout():
    runs = tables.DEFAULT_STUDENT_RUNS
    assert tables.train_command("kdmslrt", True, runs, "cache") == "make student RECIPE=kdmslrt"
    assert tables.train_command("kdmslrt", False, runs, "cache") == "python -m distill.train --recipe kdmslrt --no-kd"


def test_bad_settings_and_missing_cache_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="frames must be >= 1, got 0"):
        tables.Settings(frames=0)
    with pytest.raises(ValueError, match="stat must be one of"):
        tables.Settings(stat="mean")
    assert tables.main(["teachers", "--cache", str(tmp_path / "nope"), "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and "\n" not in err


def test_training_speed_takes_real_optimizer_steps(teacher_runs, cache):
    from evaluate.speed import training_clips_per_s

    model, ckpt = load_model(teacher_runs / "kp" / "best.pt")
    before = [p.detach().clone() for p in model.parameters()]
    threads = torch.get_num_threads()
    assert training_clips_per_s(model, ckpt, str(cache), batches=1, warmup=0, threads=1) > 0
    assert not model.training and torch.get_num_threads() == threads  # both restored
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the weights moved
    with pytest.raises(ValueError, match="batches of 3"):
        training_clips_per_s(model, ckpt, str(cache), batches=10_000)
