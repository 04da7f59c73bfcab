"""Training loop, checkpoints, resume, NaN stop, cache checks, `make eval` and DDP on a tiny cache."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models import train as train_mod
from models.base import ModelOutput
from models.build import ModelConfig, build_model
from models.checkpoint import Checkpoint, check_compatible, load_checkpoint, load_model
from models.data import CacheDataset, collate, input_spec
from preprocess import cache as cache_lib
from preprocess.vocab import Vocabulary
from test_data import DATASET, make_tiny_cache

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"keypoint_dim": 16, "hidden": 16, "lstm_layers": 1, "dropout": 0.1,
              "tiny_channels": 4, "flow_channels": 4, "rgb_backbone": "tiny"}


def write_config(path: Path, cache: Path, streams=("keypoints",), fusion="none", epochs=2, **train) -> Path:
    cfg = {
        "data": {"dataset": DATASET, "cache": str(cache), "augment": {"crop_size": 12, "flip_prob": 0.5, "time_scale": 0.2}},
        "model": {**TINY_MODEL, "streams": list(streams), "fusion": fusion},
        "train": {"epochs": epochs, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0.5, "seed": 1, **train},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def fusion_run(cache, tmp_path_factory) -> Path:
    """Two epochs of an attention-fusion teacher over all three streams."""
    tmp = tmp_path_factory.mktemp("fusion")
    cfg = write_config(tmp / "fusion.yaml", cache, streams=("rgb", "keypoints", "flow"), fusion="attention")
    assert train_mod.main(["--config", str(cfg), "--out", str(tmp / "run"), "--device", "cpu"]) == 0
    return tmp / "run"


def test_two_epochs_write_checkpoints_metrics_and_log(fusion_run, cache):
    assert (fusion_run / "last.pt").is_file() and (fusion_run / "best.pt").is_file()
    lines = [json.loads(x) for x in (fusion_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and 0 <= r["dev_wer"] for r in lines)
    assert {"main", "conv_main", "rgb", "keypoints", "flow"} <= set(lines[0]["train_levels"])
    assert "conv_rgb" not in lines[0]["train_levels"]  # not weighted by default
    log = (fusion_run / "train.log").read_text()
    assert "epoch 2/2" in log and "dev WER" in log
    ck = load_checkpoint(fusion_run / "last.pt").raw  # the saved dict itself
    assert ck["epoch"] == 2 and ck["vocab"] == list(Vocabulary.load(cache / DATASET / "vocab.json").tokens)
    assert ck["input_spec"] == {"num_keypoints": 543, "keypoint_layout": "mediapipe_holistic_543",
                                "rgb_size": 12, "flow_size": 6}
    assert ck["model_config"]["fusion"] == "attention" and ck["crop_size"] == 12
    assert ck["cache"]["config"]["flow_scale"] == 0.25 and len(ck["rng"]) == 1
    best = min(r["dev_wer"] for r in lines)
    assert ck["best"] == best and load_checkpoint(fusion_run / "best.pt").best == best
    # the checkpoint rebuilds its own model, which reproduces the trained weights' outputs
    model, _ = load_model(fusion_run / "last.pt")
    ds = CacheDataset(cache, DATASET, "dev", ck["streams"], augment=None, crop_size=12)
    inputs, lengths, *_ = collate([ds[0], ds[1]])
    ref = build_model(ModelConfig.from_dict(ck["model_config"]), len(ck["vocab"]), input_spec(ds.meta, 12))
    ref.load_state_dict(ck["model"])
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs, lengths).main, ref(inputs, lengths).main)


def test_resume_after_crash_gives_the_same_weights(cache, tmp_path, monkeypatch):
    cfg = write_config(tmp_path / "kp.yaml", cache, epochs=3)
    args = ["--config", str(cfg), "--device", "cpu"]
    assert train_mod.main(args + ["--out", str(tmp_path / "full")]) == 0

    real_save = train_mod.save_checkpoint

    def crash_after_epoch_2(path, state):
        real_save(path, state)
        if Path(path).name == "last.pt" and state["epoch"] == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(train_mod, "save_checkpoint", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_mod.main(args + ["--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt").epoch == 2
    assert train_mod.main(args + ["--out", str(tmp_path / "resumed"), "--resume"]) == 0

    full, resumed = (load_checkpoint(tmp_path / d / "last.pt").raw for d in ("full", "resumed"))
    assert resumed["epoch"] == full["epoch"] == 3 and resumed["best"] == full["best"]
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    metrics = [json.loads(x)["epoch"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [1, 2, 3]
    # a finished run resumed again has nothing to do; without --resume the run is protected
    assert train_mod.main(args + ["--out", str(tmp_path / "resumed"), "--resume"]) == 0
    assert train_mod.main(args + ["--out", str(tmp_path / "resumed")]) == 2


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(cache, tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "kp.yaml", cache, epochs=3)
    out = tmp_path / "run"
    real_loss, calls = train_mod.ctc_loss_levels, {"n": 0}

    def loss_nan_in_epoch_2(out_, targets, target_lengths, weights):
        loss, parts = real_loss(out_, targets, target_lengths, weights)
        calls["n"] += 1
        if calls["n"] > 3:  # 2 train steps + 1 dev batch pass in epoch 1
            return loss * float("nan"), parts
        return loss, parts

    monkeypatch.setattr(train_mod, "ctc_loss_levels", loss_nan_in_epoch_2)
    assert train_mod.main(["--config", str(cfg), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "epoch 2 step 3: the training loss is nan" in err and "last.pt (epoch 1) is kept" in err
    assert "--resume" in err
    assert load_checkpoint(out / "last.pt").epoch == 1
    assert "the training loss is nan" in (out / "train.log").read_text()


def test_ctc_levels_weights_patterns_and_infinity():
    torch.manual_seed(0)
    b, t, v = 2, 6, 5
    logits = {k: torch.randn(b, t, v) for k in ("main", "conv_main", "rgb", "conv_rgb")}
    out = ModelOutput(logits=logits, out_lengths=torch.tensor([6, 4]))
    targets, tl = torch.tensor([1, 2, 3, 4, 4, 4]), torch.tensor([3, 3])  # 2nd: 4 4 4 needs 5 steps > 4

    def ctc(level):
        lp = logits[level].log_softmax(-1).transpose(0, 1)
        per = torch.nn.functional.ctc_loss(lp, targets, out.out_lengths, tl, reduction="none", zero_infinity=True)
        return (per / tl).mean()

    total, parts = train_mod.ctc_loss_levels(out, targets, tl, {"main": 1.0, "conv_*": 0.5, "flow": 2.0})
    assert set(parts) == {"main", "conv_main", "conv_rgb"}
    torch.testing.assert_close(total, ctc("main") + 0.5 * ctc("conv_main") + 0.5 * ctc("conv_rgb"))
    assert torch.isfinite(total)


def test_lr_schedule_warmup_cosine_and_step():
    tc = train_mod.TrainConfig(epochs=10, warmup_epochs=1, min_lr_ratio=0.1, schedule="cosine")
    f = [train_mod.lr_factor(s, tc, 4) for s in range(40)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 35 / 36)))
    st = train_mod.TrainConfig(epochs=10, warmup_epochs=0, schedule="step", step_epochs=(3, 6), step_gamma=0.5)
    assert [train_mod.lr_factor(e * 4, st, 4) for e in (0, 2, 3, 5, 6, 9)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("section,bad,match", [
    ("train", {"optimizer": "sgd"}, "train.optimizer must be one of"),
    ("train", {"lerning_rate": 1}, "unknown train option"),
    ("model", {"fusion": "magic"}, "unknown fusion 'magic'"),
    ("data", {"augment": {"flip_prob": 2}}, "flip_prob must be in"),
])
def test_bad_config_gives_one_line(tmp_path, cache, section, bad, match, capsys):
    cfg_path = write_config(tmp_path / "c.yaml", cache)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg[section].update(bad)
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert train_mod.main(["--config", str(cfg_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and str(cfg_path) in err


def test_checkpoint_refuses_other_vocabulary_or_extractor(fusion_run, cache, tmp_path):
    ck = load_checkpoint(fusion_run / "last.pt")
    check_compatible(ck, cache, DATASET)  # its own cache is fine
    other = make_tiny_cache(tmp_path / "other")
    Vocabulary(("<blank>", "A", "B", "C", "D", "E", "F")).save(other / DATASET / "vocab.json")
    with pytest.raises(ValueError, match=r"vocabulary mismatch: .*last.pt has 6 tokens but .*vocab.json has 7.*retrain"):
        check_compatible(ck, other, DATASET, ckpt_name=str(fusion_run / "last.pt"))
    other2 = make_tiny_cache(tmp_path / "other2")
    meta = cache_lib.read_meta(other2, DATASET)
    meta["flow"]["scale"] = 0.5
    cache_lib.write_meta(other2, DATASET, meta)
    with pytest.raises(ValueError, match=r"extractor mismatch: .*flow_scale=0.25 vs 0.5.*rebuild the cache"):
        check_compatible(ck, other2, DATASET)
    # a keypoint-only model does not care about the flow settings
    check_compatible(Checkpoint.from_dict({**ck.raw, "streams": ["keypoints"]}), other2, DATASET)


def test_eval_writes_ctm_and_report_matching_an_independent_decode(fusion_run, cache, tmp_path, capsys):
    from evaluate.eval import main as eval_main
    from evaluate.core.formats import read_ctm
    from evaluate.core.wer import score

    out = tmp_path / "eval"
    rc = eval_main(["--ckpt", str(fusion_run / "best.pt"), "--cache", str(cache),  # dataset: the checkpoint's
                    "--split", "dev", "--beam", "1", "--out", str(out)])
    assert rc == 0
    line = capsys.readouterr().out
    # independent greedy decode: argmax per step, collapse repeats, drop blanks
    model, ck = load_model(fusion_run / "best.pt")
    ds = CacheDataset(cache, DATASET, "dev", ck.streams, augment=None, crop_size=12)
    hyps = {}
    with torch.no_grad():
        for i in range(len(ds)):
            inputs, lengths, _, _, ids = collate([ds[i]])
            o = model(inputs, lengths)
            best = o.main[0, : o.out_lengths[0]].argmax(-1).tolist()
            seq = [c for j, c in enumerate(best) if c != 0 and (j == 0 or c != best[j - 1])]
            hyps[ids[0]] = [ck.vocab[c] for c in seq]
    written = read_ctm(out / "dev.ctm")
    assert written == {k: v for k, v in hyps.items() if v}
    refs = {u.id: u.glosses for u in ds.utts}
    expected = score(hyps, refs, "none")
    assert f"WER {expected.wer:.2f}%" in line
    report = (out / "dev.report.txt").read_text()
    assert all(f"id: {u}" in report for u in refs) and "REF:" in report
    # beam search runs on the same checkpoint (and cannot be worse than nothing)
    assert eval_main(["--ckpt", str(fusion_run / "best.pt"), "--cache", str(cache), "--dataset", DATASET,
                      "--split", "dev", "--beam", "4", "--out", str(out / "beam")]) == 0
    assert (out / "beam" / "dev.ctm").is_file()


def test_eval_empty_split_and_mismatch_are_one_line_errors(fusion_run, cache, tmp_path, capsys):
    from evaluate.eval import main as eval_main

    base = ["--ckpt", str(fusion_run / "best.pt"), "--cache", str(cache), "--dataset", DATASET, "--out", str(tmp_path)]
    assert eval_main(base + ["--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "split 'test' has no cached utterances" in err
    other = make_tiny_cache(tmp_path / "other")
    Vocabulary(("<blank>", "E", "D", "C", "B", "A")).save(other / DATASET / "vocab.json")
    assert eval_main(["--ckpt", str(fusion_run / "best.pt"), "--cache", str(other), "--dataset", DATASET,
                      "--split", "dev", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vocabulary mismatch" in err and "index 1: 'A' vs 'E'" in err


def test_ddp_two_processes_gloo(cache, tmp_path):
    cfg = write_config(tmp_path / "kp.yaml", cache, epochs=2)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "models.train", "--config", str(cfg), "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(out / "last.pt").raw
    assert ck["epoch"] == 2 and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # ranks drew their own dropout
    assert "2 process(es)" in (out / "train.log").read_text()
    # 8 train utterances, batch 4, 2 ranks: one step per rank per epoch
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_teacher_presets_load_and_build():
    meta_like = {"rgb_size": 64, "flow": {"size": 32}, "num_keypoints": 543,
                 "keypoint_layout": "mediapipe_holistic_543"}
    presets = sorted((ROOT / "configs" / "teachers").glob("*.yaml"))
    names = {p.stem for p in presets}
    assert {"synthsign_keypoints", "synthsign_rgb", "synthsign_flow", "synthsign_fusion_early",
            "synthsign_fusion_late", "synthsign_fusion_attention", "phoenix14_fusion"} <= names
    for p in presets:
        cfg = train_mod.load_config(p)
        if cfg.data.dataset != "synthsign":
            continue
        assert cfg.data.augment.crop_size <= 64
        model = build_model(cfg.model, 40, input_spec(meta_like, cfg.data.augment.crop_size))
        n = sum(x.numel() for x in model.parameters())
        assert n < 3_000_000, (p.name, n)  # small enough for a CPU demo


def test_eval_reads_student_checkpoints(cache, tmp_path, capsys):
    from evaluate.eval import main as eval_main
    from models.checkpoint import save_checkpoint
    from models.students import StudentConfig, build_student

    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), augment=None)
    cfg = StudentConfig(kind="landmark", dim=16, layers=1, heads=2, ff_dim=32)
    student = build_student(cfg, len(ds.vocab), ds.spec())
    save_checkpoint(tmp_path / "student.pt", {
        "model_config": cfg.to_dict(), "input_spec": {"num_keypoints": 543, "keypoint_layout": "mediapipe_holistic_543",
                                                      "rgb_size": 0, "flow_size": 0},
        "vocab": list(ds.vocab.tokens), "cache": {"dataset": DATASET, "config": {}}, "model": student.state_dict()})
    assert eval_main(["--ckpt", str(tmp_path / "student.pt"), "--cache", str(cache), "--split", "dev",
                      "--beam", "1", "--out", str(tmp_path / "ev")]) == 0
    assert "WER" in capsys.readouterr().out and (tmp_path / "ev" / "dev.ctm").is_file()


def test_read_metrics_skips_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert train_mod.read_metrics(path) == []  # no file yet
    path.write_text('{"epoch": 1, "train_time_s": 2.0}\n{"epoch": 2, "train_time_s": 3.0}\n{"epoch": 3, "tra')
    assert [r["epoch"] for r in train_mod.read_metrics(path)] == [1, 2]
