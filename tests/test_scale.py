"""The PHOENIX-scale benchmark's report (shape only, toy sizes), the loader's IO paths, the frame
budget, and the CUDA-path helpers of the trainer that can be checked on a CPU."""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluate import scale
from models import runtime
from models import train as train_mod
from models.base import ModelOutput
from models.checkpoint import load_checkpoint
from models.data import (BucketBatchSampler, CacheDataset, collate, collate_uint8, make_loader, mmap_utt,
                         to_device)
from preprocess import cache as cache_lib
from preprocess.device import DeviceError, resolve_device
from test_data import DATASET, make_tiny_cache
from test_train import write_config

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache"))


def _num_frames_csv(path: Path, counts) -> Path:
    path.write_text("id,num_frames\n" + "".join(f"v{i},{n}\n" for i, n in enumerate(counts)))
    return path


# ----------------------------------------------------------------------------- the benchmark


def test_toy_benchmark_report_shape(tmp_path, capsys):
    counts = np.random.default_rng(0).integers(40, 300, 60)
    csv = _num_frames_csv(tmp_path / "train.num_frames.csv", counts)
    out = tmp_path / "scale.json"
    assert scale.main(["--toy", "--num-frames-csv", str(csv), "--clips", "3", "--threads", "1",
                       "--device", "cpu", "--json", str(out), "--cache", str(tmp_path / "c")]) == 0
    rep = json.loads(out.read_text())
    want = [max(2, round(int(q) / scale.TOY["frame_divisor"]))
            for q in np.quantile(counts, [1 / 6, 3 / 6, 5 / 6], method="nearest")]
    assert rep["sample_lengths"] == want
    assert rep["phoenix14"]["clips"] == 60 and rep["phoenix14"]["frames"] == int(counts.sum())
    assert [r["model"] for r in rep["training"]] == list(scale.MODELS)
    for r in rep["training"]:
        assert r["clips_per_s"] > 0 and r["frames_per_s"] > 0 and r["peak_bytes"] >= 0 and r["epoch_s"] > 0
        assert r["memory"] == "cpu_rss_increase" and r["steps"] == 1 and r["batch_size"] == 1
    assert rep["loader"]["clips"] > 0 and rep["loader"]["frames_per_s"] > 0
    # bytes per frame: the arrays' own sizes plus a little zip/npy header per file
    cfg = rep["config"]
    raw = (cfg["rgb_size"] ** 2 * 3 + cfg["num_keypoints"] * 3 * 2 + cfg["num_keypoints"]
           + 2 * cfg["flow_size"] ** 2)
    files = sorted((tmp_path / "c" / scale.DATASET / "train").glob("*.npz"))
    assert len(files) == 3
    assert rep["cache"]["bytes"] == sum(f.stat().st_size for f in files)
    assert raw <= rep["cache"]["bytes_per_frame"] <= raw * 1.1
    v = rep["verdict"]
    assert v["heaviest"] in scale.MODELS[:4] and v["ratio"] == pytest.approx(
        rep["loader"]["frames_per_s"] / min(r["frames_per_s"] for r in rep["training"][:4]))
    table = capsys.readouterr().out
    assert table.count("\n| ") == 1 + len(scale.MODELS) and "Loader / heaviest teacher" in table


