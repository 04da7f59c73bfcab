"""Optical flow against known synthetic shifts, storage round trips, and RAFT plumbing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from preprocess import flow as flow_mod
from preprocess.flow import FlowConfig, compute_flow, dequantize_flow, flow_scale, quantize_flow


def _texture(n: int, seed: int = 0) -> np.ndarray:
    """A smooth random grey texture (uint8 [n, n]): trackable at every pixel."""
    noise = np.random.default_rng(seed).random((n, n)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (noise * 255).astype(np.uint8)


def _shifted_pair(n: int, dx: int, dy: int) -> np.ndarray:
    """Two RGB frames [2, n, n, 3]; the content of the second has moved by (+dx, +dy)."""
    pad = 8
    big = _texture(n + 2 * pad)
    a = big[pad:pad + n, pad:pad + n]
    b = big[pad - dy:pad - dy + n, pad - dx:pad - dx + n]
    return np.stack([np.repeat(a[..., None], 3, -1), np.repeat(b[..., None], 3, -1)])


@pytest.mark.parametrize("cfg", [
    FlowConfig(method="dis", size=64),
    FlowConfig(method="dis", size=64, dis_preset="ultrafast"),
    FlowConfig(method="farneback", size=64),
    FlowConfig(method="tvl1", size=64),
], ids=["dis-fast", "dis-ultrafast", "farneback", "tvl1"])
def test_known_shift(cfg):
    frames = _shifted_pair(64, dx=2, dy=1)
    out = compute_flow(frames, cfg)
    assert out.shape == (2, 2, 64, 64) and out.dtype == np.float32
    inner = out[0, :, 8:-8, 8:-8]  # borders see content entering the frame
    assert np.median(inner[0]) == pytest.approx(2.0, abs=0.3)
    assert np.median(inner[1]) == pytest.approx(1.0, abs=0.3)
    assert (out[1] == 0).all()  # the last frame has no successor


def test_flow_is_in_pixels_of_the_resized_frame():
    frames = _shifted_pair(128, dx=4, dy=2)  # halved to 64x64: a (2, 1) pixel shift there
    out = compute_flow(frames, FlowConfig(method="dis", size=64))
    assert out.shape == (2, 2, 64, 64)
    assert np.median(out[0, 0, 8:-8, 8:-8]) == pytest.approx(2.0, abs=0.3)
    assert np.median(out[0, 1, 8:-8, 8:-8]) == pytest.approx(1.0, abs=0.3)


@pytest.mark.parametrize("method", ["dis", "farneback", "tvl1"])
def test_identical_frames_give_zero_flow(method):
    still = np.repeat(_shifted_pair(56, 0, 0)[:1], 3, axis=0)  # [3, 56, 56, 3], all equal
    out = compute_flow(still, FlowConfig(method=method, size=56))
    assert out.shape == (3, 2, 56, 56)
    assert np.abs(out).max() < 0.1  # Farneback's polynomial fit leaves a few hundredths at borders
    assert np.abs(out).mean() < 0.01


def test_short_videos_and_disabled_flow():
    one = _shifted_pair(32, 0, 0)[:1]
    assert (compute_flow(one, FlowConfig(size=16)) == 0).all()
    assert compute_flow(one[:0], FlowConfig(size=16)).shape == (0, 2, 16, 16)
    with pytest.raises(ValueError, match="none"):
        compute_flow(one, FlowConfig(method="none"))
    with pytest.raises(ValueError, match="uint8"):
        compute_flow(one.astype(np.float32), FlowConfig())


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_quantize_round_trip(dtype):
    cfg = FlowConfig(dtype=dtype, clip=10.0)
    rng = np.random.default_rng(1)
    flow = rng.uniform(-12, 12, size=(5, 2, 8, 8)).astype(np.float32)  # some beyond +-clip
    q = quantize_flow(flow, cfg)
    assert q.dtype == np.dtype(dtype) and q.shape == flow.shape
    back = dequantize_flow(q, flow_scale(cfg))
    assert back.dtype == np.float32
    expected = np.clip(flow, -10, 10)
    bound = flow_scale(cfg) / 2 if dtype == "int8" else 10 * 2.0 ** -11  # float16: half an ulp at 10
    assert np.abs(back - expected).max() <= bound + 1e-6
    assert np.abs(back).max() <= 10 + 1e-6
    if dtype == "int8":
        assert flow_scale(cfg) == pytest.approx(10 / 127) and np.abs(q.astype(int)).max() == 127


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "raft_small", "size": 56}, "size>=128"),
    ({"method": "raft_large", "size": 132}, "multiple of 8"),
    ({"method": "pwc"}, "'pwc'"),
    ({"dtype": "int16"}, "'int16'"),
    ({"clip": 0}, "clip"),
    ({"device": "tpu"}, "'tpu'"),
])
def test_invalid_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowConfig(**kwargs)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    flow_mod._estimator.cache_clear()
    yield tmp_path
    flow_mod._estimator.cache_clear()


def test_raft_without_weights_is_a_clear_error(empty_hub):
    frames = _shifted_pair(128, 0, 0)
    with pytest.raises(ValueError, match="raft_weights=PATH.*method='dis'"):
        compute_flow(frames, FlowConfig(method="raft_small", size=128))
    with pytest.raises(ValueError, match="not found"):
        compute_flow(frames, FlowConfig(method="raft_small", size=128, raft_weights=str(empty_hub / "no.pth")))


def test_raft_runs_with_a_local_checkpoint(empty_hub):
    import torch

    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights = empty_hub / "raft_small_random.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)
    cfg = FlowConfig(method="raft_small", size=128, raft_weights=str(weights), device="cpu", raft_iters=2)
    out = compute_flow(_shifted_pair(128, 2, 1), cfg)
    assert out.shape == (2, 2, 128, 128) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out[1] == 0).all()
    # the same file found through the torch hub cache, as torchvision would have stored it
    (empty_hub / "hub" / "checkpoints").mkdir(parents=True)
    weights.rename(empty_hub / "hub" / "checkpoints" / "raft_small_C_T_V2-01064c6d.pth")
    assert flow_mod.resolve_raft_weights(FlowConfig(method="raft_small", size=128)).name.startswith("raft_small")


def test_raft_rejects_a_foreign_checkpoint(empty_hub):
    import torch

    bogus = empty_hub / "bogus.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, bogus)
    with pytest.raises(ValueError, match="not a torchvision raft_small checkpoint"):
        compute_flow(_shifted_pair(128, 0, 0), FlowConfig(method="raft_small", size=128, raft_weights=str(bogus)))


def test_real_clip_has_motion(shared_dir):
    from preprocess.video import read_frames

    frames, _ = read_frames(shared_dir / "clips" / "wlasl_68011_book.mp4", max_frames=12)
    out = compute_flow(frames, FlowConfig(size=56))
    assert out.shape == (12, 2, 56, 56) and np.isfinite(out).all()
    speed = np.linalg.norm(out[:-1], axis=1)  # [T-1, 56, 56]
    assert speed.max() > 0.5  # the signer moves
    assert np.median(speed) < 0.5  # most of the frame (background) does not
