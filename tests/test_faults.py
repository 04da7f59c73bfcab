"""Fault injection: bad input, full disks and kills must fail loudly, name the file, and lose nothing.

Complements the per-module tests, which already hold the rest of the sweep: corrupt, truncated,
empty and person-less videos and malformed keypoint arrays (test_features, test_video,
test_keypoint_io), kill -9 of ``make features`` with byte-identical files after resume
(test_features), an in-process crash of training with identical weights after resume
(test_train), stale teacher caches (test_distill_train, test_teacher_cache) and malformed
corpus files (test_datasets). Every case here failed before its fix.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from evaluate import eval as eval_mod
from evaluate.core.wer import score_files
from models import checkpoint as ckpt_mod
from models import train as train_mod
from preprocess import cache as cache_lib
from preprocess import features as features_mod
from preprocess.configs import ConfigError, UserError, WriteError, from_dict, load_yaml
from preprocess.datasets import prepare_custom
from preprocess.keypoint_io import keypoint_fps, main as keypoint_main, save_pose
from preprocess.files import atomic_write_text
from preprocess.manifest import read_manifest
from test_data import DATASET, make_tiny_cache
from test_features import Corpus, keypoints_for, moving_square, write_video
from test_train import write_config

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("train_clips_per_s", "train_time_s")  # metrics.jsonl fields that depend on the machine's load


# ---------------------------------------------------------------------------------- helpers


def features(corpus: Corpus, cache: Path, *extra: str) -> int:
    return features_mod.main(["--dataset", str(corpus.yaml), "--cache", str(cache), "--workers", "1", *extra])


def keypoint_corpus(tmp_path: Path, n: int = 3) -> Corpus:
    """A keypoint-only custom corpus (no video: only the landmark stream, fast to extract)."""
    c = Corpus(tmp_path, {"landmarks": "auto"})
    for i in range(n):
        c.add(f"k{i}", "train" if i else "dev", video=None, keypoints="npy", t=6 + i, kp_points=50, seed=i)
    return c


def full_disk_under(monkeypatch, folder: Path, name_part: str = "") -> None:
    """Writes through ``os.fdopen`` to files under ``folder`` (whose name contains ``name_part``)
    fail with ENOSPC: a full disk on the cache's file system, everything else still writable."""
    real_fdopen = os.fdopen
    folder = str(folder.resolve())

    class FullFile:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if ("w" in mode or "a" in mode) and target.startswith(folder) and name_part in Path(target).name:
            return FullFile(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)