def test_benchmark_bad_input_is_one_line(tmp_path, capsys):
    assert scale.main(["--toy", "--num-frames-csv", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "none.csv" in err and "--num-frames-csv" in err and "\n" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,frames\na,3\n")
    assert scale.main(["--toy", "--num-frames-csv", str(bad)]) == 2
    assert "id,num_frames" in capsys.readouterr().err


# ----------------------------------------------------------------------------- devices


@NO_CUDA
def test_device_cuda_without_gpu_is_one_line_everywhere(cache, tmp_path, capsys):
    with pytest.raises(DeviceError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="not a device"):
        resolve_device("tpu9")
    assert resolve_device("auto").type == "cpu"
    cfg = write_config(tmp_path / "kp.yaml", cache, epochs=1)
    from distill import train as distill_train
    from evaluate import eval as eval_mod

    calls = {
        "models.train": lambda: train_mod.main(["--config", str(cfg), "--out", str(tmp_path / "r"), "--device", "cuda"]),
        "distill.train": lambda: distill_train.main(["--recipe", "kdmslrt", "--cache", str(cache), "--device", "cuda",
                                                     "--out", str(tmp_path / "s")]),
        "evaluate.eval": lambda: eval_mod.main(["--ckpt", str(tmp_path / "x.pt"), "--cache", str(cache),
                                                "--device", "cuda"]),
        "evaluate.scale": lambda: scale.main(["--toy", "--device", "cuda"]),
    }
    for name, call in calls.items():
        assert call() == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no CUDA GPU is visible" in err[0] and "--device cpu" in err[0], (name, err)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_raft_device_uses_the_same_check(monkeypatch):
    from preprocess.flow import FlowConfig, _RaftFlow

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="--flow-device cuda: no CUDA GPU"):
        _RaftFlow(FlowConfig(method="raft_small", size=128, device="cuda"), random_init=True)


# ----------------------------------------------------------------------------- trainer CUDA paths


def test_ctc_loss_is_float32_under_autocast():
    torch.manual_seed(0)
    b, t, v, d = 3, 40, 12, 16
    head = torch.nn.Linear(d, v)
    x = torch.randn(b, t, d)
    targets, tl = torch.randint(1, v, (12,)), torch.tensor([4, 5, 3])
    out_lengths = torch.tensor([40, 31, 25])

    def loss_of(logits):
        out = ModelOutput(logits={"main": logits}, out_lengths=out_lengths)
        return train_mod.ctc_loss_levels(out, targets, tl, {"main": 1.0})[0].detach()

    ref = loss_of(head(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)  # bf16 under autocast
        loss = loss_of(logits)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(ref), rel=2e-2)
    # the same bf16 logits outside autocast: the helper gives the identical float32 loss
    assert float(loss) == pytest.approx(float(loss_of(logits.detach())), rel=1e-6)


def test_autocast_dtype_and_scaler_on_cpu():
    assert runtime.autocast_dtype(torch.device("cpu"), True) is None
    assert not runtime.make_scaler(None).is_enabled()
    assert not runtime.make_scaler(torch.bfloat16).is_enabled()  # bf16 needs no loss scaling
    m = torch.nn.Conv2d(3, 4, 3)
    runtime.channels_last(m, torch.device("cpu"))
    assert m.weight.is_contiguous()  # CPU: layout untouched


def test_out_of_memory_becomes_one_line_with_the_batch():
    tc = train_mod.TrainConfig(batch_size=4, frame_budget=800)
    with pytest.raises(runtime.BatchTooLarge) as e:
        with runtime.oom_guard(torch.tensor([180, 200, 150]), tc):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    msg = str(e.value)
    assert "\n" not in msg and "3 clip(s) x 200 frames" in msg and "lower the frame budget" in msg
    assert "now 800" in msg and e.value.__cause__ is None


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken(module):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    lin = torch.nn.Linear(3, 2)
    net = runtime.maybe_compile(lin, True)
    x = torch.randn(4, 3)
    with caplog.at_level(logging.WARNING, logger="models.train"):
        assert torch.equal(net(x), lin(x)) and torch.equal(net(x), lin(x))
    assert sum("torch.compile failed" in r.message for r in caplog.records) == 1  # warned once
    monkeypatch.setattr(torch, "compile", lambda m: (_ for _ in ()).throw(RuntimeError("unsupported")))
    assert runtime.maybe_compile(lin, True) is lin
    assert runtime.maybe_compile(lin, False) is lin


def _as_saved_on_gpu(src: Path, dst: Path) -> None:
    """Rewrite a torch.save file so every storage is tagged cuda:0, as a GPU run writes it."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00cpu") == 1
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)


@NO_CUDA
def test_checkpoint_from_a_gpu_resumes_on_cpu(cache, tmp_path):
    cfg = write_config(tmp_path / "kp.yaml", cache, epochs=1)
    run = tmp_path / "run"
    assert train_mod.main(["--config", str(cfg), "--out", str(run), "--device", "cpu"]) == 0
    _as_saved_on_gpu(run / "last.pt", tmp_path / "gpu.pt")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(tmp_path / "gpu.pt", weights_only=True)  # the file really says cuda
    (tmp_path / "gpu.pt").replace(run / "last.pt")
    ck = load_checkpoint(run / "last.pt")
    assert all(v.device.type == "cpu" for v in ck.weights.values())
    assert train_mod.main(["--config", str(cfg), "--out", str(run), "--device", "cpu", "--resume", "--epochs", "2"]) == 0
    assert load_checkpoint(run / "last.pt").epoch == 2


# ----------------------------------------------------------------------------- loader


def test_mmap_reader_matches_np_load(cache):
    for path in sorted((cache / DATASET / "train").glob("*.npz"))[:3]:
        names = ("rgb", "keypoints", "keypoints_mask", "flow")
        mm, ref = mmap_utt(path, names), cache_lib.load_utt(path, names)
        for k in names:
            assert isinstance(mm[k], np.memmap) and mm[k].dtype == ref[k].dtype
            assert np.array_equal(mm[k], ref[k])
    with pytest.raises(KeyError, match="cache file has no"):
        mmap_utt(path, ("rgb", "nope"))


def test_uint8_batches_equal_float_batches_after_to_device(cache):
    from models.data import AugmentConfig

    ds = CacheDataset(cache, DATASET, "train", ("rgb", "keypoints", "flow"), AugmentConfig(crop_size=12), seed=3)
    items = [ds[i] for i in range(3)]
    assert items[0]["inputs"]["rgb"].dtype == torch.uint8
    f, u = collate(items), collate_uint8(items)
    assert u[0]["rgb"].dtype == torch.uint8 and u[0]["rgb"].is_contiguous()
    moved = to_device(u[0], "cpu")
    for k in f[0]:
        assert torch.equal(moved[k], f[0][k]), k


def test_frame_budget_batches(cache):
    lengths = [5, 50, 48, 7, 30, 31, 200, 12, 49, 6, 29, 11]
    s = BucketBatchSampler(lengths, batch_size=4, seed=1, max_frames=100)
    s.set_epoch(2)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each item once
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 4 and (len(b) * longest <= 100 or len(b) == 1)
    assert [200] in [[lengths[i] for i in b] for b in batches]  # over budget: alone
    assert len(s) == len(batches) and list(s) == batches  # deterministic per epoch
    ranks = [list(BucketBatchSampler(lengths, 4, seed=1, max_frames=100, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    plain = BucketBatchSampler(lengths, 4, seed=1)
    assert all(len(b) == 4 for b in list(plain))  # no budget: batch_size alone


def test_persistent_workers_see_the_epoch(cache):
    from models.data import AugmentConfig

    ds = CacheDataset(cache, DATASET, "train", ("rgb",), AugmentConfig(crop_size=12), seed=0)
    sampler = BucketBatchSampler(ds.lengths, 2, shuffle=False)
    loader = make_loader(ds, sampler, collate_uint8, 1, "cpu")
    assert loader.persistent_workers and not loader.pin_memory
    seen = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen.append(next(iter(loader))[0]["rgb"])
    ds.set_epoch(1)
    in_process = collate_uint8([ds[i] for i in next(iter(sampler))])[0]["rgb"]
    assert torch.equal(seen[1], in_process) and not torch.equal(seen[0], seen[1])


def test_bench_scale_bad_input_and_frame_totals(tmp_path, capsys):
    from preprocess import bench

    csv = _num_frames_csv(tmp_path / "train.num_frames.csv", [10, 20, 30])
    _num_frames_csv(tmp_path / "dev.num_frames.csv", [5])
    assert bench.read_frame_total(csv) == 60 and bench.read_frame_total(tmp_path / "none.csv") is None
    assert bench.main(["--scale", "--num-frames-csv", str(tmp_path / "none.csv"), "--flow-device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "none.csv" in err and "\n" not in err
    assert bench.main(["--scale", "--num-frames-csv", str(csv), "--workers-list", "0", "--flow-device", "cpu"]) == 2
    assert "--workers-list" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench.main(["--scale", "--num-frames-csv", str(csv), "--flow-device", "cuda"]) == 2
        assert "--flow-device cuda: no CUDA GPU" in capsys.readouterr().err
