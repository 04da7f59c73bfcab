"""`make teacher`: train a CSLR model with multi-level CTC on the feature cache.

    python -m models.train --config configs/teachers/synthsign_fusion_late.yaml [--resume]

The YAML has three sections: ``data`` (:class:`DataConfig`), ``model`` (a
``models.build.ModelConfig`` dict) and ``train`` (:class:`TrainConfig`). Every epoch writes
``last.pt`` atomically (model config, input spec, vocabulary, cache config, optimizer,
scheduler, RNG states), ``best.pt`` when the dev WER improves, a line of ``metrics.jsonl``
and ``train.log``. ``--resume`` continues from ``last.pt`` exactly: a resumed run ends with
the same weights as an uninterrupted one. Under ``torchrun`` the model is wrapped in
DistributedDataParallel (nccl on CUDA, gloo on CPU) and only rank 0 writes files.

Other trainers reuse this loop through :class:`TrainHooks` (``distill.train``: a student
factory, a distillation loss added to the CTC loss, projectors trained beside the model,
a training set that carries cached teacher outputs) instead of copying it.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from evaluate.core.decode import decode_outputs
from evaluate.core.normalize import RULE_NAMES
from models.base import InputSpec, ModelOutput
from models.build import ModelConfig, build_model
from models.checkpoint import check_compatible, load_checkpoint, remove_stale_temps, save_checkpoint, spec_to_dict
from models.runtime import (Dist, all_finite, autocast_dtype, channels_last, make_deterministic, make_scaler,
                            maybe_compile, oom_guard, rng_state, seed_everything, set_rng_state, setup_distributed)
from models.data import (AugmentConfig, BucketBatchSampler, CacheDataset, collate_uint8, make_loader,
                         meta_config, to_device)
from preprocess.commandline import add_cache, add_device, add_out, command, prog
from preprocess.configs import ConfigError, from_dict, load_yaml, preset_dir, preset_names, preset_path
from preprocess.files import atomic_write_text

if TYPE_CHECKING:
    from models.students import StudentConfig

log = logging.getLogger("models.train")  # not __name__: that is "__main__" under python -m
LOGGERS = ("models", "evaluate", "distill")  # packages whose log lines reach stderr and train.log

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")
DEFAULT_LEVEL_WEIGHTS = {"main": 1.0, "conv_main": 1.0, "rgb": 0.5, "keypoints": 0.5, "flow": 0.5}


@dataclass(frozen=True)
class DataConfig:
    dataset: str  # dataset name: the sub-folder of the cache root
    cache: str = "cache"  # cache root folder (``make features`` output)
    streams: tuple[str, ...] = ()  # cache streams to load; empty = the model's streams
    train_split: str = "train"  # split trained on
    dev_split: str = "dev"  # split that selects best.pt by WER
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # train-time augmentation


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40  # passes over the training split
    batch_size: int = 8  # utterances per batch (per process under DDP)
    lr: float = 1e-3  # peak learning rate (after warmup)
    weight_decay: float = 1e-4  # decoupled for adamw, L2 for adam
    optimizer: str = "adamw"  # "adam" | "adamw"
    schedule: str = "cosine"  # "cosine" | "step" | "constant", after a linear warmup
    warmup_epochs: float = 1.0  # linear warmup length, in epochs (fractions allowed)
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    step_epochs: tuple[int, ...] = ()  # "step": epochs at which lr is multiplied by step_gamma
    step_gamma: float = 0.1  # "step": decay factor
    grad_clip: float = 5.0  # max global gradient norm (0: no clipping)
    level_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LEVEL_WEIGHTS))  # CTC weight per output level (fnmatch patterns allowed, e.g. "conv_*"); levels not listed weigh 0
    seed: int = 0  # seeds init, augmentation, batch order and dropout
    num_workers: int = 0  # DataLoader worker processes
    amp: bool = True  # CUDA only: bfloat16 autocast where the GPU has it, else float16 + grad scaling
    frame_budget: int = 0  # max padded frames (clips x longest) per batch, besides batch_size (0: no budget)
    compile: bool = False  # torch.compile the model (falls back to eager with a warning where it fails)
    beam: int = 1  # dev decoding beam (1: greedy)
    eval_every: int = 1  # decode dev every N epochs (and always after the last one)
    rules: str = "none"  # WER normalisation rules, one of evaluate.core.normalize.RULE_NAMES
    # CPU intra-op threads (0: torch's default). Fixed, so a seed gives the same weights on every run;
    # small models train fastest on one thread, and two runs side by side do not fight over cores.
    threads: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_epochs", tuple(int(e) for e in self.step_epochs))
        object.__setattr__(self, "level_weights", {str(k): float(v) for k, v in dict(self.level_weights).items()})
        for name in ("epochs", "batch_size", "eval_every", "beam"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr!r}")
        if int(self.threads) < 0:
            raise ValueError(f"train.threads must be >= 0 (0: torch's default), got {self.threads!r}")
        if self.frame_budget < 0:
            raise ValueError(f"train.frame_budget must be >= 0 (0: none), got {self.frame_budget!r}")
        if self.warmup_epochs < 0 or self.grad_clip < 0 or self.weight_decay < 0 or self.num_workers < 0:
            raise ValueError("train.warmup_epochs, grad_clip, weight_decay and num_workers must be >= 0, got "
                             f"{self.warmup_epochs}, {self.grad_clip}, {self.weight_decay}, {self.num_workers}")
        if any(w < 0 for w in self.level_weights.values()) or not any(self.level_weights.values()):
            raise ValueError(f"train.level_weights must be >= 0 with at least one > 0, got {self.level_weights}")
        if self.rules not in RULE_NAMES:
            raise ValueError(f"train.rules must be one of {', '.join(RULE_NAMES)}, got {self.rules!r}")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig | StudentConfig  # anything with to_dict(); students need data.streams and TrainHooks.build_model
    train: TrainConfig


Batch = Sequence[Any]  # (inputs, lengths, targets, target_lengths, ids, *whatever the hooks' collate adds)


@dataclass(frozen=True)
class TrainHooks:
    """What a trainer built on this loop changes; every default reproduces ``make teacher``."""

    build_model: Callable[[int, InputSpec], nn.Module] | None = None  # (vocab size, spec) -> model; default build_model(cfg.model)
    model_config: dict[str, Any] | None = None  # saved as "model_config" (default cfg.model.to_dict())
    extra_loss: Callable[[ModelOutput, Batch, int], tuple[Tensor, dict[str, Tensor]]] | None = None  # (out, batch, epoch) -> (loss added to CTC, parts for the logs)
    extra_modules: nn.Module | None = None  # trained beside the model (e.g. KD projectors); saved as "extra_modules"
    train_data: Callable[[CacheDataset], Dataset] | None = None  # wraps the training split (needs .lengths, .set_epoch)
    collate: Callable[[list[Any]], Batch] | None = None  # collate of the wrapped training items (default models.data.collate)
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)  # more entries for every checkpoint


class WithExtras(nn.Module):
    """The model plus modules trained beside it, as one module for the optimizer and DDP."""

    def __init__(self, model: nn.Module, extra: nn.Module) -> None:
        super().__init__()
        self.model, self.extra = model, extra

    def forward(self, inputs: dict[str, Tensor], lengths: Tensor) -> ModelOutput:
        return self.model(inputs, lengths)


def _dataclass_from(cls: type, d: dict[str, Any] | None, section: str, where: str = "") -> Any:
    return from_dict(cls, d, where, section)


def load_config(path: str | os.PathLike, cache: str | None = None, epochs: int | None = None) -> RunConfig:
    """Parse a training YAML (a path, or a preset name: ``teachers/<name>.yaml``); ``cache``/``epochs``
    override the file (command-line flags)."""
    path = preset_path(path)
    if not path.is_file() and not path.suffix and len(path.parts) == 1:
        path = preset_dir("teachers") / f"{path}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: config not found; give a YAML path or a teacher preset name "
                          f"({', '.join(preset_names('teachers'))})")
    raw = load_yaml(path, "training config")
    unknown = sorted(set(raw) - {"data", "model", "train"})
    if unknown or "data" not in raw:
        raise ConfigError(f"{path}: needs sections data/model/train, got {sorted(raw)}")
    data = dict(raw["data"] or {})
    data["streams"] = data.get("streams") or ()
    if cache is not None:
        data["cache"] = cache
    try:
        train = _dataclass_from(TrainConfig, raw.get("train"), "train", str(path))
        if epochs is not None:
            train = replace(train, epochs=epochs)
        return RunConfig(_dataclass_from(DataConfig, data, "data", str(path)),
                         ModelConfig.from_dict(raw.get("model") or {}), train)
    except (TypeError, ValueError) as e:  # one line that names the file once
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


# ----------------------------------------------------------------------------- loss


def level_weight(weights: dict[str, float], level: str) -> float:
    """Weight of an output level: an exact key first, else the first matching fnmatch pattern, else 0."""
    if level in weights:
        return weights[level]
    return next((w for pat, w in weights.items() if fnmatch.fnmatchcase(level, pat)), 0.0)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a ``metrics.jsonl`` (empty when absent); a torn line (written while
    being read) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _trim_metrics(path: Path, epochs_done: int) -> None:
    """Keep the ``metrics.jsonl`` lines of the epochs a run restarts after (a crash may have left
    lines of epochs whose checkpoint was never written, or a torn last line)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    keep, torn = [], []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            torn.append(n)
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= epochs_done:
            keep.append(line)
    if torn:
        log.warning("%s: dropped torn line(s) %s (a crash while writing them); those epochs are trained again",
                    path, torn)
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def ctc_loss_levels(out: ModelOutput, targets: Tensor, target_lengths: Tensor,
                    weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of CTC losses over the model's output levels.

    Args:
        out: model output; every level is [B, T', V] logits (or log-probabilities).
        targets: [sum L] concatenated target ids; target_lengths: [B].
        weights: level -> weight; levels the model does not output are ignored.

    Each level's loss is ``F.ctc_loss`` (mean over target lengths, then over the batch) with
    ``zero_infinity`` so an infeasible alignment contributes nothing instead of inf.
    Unweighted levels enter as ``0 * sum`` so every head stays in the graph (DDP needs it).
    The loss is computed in float32 with autocast switched off, whatever the logits' dtype: the
    CTC forward-backward sums probabilities over long paths and under- or overflows in 16 bits.
    """
    with torch.autocast(out.out_lengths.device.type, enabled=False):
        return _ctc_loss_levels_fp32(out, targets, target_lengths, weights)


def _ctc_loss_levels_fp32(out: ModelOutput, targets: Tensor, target_lengths: Tensor,
                          weights: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    total = torch.zeros((), device=out.out_lengths.device)
    parts: dict[str, Tensor] = {}
    for level, logits in out.logits.items():
        w = level_weight(weights, level)
        if w == 0:
            total = total + logits.float().sum() * 0.0
            continue
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [B, T', V] -> [T', B, V]
        loss = F.ctc_loss(log_probs, targets, out.out_lengths, target_lengths, blank=0,
                          reduction="mean", zero_infinity=True)
        total = total + w * loss
        parts[level] = loss.detach()
    return total, parts


# ------------------------------------------------------------------- optimisation


def make_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)


def lr_factor(step: int, tc: TrainConfig, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear warmup, then the schedule."""
    warm = int(round(tc.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    if tc.schedule == "cosine":
        total = max(1, tc.epochs * steps_per_epoch - warm)
        progress = min(1.0, (step - warm) / total)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if tc.schedule == "step":
        epoch = step // max(1, steps_per_epoch)
        return tc.step_gamma ** sum(epoch >= m for m in tc.step_epochs)
    return 1.0


class TrainingStopped(RuntimeError):
    """Training cannot go on (non-finite loss); the message says what to do."""


def _stop_message(problem: str, epoch: int, step: int, ids: Sequence[str], inputs: dict[str, Tensor],
                  last_path: Path, dc: DataConfig) -> str:
    """Why training stopped on this batch: every utterance in it, and those whose inputs are not finite
    or beyond float16's range (no cached stream holds such values legitimately)."""
    where = (f"the last good checkpoint {last_path} (epoch {epoch}) is kept" if last_path.exists()
             else "no checkpoint was written yet")
    bad = sorted({ids[i] for x in inputs.values() if x.is_floating_point()
                  for i in (~(x.detach().abs() <= 65504).flatten(1).all(1)).nonzero().flatten().tolist()})
    if bad:
        advice = (f"the cached inputs of {bad} hold NaN/inf or huge values: rebuild them "
                  f"(`python -m preprocess.features --dataset {dc.dataset} --force`) or drop them, then rerun with --resume")
    else:
        advice = "lower train.lr or train.grad_clip, check those utterances, then rerun with --resume"
    return (f"epoch {epoch + 1} step {step + 1}: {problem} on the batch of utterances {list(ids)}; training "
            f"stopped and {where}. {advice[0].upper() + advice[1:]}")


# ----------------------------------------------------------------------- dev


@torch.no_grad()
def evaluate_dev(model: nn.Module, loader: DataLoader, dataset: CacheDataset, tc: TrainConfig,
                 device: torch.device, amp: torch.dtype | None):
    """Decode the dev split (``amp``: the autocast dtype, None for float32); returns (ScoreResult, mean weighted CTC loss)."""
    from evaluate.core.wer import score

    model.eval()
    hyps: dict[str, list[str]] = {}
    losses: list[float] = []
    for inputs, lengths, targets, target_lengths, ids in loader:
        inputs = to_device(inputs, device)
        with torch.autocast(device.type, dtype=amp or torch.float16, enabled=amp is not None):
            out = model(inputs, lengths.to(device))
        loss, _ = ctc_loss_levels(out, targets.to(device), target_lengths.to(device), tc.level_weights)
        losses.append(float(loss))
        for utt, h in zip(ids, decode_outputs(out.main, out.out_lengths, dataset.vocab.tokens, beam=tc.beam)):
            hyps[utt] = h.glosses
    refs = {u.id: list(u.glosses) for u in dataset.utts}
    return score(hyps, refs, tc.rules), float(np.mean(losses)) if losses else float("nan")


# ---------------------------------------------------------------------- train


def _setup_logging(out_dir: Path, main: bool) -> list[logging.Handler]:
    """Log lines of the ``models``/``evaluate`` packages to stderr and (rank 0) to train.log."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out_dir / "train.log", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
    for name in LOGGERS:
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO if main else logging.WARNING)
        for h in handlers:
            lg.addHandler(h)
        lg.propagate = False
    return handlers


def _teardown_logging(handlers: list[logging.Handler]) -> None:
    for name in LOGGERS:
        lg = logging.getLogger(name)
        for h in handlers:
            lg.removeHandler(h)
        lg.propagate = True
    for h in handlers:
        h.close()


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), disable=not enabled, transient=False)


def train(cfg: RunConfig, out_dir: str | os.PathLike, resume: bool = False, device: str = "auto",
          hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Train ``cfg`` into ``out_dir``; returns a summary (best WER, epochs, checkpoint paths)."""
    out_dir = Path(out_dir)
    d = setup_distributed(device)
    handlers = _setup_logging(out_dir, d.main)
    try:
        return _train(cfg, out_dir, resume, d, hooks or TrainHooks())
    except TrainingStopped as e:
        log.error("%s", e)  # into train.log too
        raise
    finally:
        _teardown_logging(handlers)
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Data:
    """The training split (wrapped by the hooks) and dev split, with their batch samplers and loaders."""

    streams: Sequence[str]  # cache streams loaded
    train_ds: CacheDataset  # the training split as cached (vocabulary, spec, meta)
    dev_ds: CacheDataset  # dev, centre crop only
    train_data: Dataset  # what is trained on (train_ds, or the hooks' wrapper of it)
    sampler: BucketBatchSampler
    loader: DataLoader
    dev_loader: DataLoader | None  # None: no dev split (best.pt follows the training loss)


@dataclass
class _Model:
    """The model, the modules trained beside it, and what optimises them."""

    model: nn.Module  # what is saved as "model"
    trained: nn.Module  # model (+ extra modules): what the optimizer and DDP see
    config: dict[str, Any]  # saved as "model_config"
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


@dataclass
class _Progress:
    """Where a run stands; restored from last.pt on resume."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    best: float = float("inf")  # best dev WER (or training loss without dev) so far


def _build_data(cfg: RunConfig, hooks: TrainHooks, d: Dist) -> _Data:
    """The training split with augmentation, dev with the centre crop; refuses an empty training split."""
    tc, dc = cfg.train, cfg.data
    streams = dc.streams or cfg.model.streams
    train_ds = CacheDataset(dc.cache, dc.dataset, dc.train_split, streams, dc.augment, seed=tc.seed)
    dev_ds = CacheDataset(dc.cache, dc.dataset, dc.dev_split, streams, None, crop_size=dc.augment.crop_size,
                          require_targets=False)
    if len(train_ds) == 0:
        raise ValueError(f"{train_ds.root}: split {dc.train_split!r} has no cached utterances; run `make features` first")
    if len(dev_ds) == 0:
        log.warning("%s: split %r is empty; best.pt is chosen by the training loss", dev_ds.root, dc.dev_split)
    train_data = hooks.train_data(train_ds) if hooks.train_data else train_ds  # e.g. + cached teacher outputs
    sampler = BucketBatchSampler(train_data.lengths, tc.batch_size, shuffle=True, seed=tc.seed,
                                 num_replicas=d.world, rank=d.rank, max_frames=tc.frame_budget)
    loader = make_loader(train_data, sampler, hooks.collate or collate_uint8, tc.num_workers, d.device)
    dev_loader = None
    if len(dev_ds):
        dev_sampler = BucketBatchSampler(dev_ds.lengths, tc.batch_size, shuffle=False, max_frames=tc.frame_budget)
        dev_loader = make_loader(dev_ds, dev_sampler, collate_uint8, tc.num_workers, d.device)
    return _Data(streams, train_ds, dev_ds, train_data, sampler, loader, dev_loader)


def _build_model(cfg: RunConfig, hooks: TrainHooks, d: Dist, data: _Data, amp: torch.dtype | None) -> _Model:
    """The model (+ modules trained beside it), its optimizer, learning-rate schedule and grad scaler."""
    tc = cfg.train
    model = (hooks.build_model or (lambda n, s: build_model(cfg.model, n, s)))(
        len(data.train_ds.vocab), data.train_ds.spec()).to(d.device)
    channels_last(model, d.device)
    trained: nn.Module = model
    if hooks.extra_modules is not None:
        trained = WithExtras(model, hooks.extra_modules.to(d.device))
    optimizer = make_optimizer(trained, tc)
    steps_per_epoch = len(data.loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc, steps_per_epoch))
    return _Model(model, trained, hooks.model_config or cfg.model.to_dict(), optimizer, scheduler, make_scaler(amp))


def _resume(last_path: Path, m: _Model, hooks: TrainHooks, cfg: RunConfig, d: Dist) -> _Progress:
    """Restore weights, optimizer, schedule, scaler, counters and RNG streams from ``last.pt``.

    A checkpoint of another model config or cache is refused; one written by another number of
    processes cannot replay its RNG streams exactly, so they restart from a derived seed.
    """
    ckpt = load_checkpoint(last_path)
    state = ckpt.raw
    if state["model_config"] != m.config:
        raise ValueError(f"{last_path} was trained with another model config than {m.config}; "
                         "resume with its own config or choose another --out")
    check_compatible(ckpt, cfg.data.cache, cfg.data.dataset, ckpt_name=str(last_path))
    m.model.load_state_dict(ckpt.weights)
    if hooks.extra_modules is not None:
        hooks.extra_modules.load_state_dict(state["extra_modules"])
    m.optimizer.load_state_dict(state["optimizer"])
    m.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):  # empty when written without float16 scaling (CPU, bfloat16)
        m.scaler.load_state_dict(state["scaler"])
    progress = _Progress(state["epoch"], state["step"], state["best"])
    states = state["rng"]
    if len(states) == d.world:
        set_rng_state(states[d.rank])
    else:  # another world size: exact replay is impossible, keep runs reproducible anyway
        log.warning("%s was written by %d process(es), now %d: RNG streams restart", last_path, len(states), d.world)
        seed_everything(cfg.train.seed + 1000 * progress.epoch + d.rank)
    log.info("resumed %s at epoch %d (best %.2f)", last_path, progress.epoch, progress.best)
    return progress


def _train_epoch(epoch: int, net: nn.Module, m: _Model, data: _Data, progress: _Progress, cfg: RunConfig,
                 hooks: TrainHooks, d: Dist, amp: torch.dtype | None, last_path: Path) -> dict[str, Any]:
    """One pass over the training split; advances ``progress.step``; returns the epoch's training record."""
    tc, dc = cfg.train, cfg.data
    data.sampler.set_epoch(epoch)
    data.train_data.set_epoch(epoch)
    net.train()
    t0, seen, loss_sum, level_sums = time.time(), 0, 0.0, {}
    with _progress(d.main) as bar:
        task = bar.add_task(f"epoch {epoch + 1}/{tc.epochs}", total=len(data.loader), info="")
        for batch in data.loader:
            inputs, lengths, targets, target_lengths, ids = batch[:5]
            inputs = to_device(inputs, d.device)
            with oom_guard(lengths, tc), torch.autocast(d.device.type, dtype=amp or torch.float16,
                                                        enabled=amp is not None):
                out = net(inputs, lengths.to(d.device))
            loss, parts = ctc_loss_levels(out, targets.to(d.device), target_lengths.to(d.device), tc.level_weights)
            if not parts:
                raise ValueError(f"train.level_weights {tc.level_weights} match none of the model's output "
                                 f"levels {sorted(out.logits)}; give e.g. main: 1.0")
            if hooks.extra_loss is not None:  # e.g. distillation, on top of the CTC levels
                extra, extra_parts = hooks.extra_loss(out, batch, epoch)
                loss, parts = loss + extra, {**parts, **extra_parts}
            if not all_finite(loss, d):
                levels = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
                raise TrainingStopped(_stop_message(
                    f"the training loss is {float(loss.detach())} ({levels})", epoch, progress.step, ids, inputs,
                    last_path, dc))
            m.optimizer.zero_grad(set_to_none=True)
            with oom_guard(lengths, tc):
                m.scaler.scale(loss).backward()
            if tc.grad_clip > 0:
                m.scaler.unscale_(m.optimizer)
                norm = nn.utils.clip_grad_norm_(m.trained.parameters(), tc.grad_clip)
                if not m.scaler.is_enabled() and not all_finite(norm, d):  # under AMP the scaler skips such steps itself
                    raise TrainingStopped(_stop_message(
                        f"the gradient norm is {float(norm)} (loss {float(loss.detach()):.4g})", epoch, progress.step,
                        ids, inputs, last_path, dc))
            m.scaler.step(m.optimizer)
            m.scaler.update()
            m.scheduler.step()
            progress.step += 1
            seen += len(ids)
            loss_sum += float(loss.detach()) * len(ids)
            for k, v in parts.items():
                level_sums[k] = level_sums.get(k, 0.0) + float(v) * len(ids)
            bar.update(task, advance=1, info=f"loss {loss_sum / seen:.3f}")
    train_time = time.time() - t0
    return {
        "epoch": epoch + 1, "step": progress.step, "lr": m.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / max(seen, 1),
        "train_levels": {k: v / max(seen, 1) for k, v in level_sums.items()},
        "train_clips_per_s": seen * d.world / max(train_time, 1e-9), "train_time_s": train_time,
    }


def _checkpoint_state(m: _Model, data: _Data, progress: _Progress, cfg: RunConfig, hooks: TrainHooks,
                      rng: list[Any]) -> dict[str, Any]:
    """Everything ``last.pt``/``best.pt`` hold: the model and how to rebuild it, and the exact training state."""
    tc, dc = cfg.train, cfg.data
    ds = data.train_ds
    state = {
        **hooks.checkpoint_extra,
        "model_config": m.config, "input_spec": spec_to_dict(ds.spec()), "vocab": list(ds.vocab.tokens),
        "cache": {"dataset": dc.dataset, "config": meta_config(ds.meta), "config_hash": ds.meta.get("config_hash")},
        "streams": list(data.streams), "crop_size": dc.augment.crop_size,
        "train_config": asdict(tc), "data_config": {**asdict(dc), "streams": list(dc.streams)},
        "model": m.model.state_dict(), "optimizer": m.optimizer.state_dict(),
        "scheduler": m.scheduler.state_dict(), "scaler": m.scaler.state_dict(),
        "epoch": progress.epoch, "step": progress.step, "best": progress.best, "rng": rng,
    }
    if hooks.extra_modules is not None:
        state["extra_modules"] = hooks.extra_modules.state_dict()
    return state


def _gather_rng(d: Dist) -> list[Any]:
    """Every process's RNG state (rank order), so a resumed run replays each stream."""
    states = [rng_state()]
    if d.world > 1:
        states = [None] * d.world
        dist.all_gather_object(states, rng_state())
    return states


def _train(cfg: RunConfig, out_dir: Path, resume: bool, d: Dist, hooks: TrainHooks) -> dict[str, Any]:
    tc, dc = cfg.train, cfg.data
    last_path, best_path, metrics_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "metrics.jsonl"
    if last_path.exists() and not resume:
        raise ValueError(f"{last_path} exists: pass --resume to continue that run, or choose another --out")
    amp = autocast_dtype(d.device, tc.amp)  # None: float32
    if d.main:
        for tmp in remove_stale_temps(out_dir):
            log.info("removed %s (a checkpoint write that a killed run left unfinished)", tmp)
    make_deterministic(tc.threads)
    seed_everything(tc.seed)  # same initial weights on every rank

    data = _build_data(cfg, hooks, d)
    m = _build_model(cfg, hooks, d, data, amp)
    progress = _Progress()
    if resume and last_path.exists():
        progress = _resume(last_path, m, hooks, cfg, d)
    elif resume:
        log.warning("--resume: no %s yet; starting from scratch", last_path)
    if d.main:
        _trim_metrics(metrics_path, progress.epoch)
    if d.world > 1 and progress.epoch == 0:
        torch.manual_seed(tc.seed + d.rank)  # weights are equal (DDP broadcasts rank 0's); dropout differs per rank
    net: nn.Module = m.trained
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(m.trained, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    net = maybe_compile(net, tc.compile)

    log.info("%s on %s: %d train / %d dev utterances, %s, %.2f M parameters, %d process(es), %d steps/epoch",
             dc.dataset, d.device, len(data.train_ds), len(data.dev_ds), "+".join(data.streams),
             sum(p.numel() for p in m.model.parameters()) / 1e6, d.world, len(data.loader))
    if progress.epoch >= tc.epochs:
        log.info("already trained for %d epochs (%s); nothing to do", progress.epoch, last_path)

    for epoch in range(progress.epoch, tc.epochs):
        record = _train_epoch(epoch, net, m, data, progress, cfg, hooks, d, amp, last_path)

        # dev WER: rank 0 decodes the whole split; the others wait at the barrier
        evaluated = data.dev_loader is not None and ((epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs)
        if d.main and evaluated:
            result, dev_loss = evaluate_dev(m.model, data.dev_loader, data.dev_ds, tc, d.device, amp)
            record.update(dev_loss=dev_loss, dev_wer=result.wer, dev_sub=result.sub, dev_del=result.dels,
                          dev_ins=result.ins, dev_n_ref=result.n_ref)
        metric = record.get("dev_wer", record["train_loss"] if data.dev_loader is None else None)
        improved = metric is not None and metric < progress.best
        if improved:
            progress.best = metric
        progress.epoch = epoch + 1

        # checkpoint: best.pt first, then last.pt, so a crash in between only repeats the epoch
        rng = _gather_rng(d)
        if d.main:
            state = _checkpoint_state(m, data, progress, cfg, hooks, rng)
            if improved:
                save_checkpoint(best_path, state)
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({**record, "best": improved}) + "\n")
            save_checkpoint(last_path, state)
            dev_txt = f", dev loss {record['dev_loss']:.3f}, dev WER {record['dev_wer']:.2f}%" if "dev_wer" in record else ""
            log.info("epoch %d/%d: train loss %.3f%s, %.1f clips/s%s", epoch + 1, tc.epochs, record["train_loss"],
                     dev_txt, record["train_clips_per_s"], " (best)" if improved else "")
        if d.world > 1:
            dist.barrier()

    summary = {"best": progress.best, "epochs": max(progress.epoch, tc.epochs), "last": str(last_path),
               "best_path": str(best_path) if best_path.exists() else None}
    if d.main:
        log.info("done: best %s %.3f; checkpoints in %s", "dev WER" if data.dev_loader is not None else "train loss",
                 progress.best, out_dir)
    return summary


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("models.train"), description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training YAML, or a preset name (configs/teachers/<name>.yaml)")
    add_cache(p, "feature cache root (overrides data.cache)")
    p.add_argument("--dataset", help="dataset under the cache root (overrides data.dataset): one config, any corpus")
    add_out(p, "output folder (default exp/teachers/<config name>, or <config name>_<dataset> with --dataset)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt when it exists")
    p.add_argument("--epochs", type=int, help="override train.epochs (e.g. to extend a finished run)")
    add_device(p, "training device")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, cache=args.cache, epochs=args.epochs)
        name = Path(args.config).stem
        if args.dataset and args.dataset != cfg.data.dataset:
            cfg = replace(cfg, data=replace(cfg.data, dataset=args.dataset))
            name = f"{name}_{args.dataset}"
        out = Path(args.out) if args.out else Path("exp") / "teachers" / name
        train(cfg, out, resume=args.resume, device=args.device)
    except TrainingStopped:
        return 1  # already logged to stderr and train.log
    return 0


if __name__ == "__main__":
    sys.exit(main())
