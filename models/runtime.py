"""What a training run needs from its process: accelerator and precision, torch.compile, the
GPU-memory guard, RNG states and determinism, and the torchrun process group.

Kept apart from the training loop (``models.train``) so that benchmarks (``evaluate.speed``)
run the same steps without it.
"""
from __future__ import annotations

import logging
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from preprocess.device import resolve_device

if TYPE_CHECKING:
    from models.train import TrainConfig

log = logging.getLogger("models.train")  # its messages belong to the training run's log


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``: bfloat16 on GPUs that have it (same exponent range as
    float32: no loss scaling), float16 on older ones; None (plain float32) on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for float16 (bfloat16 and float32 gradients do not underflow)."""
    return torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """Convolution weights in NHWC on CUDA (tensor cores read that layout; convolutions then return it too).

    In place (parameters keep their identity, so an optimizer built before still holds them);
    a no-op on CPU and for models without 2D convolutions.
    """
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


class _CompiledOrEager(nn.Module):
    """``torch.compile`` of a module that falls back to the module itself, with one warning, when
    compiling fails (no compiler toolchain, an unsupported op); parameters are shared."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.eager = module
        self.compiled: Callable | None = torch.compile(module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # compile errors surface at the first call, typed by the backend
                log.warning("torch.compile failed (%s: %s); training eagerly", type(e).__name__,
                            " ".join(str(e).split())[:200])
                self.compiled = None
        return self.eager(*args, **kwargs)


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` compiled (train.compile) with an eager fallback, or ``module`` itself."""
    if not enabled:
        return module
    try:
        return _CompiledOrEager(module)
    except Exception as e:  # torch.compile itself refuses (e.g. an unsupported Python)
        log.warning("torch.compile unavailable (%s: %s); training eagerly", type(e).__name__, e)
        return module


class BatchTooLarge(ValueError):
    """A batch did not fit in GPU memory; the message names its size and the fix."""


@contextmanager
def oom_guard(lengths: Tensor, tc: TrainConfig) -> Iterator[None]:
    """Turn a CUDA out-of-memory error in a training step into one line naming the batch."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        b, t = len(lengths), int(lengths.max()) if len(lengths) else 0
        budget = f"now {tc.frame_budget}" if tc.frame_budget else "now unset"
        raise BatchTooLarge(
            f"CUDA out of memory on a batch of {b} clip(s) x {t} frames ({b * t} padded frames, "
            f"{int(lengths.sum())} real); lower the frame budget (train.frame_budget, {budget}; e.g. "
            f"{max(t, b * t // 2)}) or train.batch_size ({tc.batch_size})") from None


# ------------------------------------------------------------------ RNG and DDP


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain values/tensors (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_deterministic(threads: int) -> None:
    """Same seed, same weights: a fixed CPU thread count and torch's deterministic kernels.

    Reductions split across a different number of threads sum in a different order, so the
    thread count is part of the run's config (``train.threads``), not the machine's load.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Dist:
    rank: int = 0  # global rank (0 writes files)
    world: int = 1  # number of processes
    device: torch.device = torch.device("cpu")  # this process's device

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    """Processes of this training: torchrun's WORLD_SIZE, 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: str) -> Dist:
    """Pick the device and, under torchrun (RANK/WORLD_SIZE set), join the process group."""
    use_cuda = resolve_device(device).type == "cuda"
    world = world_size()
    if world <= 1:
        return Dist(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu"))


def all_finite(x: Tensor, d: Dist) -> bool:
    """True when ``x`` is finite on every rank (so all ranks stop together)."""
    ok = torch.isfinite(x.detach()).all().float().reshape(1)
    if d.world > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