def metrics_without_clock(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in train_mod.read_metrics(path)]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def reference_run(tiny_cache, tmp_path_factory) -> tuple[Path, Path]:
    """(config, run folder) of an uninterrupted 3-epoch landmark run."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = write_config(tmp / "kp.yaml", tiny_cache, epochs=3)
    assert train_mod.main(["--config", str(cfg), "--out", str(tmp / "run"), "--device", "cpu"]) == 0
    return cfg, tmp / "run"


# ------------------------------------------------------------------ config helper and CLIs


@dataclass(frozen=True)
class _Inner:
    size: int = 1
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Outer:
    epochs: int = 1
    lr: float = 0.1
    amp: bool = True
    name: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    inner: _Inner = field(default_factory=_Inner)


@pytest.mark.parametrize("data, message", [
    ({"epochs": 2.5}, "f.yaml: train.epochs: expected a whole number, got 2.5"),
    ({"epochs": "eight"}, "train.epochs: expected a whole number, got 'eight'"),
    ({"epochs": True}, "train.epochs: expected a whole number"),
    ({"lr": "fast"}, "train.lr: expected a number"),
    ({"amp": "maybe"}, "train.amp: expected true or false"),
    ({"weights": {"main": "x"}}, "train.weights.main: expected a number"),
    ({"inner": {"size": 1.5}}, "train.inner.size: expected a whole number"),
    ({"inner": {"names": "rgb"}}, "train.inner.names: expected a list"),
    ({"inner": {"sise": 1}}, "unknown train.inner option(s) ['sise']"),
    ({"epoch": 3}, "unknown train option(s) ['epoch']; known: ['amp', 'epochs'"),
])
def test_from_dict_names_the_key_and_the_fix(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(_Outer, data, "f.yaml", "train")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_from_dict_coerces_what_yaml_reads_loosely():
    cfg = from_dict(_Outer, yaml.safe_load("epochs: 3.0\nlr: 1e-3\nweights: {main: 1}\ninner: {names: [a, b]}\n"))
    assert cfg == _Outer(epochs=3, lr=0.001, weights={"main": 1.0}, inner=_Inner(names=("a", "b")))
    assert isinstance(cfg.lr, float) and isinstance(cfg.weights["main"], float)


def test_user_errors_share_one_base():
    from distill.teacher_cache import StaleTeacherCache
    from evaluate.core.formats import FormatError
    from evaluate.core.wer import ScoringError
    from preprocess.features import UtteranceError
    from preprocess.keypoint_io import KeypointFileError
    from preprocess.landmarks import NoPersonError
    from preprocess.video import VideoError

    for cls in (VideoError, KeypointFileError, FormatError, ScoringError, StaleTeacherCache, UtteranceError,
                NoPersonError, ConfigError, WriteError):
        assert issubclass(cls, UserError), cls


@pytest.mark.parametrize("old, new, key", [
    ("epochs: 2", "epochs: 2.5", "train.epochs: expected a whole number, got 2.5"),
    ("batch_size: 4", "batch_size: eight", "train.batch_size: expected a whole number, got 'eight'"),
])
def test_training_config_types_are_one_line(tiny_cache, tmp_path, capsys, old, new, key):
    cfg = write_config(tmp_path / "c.yaml", tiny_cache)
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new))
    assert train_mod.main(["--config", str(cfg), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(cfg) in err and key in err
    assert not (tmp_path / "o" / "last.pt").exists()


def test_lr_written_without_a_dot_is_a_number(tiny_cache, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_cache)
    text = cfg.read_text()
    cfg.write_text(text.replace("lr: 0.003", "lr: 1e-3"))
    assert "lr: 1e-3" in cfg.read_text() and isinstance(yaml.safe_load(cfg.read_text())["train"]["lr"], str)
    assert train_mod.load_config(cfg).train.lr == pytest.approx(1e-3)


def test_invalid_yaml_in_teacher_and_recipe_configs(tmp_path, capsys):
    from distill import train as distill_train

    bad = tmp_path / "teacher.yaml"
    bad.write_text("data:\n  dataset: x\ntrain: {epochs: 2\n")
    assert train_mod.main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:" in err and "not valid YAML" in err
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student:\n  kind: landmark\n   bad: indent\n")
    assert distill_train.main(["--recipe", str(recipe), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{recipe}:" in err and "not valid YAML" in err
    from preprocess import synthsign

    gen = tmp_path / "synth.yaml"
    gen.write_text("num_train: [4\n")
    assert synthsign.main(["--config", str(gen), "--out", str(tmp_path / "synth"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{gen}:" in err and "not valid YAML" in err
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("data:\n  dataset: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml:2: not UTF-8"):
        load_yaml(latin)


def test_a_bug_keeps_its_traceback(tiny_cache, tmp_path, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", tiny_cache)

    def buggy(*args, **kwargs):
        raise KeyError("a programming error")

    monkeypatch.setattr(train_mod, "train", buggy)
    with pytest.raises(KeyError, match="a programming error"):
        train_mod.main(["--config", str(cfg), "--out", str(tmp_path / "o")])


# ------------------------------------------------------------------------------ full disks


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    ckpt_mod.save_checkpoint(path, {"model_config": {}, "model": {"w": torch.ones(2)}})
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):  # what torch's zip writer raises on ENOSPC
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(ckpt_mod.torch, "save", full)
    with pytest.raises(WriteError) as e:
        ckpt_mod.save_checkpoint(path, {"model_config": {}, "model": {"w": torch.zeros(2)}})
    msg = str(e.value)
    assert str(path) in msg and "free disk space" in msg and "\n" not in msg
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left


def test_full_disk_while_training_is_one_line(tiny_cache, tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "c.yaml", tiny_cache, epochs=1)
    out = tmp_path / "run"

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod.torch, "save", full)
    assert train_mod.main(["--config", str(cfg), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(out) in err and "No space left on device" in err
    assert not list(out.glob(".*.tmp"))


def test_full_disk_while_writing_the_vocabulary(tmp_path, monkeypatch, capsys):
    c = keypoint_corpus(tmp_path)
    out = tmp_path / "cache"
    full_disk_under(monkeypatch, out, "vocab.json")
    assert features(c, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(out / "toy" / "vocab.json") in err and "No space left on device" in err
    assert not [p.name for p in (out / "toy").iterdir() if p.name.endswith(".tmp")]


def test_full_disk_while_caching_fails_the_stage(tmp_path, monkeypatch, capsys):
    c = keypoint_corpus(tmp_path, n=4)
    out = tmp_path / "cache"
    assert features(c, out, "--limit", "1") == 0  # manifest and vocabulary are in place
    full_disk_under(monkeypatch, out / "toy" / "train")
    assert features(c, out) == 1  # was 0: a stage whose files could not be written succeeded
    captured = capsys.readouterr()
    assert "3 of 4 utterances failed" in captured.err
    records = [json.loads(x) for x in (out / "toy" / "failures.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["k1", "k2", "k3"]
    assert all("No space left on device" in r["error"] and "toy/train/" in r["error"] for r in records)
    assert not list((out / "toy" / "train").glob(".*.tmp"))


# --------------------------------------------------------------------------- the feature cache


def test_keypoints_beyond_float16_or_all_missing_are_refused(tmp_path, capsys):
    c = keypoint_corpus(tmp_path, n=2)
    big = keypoints_for(6, 50, seed=5) * 1000.0
    big[2, 3] = 70000.0  # finite in float32, inf in the float16 cache
    c.add("pixels", video=None, keypoints="npy", t=6, kp_points=50)
    np.save(c.root / "keypoints" / "pixels.npy", big)
    c.add("nothing", video=None, keypoints="npy", t=6, kp_points=50)
    np.save(c.root / "keypoints" / "nothing.npy", np.full((6, 50, 3), np.nan, np.float32))
    out = tmp_path / "cache"
    assert features(c, out, "--max-failed-frac", "0.5") == 0
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("FAILED pixels: "))
    assert "pixels.npy" in line and "70000" in line and "65504" in line
    line = next(ln for ln in printed.splitlines() if ln.startswith("FAILED nothing: "))
    assert "nothing.npy" in line and "no keypoint" in line
    for uid in ("pixels", "nothing"):
        assert not cache_lib.utt_path(out, "toy", "train", uid).exists()
    kept = cache_lib.load_utt(cache_lib.utt_path(out, "toy", "train", "k1"))
    assert np.isfinite(kept["keypoints"].astype(np.float32)).all()


def test_every_stored_array_is_checked():
    with pytest.raises(UserError, match=r"clip.mp4: 1 non-finite values in the flow array"):
        features_mod.check_arrays({"flow": np.array([[0.0, np.inf]], np.float16)}, "clip.mp4")
    with pytest.raises(UserError, match="empty"):
        features_mod.check_arrays({"rgb": np.zeros((0, 4, 4, 3), np.uint8)}, "clip.mp4")
    features_mod.check_arrays({"rgb": np.zeros((1, 4, 4, 3), np.uint8), "flow": np.zeros((1, 2, 2, 2), np.int8)}, "ok")


def test_exit_status_tolerance_and_failures_of_this_run_only(tmp_path, capsys):
    c = keypoint_corpus(tmp_path, n=4)
    (c.root / "keypoints" / "k3.npy").write_bytes(b"not an array")
    zero = c.root / "zero.mp4"
    zero.write_bytes(b"")  # a zero-byte video beside keypoints: its row fails on its own
    out = tmp_path / "cache"
    assert features(c, out) == 1
    err = capsys.readouterr().err
    assert "1 of 4 utterances failed" in err and "--max-failed-frac" in err
    assert features(c, out, "--max-failed-frac", "0.25") == 0
    assert "1 of 4 utterances failed" in capsys.readouterr().err  # a warning now
    log = out / "toy" / "failures.jsonl"
    assert [json.loads(x)["id"] for x in log.read_text().splitlines()] == ["k3"]  # not one line per run
    np.save(c.root / "keypoints" / "k3.npy", keypoints_for(9, 50, seed=3))
    assert features(c, out) == 0
    assert not log.exists() or not log.read_text().strip()


def test_duplicate_id_and_bad_bytes_in_corpus_csv(tmp_path, capsys):
    c = keypoint_corpus(tmp_path, n=2)
    corpus = c.root / "corpus.csv"
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join([*lines, lines[1]]) + "\n")
    out = tmp_path / "cache"
    assert features(c, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{corpus.resolve()}:4: duplicate id 'k0' (first on line 2)" in err
    corpus.write_bytes("\n".join(lines).encode() + "\nk9|train|s|CAF\xc9 B||\n".encode("latin-1"))
    assert features(c, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{corpus.resolve()}:4: not UTF-8" in err and "0xc9" in err


# ---------------------------------------------------------------------------------- metadata


def test_custom_corpus_reads_fps_size_and_frames_from_the_media(tmp_path):
    root = tmp_path / "corpus"
    (root / "videos").mkdir(parents=True)
    (root / "keypoints").mkdir()
    frames = np.repeat(moving_square(14, h=48, w=64), 1, axis=0)
    frames = np.stack([cv2.resize(f, (106, 60)) for f in frames])  # 106x60: not square, not 25 fps
    write_video(root / "videos" / "clip.mp4", frames, fps=29.97)
    save_pose(root / "keypoints" / "posed.pose", keypoints_for(9, 50, seed=1).clip(0, 1),
              np.ones((9, 50), bool), "custom_50", 20.0, 640, 480)
    (root / "corpus.csv").write_text("\n".join([
        "id|split|signer|glosses|video|fps",
        "clip|train|s|A B|videos/clip.mp4|",
        "posed|train|s|A||",
        "given|dev|s|B|videos/clip.mp4|12.5",
    ]) + "\n")
    utts = {u.id: u for u in prepare_custom(root, tmp_path / "out")}
    clip = utts["clip"]
    assert clip.fps == pytest.approx(29.97, abs=0.01) and clip.num_frames == 14
    assert (clip.width, clip.height) == (106, 60)
    assert (utts["posed"].fps, utts["posed"].width, utts["posed"].height, utts["posed"].num_frames) == (20.0, 640, 480, 9)
    assert utts["given"].fps == 12.5 and utts["given"].width == 106  # the column wins, the size is read
    back = {u.id: u for u in read_manifest(tmp_path / "out" / "manifest.jsonl")}
    assert back == utts


def test_to_pose_writes_each_utterances_own_size_and_rate(tmp_path):
    from preprocess.keypoint_io import keypoint_frame_size

    c = Corpus(tmp_path, {"rgb_size": 0, "landmarks": "file", "flow": "none"})
    frames = np.stack([cv2.resize(f, (106, 60)) for f in moving_square(8)])
    write_video(c.root / "videos" / "wide.mp4", frames, fps=29.97)
    c.add("wide", video="videos/wide.mp4", t=8, seed=1)
    c.add("square", t=8, seed=2)  # 64x48 at 25 fps
    out = tmp_path / "cache"
    assert features(c, out) == 0
    poses = tmp_path / "poses"
    assert keypoint_main(["to-pose", "--cache", str(out), "--dataset", "toy", "--split", "train",
                          "--out", str(poses)]) == 0
    assert keypoint_frame_size(poses / "wide.pose") == (106, 60)
    assert keypoint_fps(poses / "wide.pose") == pytest.approx(29.97, abs=0.01)
    assert keypoint_frame_size(poses / "square.pose") == (64, 48)
    assert keypoint_fps(poses / "square.pose") == pytest.approx(25.0)


# ----------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("bom_side", ["hyp", "ref", "both"])
def test_bom_in_hypothesis_or_reference_files(tmp_path, bom_side):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("u1 A B C\nu2 D E\n", encoding="utf-8-sig" if bom_side in ("ref", "both") else "utf-8")
    hyp.write_text("u1 A B\nu2 D E\n", encoding="utf-8-sig" if bom_side in ("hyp", "both") else "utf-8")
    result = score_files(hyp, ref)
    assert [u.id for u in result.utterances] == ["u1", "u2"]
    assert (result.n_ref, result.dels, result.sub, result.ins) == (5, 1, 0, 0)


def test_empty_hypothesis_file_warns(tmp_path, caplog):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.ctm"
    ref.write_text("u1 A B\nu2 C\n")
    hyp.write_text("")
    with caplog.at_level(logging.WARNING, logger="evaluate.core.wer"):
        result = score_files(hyp, ref)
    assert result.wer == 100.0
    assert any("hyp.ctm: no hypotheses" in r.getMessage() and "2 reference" in r.getMessage() for r in caplog.records)


def test_eval_counts_missing_cache_files_as_empty(reference_run, tiny_cache, tmp_path, capsys):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    dev = read_manifest(cache / DATASET / "manifest.jsonl", "dev")
    n_words = sum(len(u.glosses) for u in dev)
    cache_lib.utt_path(cache, DATASET, "dev", dev[0].id).unlink()
    _, run = reference_run
    args = ["--ckpt", str(run / "best.pt"), "--cache", str(cache), "--split", "dev", "--beam", "1",
            "--out", str(tmp_path / "eval"), "--json"]
    assert eval_mod.main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["n_ref"] == n_words  # the reference never shrinks
    assert f"1 of {len(dev)} reference utterances" in captured.err and "[EMPTY]" in captured.err
    assert summary["del"] >= len(dev[0].glosses)


# ------------------------------------------------------------------------ training: NaN and resume


def test_non_finite_inputs_are_named_with_the_whole_batch(tiny_cache, tmp_path, capsys):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    bad = cache_lib.utt_path(cache, DATASET, "train", "train03")
    arrays = cache_lib.load_utt(bad)
    arrays["keypoints"][2:4] = np.inf  # an old cache, written before values were checked
    arrays["keypoints_mask"][2:4] = True
    meta = json.loads((cache / DATASET / "meta.json").read_text())
    cache_lib.write_npz_atomic(bad, arrays, meta["config_hash"])
    cfg = write_config(tmp_path / "c.yaml", cache, epochs=1)
    assert train_mod.main(["--config", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "['train03'] hold NaN/inf" in err and "--force" in err
    batch = err[err.index("the batch of utterances ["):].split("]")[0]
    assert "train03" in batch and batch.count("'") == 2 * 4  # all four utterances of the batch


def _crash_on(monkeypatch, *, epoch: int, before: str):
    """Make the trainer die (like a kill) just before it saves ``before`` (last.pt/best.pt) at ``epoch``."""
    real = ckpt_mod.save_checkpoint

    def save(path, state):
        if Path(path).name == before and state["epoch"] == epoch:
            raise KeyboardInterrupt("simulated kill")
        real(path, state)

    monkeypatch.setattr(train_mod, "save_checkpoint", save)


def test_resume_edge_cases_give_the_uninterrupted_metrics(reference_run, tmp_path, monkeypatch, capsys):
    cfg, ref = reference_run
    out = tmp_path / "run"
    args = ["--config", str(cfg), "--out", str(out), "--device", "cpu"]
    # 1. killed after epoch 1's metrics line, before the first last.pt
    _crash_on(monkeypatch, epoch=1, before="last.pt")
    with pytest.raises(KeyboardInterrupt):
        train_mod.main(args)
    assert len(train_mod.read_metrics(out / "metrics.jsonl")) == 1 and not (out / "last.pt").exists()
    for name in (".best.pt.k1ll3d.tmp", ".last.pt.x7.tmp", ".best.pt.tmp"):  # kill -9 inside checkpoint writes
        (out / name).write_bytes(b"x" * 1000)
    # 2. resumed, killed again before epoch 2's last.pt; then the disk filled mid-line
    _crash_on(monkeypatch, epoch=2, before="last.pt")
    with pytest.raises(KeyboardInterrupt):
        train_mod.main([*args, "--resume"])
    assert not list(out.glob(".*.tmp"))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 6, "lr": 0.00')
    # 3. resumed to the end
    monkeypatch.undo()
    capsys.readouterr()
    assert train_mod.main([*args, "--resume"]) == 0
    warning = next(ln for ln in capsys.readouterr().err.splitlines() if "torn" in ln)
    assert f"{out / 'metrics.jsonl'}: dropped torn line(s) [3]" in warning
    assert metrics_without_clock(out / "metrics.jsonl") == metrics_without_clock(ref / "metrics.jsonl")
    full, resumed = (ckpt_mod.load_checkpoint(d / "last.pt").raw for d in (ref, out))
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


def test_kill_9_during_training_resumes_to_the_same_run(reference_run, tmp_path):
    cfg, ref = reference_run
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "models.train", "--config", str(cfg), "--out", str(out), "--device", "cpu",
           "--epochs", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the thread count of this process (conftest): same sums
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None, "training ended before its first epoch was logged"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(random.Random(0).uniform(0.0, 0.05))  # somewhere in epoch 2 or its checkpoint writes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert train_mod.main(["--config", str(cfg), "--out", str(out), "--device", "cpu", "--resume"]) == 0
    assert metrics_without_clock(out / "metrics.jsonl") == metrics_without_clock(ref / "metrics.jsonl")
    full, resumed = (ckpt_mod.load_checkpoint(d / "last.pt").raw for d in (ref, out))
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------------- orphans


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields_ = stat[stat.rindex(")") + 2:].split()
            if fields_[0] != "Z":
                parents[int(entry.name)] = int(fields_[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in out}
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_features_leaves_no_worker_behind(tmp_path):
    c = Corpus(tmp_path, {"rgb_size": 24, "landmarks": "file", "flow": {"method": "tvl1", "size": 16}})
    for i in range(10):
        c.add(f"v{i}", t=12, seed=i)
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "preprocess.features", "--dataset", str(c.yaml), "--cache", str(out),
           "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("toy/train/*.npz")):  # the workers are running jobs
            assert proc.poll() is None, "the run ended before any file appeared"
            assert time.monotonic() < deadline
            children |= _children(proc.pid)
            time.sleep(0.01)
        children |= _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(children) >= 2  # the two workers (and the pool's helpers)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = sorted(p for p in children if _alive(p))
    for p in left:  # do not leak them into the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes outlived their killed driver: {left}"
    assert len(list(out.glob("toy/train/*.npz"))) < 10  # really interrupted


def test_atomic_text_write_names_the_file_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "vocab.json"
    full_disk_under(monkeypatch, tmp_path)
    with pytest.raises(WriteError, match=r"vocab.json: could not write the file \(No space left on device\)"):
        atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []
