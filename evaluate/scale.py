"""PHOENIX14-scale training benchmark: can the cache and the loader feed the teachers at real sizes?

    python -m evaluate.scale [--num-frames-csv CSV] [--clips N] [--device auto] [--json out.json]
    python -m evaluate.speed --scale phoenix14 [same options]          (the same benchmark)

1. Writes a cache of ``--clips`` generated clips (random pixels, landmarks and flow) whose frame
   counts are quantiles of the real PHOENIX14 training distribution (``train.num_frames.csv``),
   at the teachers' sizes (RGB 256, cropped to 224 by the loader; 543 MediaPipe landmarks;
   int8 flow 112), through the project's cache writer and format (``preprocess.cache``).
2. Times the project's loader (``models.data.CacheDataset`` + ``make_loader``, the fusion
   teacher's streams and augmentation, no model): clips/s and frames/s.
3. Times optimizer steps (``evaluate.speed.time_training``, the trainer's step) of the RGB
   teacher with ResNet18 and ResNet34, the keypoint teacher, the attention-fusion teacher (all
   from ``configs/teachers/phoenix14_fusion.yaml``, random init) and the KD-MSLRT landmark
   student (``configs/recipes/kdmslrt.yaml``): clips/s, frames/s and peak memory.
4. Projects one PHOENIX14 epoch (5,671 clips, their real frame total) from each frames/s, the
   cache's disk size from the measured bytes per frame, and compares the loader with the
   slowest (heaviest) teacher: the loader must deliver >= 1.5x its rate.

On CPU the defaults are small (4 clips, 1 timed step of 1 clip per model) so it ends in a few
minutes; ``--toy`` shrinks every size for tests (the report's shape only).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from preprocess.commandline import add_cache, add_device, command, prog

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NUM_FRAMES = ROOT.parent / "shared" / "data" / "phoenix14" / "annotations" / "manual" / "train.num_frames.csv"
TEACHER_PRESET = "phoenix14_fusion"  # teachers/<name>.yaml among the presets
STUDENT_RECIPE = "kdmslrt"
DATASET = "phoenix14_scale"
PHOENIX_TRAIN_CLIPS = 5671  # the PHOENIX14 multisigner training split
LOADER_TARGET = 1.5  # loader clips/s over the heaviest teacher's training clips/s
MODELS = ("rgb_resnet18", "rgb_resnet34", "keypoints", "fusion", "student_kdmslrt")


@dataclass(frozen=True)
class ScaleConfig:
    """Sizes of the generated cache and of the measurement (defaults: PHOENIX14 teacher sizes)."""

    clips: int = 4  # generated clips (frame counts: quantiles of the real distribution)
    rgb_size: int = 256  # cached RGB side; the loader crops crop_size
    crop_size: int = 224  # teacher input side
    flow_size: int = 112  # cached flow side (int8), cropped with the RGB window
    num_keypoints: int = 543  # MediaPipe Holistic layout
    vocab_size: int = 1232  # PHOENIX14 training vocabulary (1231 glosses + blank)
    frames_per_gloss: int = 12  # PHOENIX14: about 141 frames for 11.6 glosses
    frame_divisor: int = 1  # frame counts divided by this (--toy only: tiny clips)
    batch_size: int = 0  # clips per training step (0: each preset's; on CPU 1)
    steps: int = 0  # timed steps per model (0: one pass over the clips on CUDA, 1 on CPU)
    workers: int = 2  # DataLoader worker processes for the loader figure
    loader_passes: int = 3  # passes over the clips for the loader figure (after the first batch)
    toy: bool = False  # tiny models too (tests)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("clips", "rgb_size", "crop_size", "flow_size", "num_keypoints", "vocab_size",
                     "frames_per_gloss", "frame_divisor", "loader_passes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.crop_size > self.rgb_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than rgb_size {self.rgb_size}")
        if self.batch_size < 0 or self.steps < 0 or self.workers < 0:
            raise ValueError(f"batch_size, steps and workers must be >= 0, got "
                             f"{self.batch_size}, {self.steps}, {self.workers}")


TOY = dict(rgb_size=32, crop_size=28, flow_size=16, vocab_size=20, frames_per_gloss=4, frame_divisor=10,
           workers=0, loader_passes=1, toy=True)
TOY_MODEL = dict(rgb_backbone="resnet18", hidden=32, lstm_layers=1, keypoint_dim=16, flow_channels=4)
TOY_STUDENT = dict(dim=16, layers=1, heads=2, ff_dim=32)


def read_num_frames(path: str | os.PathLike) -> np.ndarray:
    """Frame counts from a ``id,num_frames`` CSV (one row per training video)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no frame-count CSV (id,num_frames per training video); pass --num-frames-csv "
            "with PHOENIX14's annotations/manual/train.num_frames.csv")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            counts = [int(row["num_frames"]) for row in csv.DictReader(f)]
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: expected a header 'id,num_frames' and integer counts ({e})") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"{path}: needs at least one row with num_frames >= 1")
    return np.asarray(counts, dtype=np.int64)


def sample_lengths(counts: np.ndarray, n: int, divisor: int = 1) -> list[int]:
    """``n`` frame counts at the midpoint quantiles of ``counts``: a small sample with its spread."""
    q = np.quantile(counts, (np.arange(n) + 0.5) / n, method="nearest")
    return [max(2, int(round(int(t) / divisor))) for t in q]


# ----------------------------------------------------------------------------- cache


def write_cache(root: Path, lengths: Sequence[int], cfg: ScaleConfig) -> dict[str, Any]:
    """Generated clips in the real cache layout (manifest, vocab, meta, one .npz each), as
    ``make features`` would write them for PHOENIX14 at these sizes; returns write figures."""
    from preprocess import cache as cache_lib
    from preprocess.flow import FlowConfig, flow_scale
    from preprocess.layouts import HOLISTIC_543
    from preprocess.manifest import Utterance, write_manifest
    from preprocess.vocab import Vocabulary

    flow_cfg = FlowConfig(method="dis", size=cfg.flow_size)
    layout = HOLISTIC_543 if cfg.num_keypoints == 543 else f"custom_{cfg.num_keypoints}"
    meta = {
        "dataset": DATASET, "streams": ["rgb", "keypoints", "keypoints_mask", "flow"],
        "keypoint_layout": layout, "num_keypoints": cfg.num_keypoints, "rgb_size": cfg.rgb_size,
        "rgb_storage": "uint8 array",
        "flow": {"method": flow_cfg.method, "size": flow_cfg.size, "dtype": flow_cfg.dtype, "clip": flow_cfg.clip,
                 "scale": float(flow_scale(flow_cfg))},
        "note": "generated by evaluate.scale: random content at PHOENIX14 sizes, for speed only",
    }
    chash = cache_lib.config_hash({**meta, "lengths": list(lengths), "seed": cfg.seed})
    glosses = [f"G{i:04d}" for i in range(1, cfg.vocab_size)]
    rng = np.random.default_rng(cfg.seed)
    utts, seconds, nbytes = [], 0.0, 0
    ddir = cache_lib.dataset_dir(root, DATASET)
    for i, t in enumerate(lengths):
        uid = f"scale{i:05d}"
        n_gl = max(1, min(t // 4, round(t / cfg.frames_per_gloss)))  # CTC needs T / 4 >= glosses
        utt = Utterance(uid, "train", f"s{i % 9}", [glosses[j] for j in rng.integers(0, len(glosses), n_gl)], None, t)
        utts.append(utt)
        path = cache_lib.utt_path(root, DATASET, "train", uid)
        if cache_lib.is_valid(path, chash):  # a kept --cache: written by an earlier run
            nbytes += path.stat().st_size
            continue
        k = cfg.num_keypoints
        arrays = {
            "rgb": np.frombuffer(rng.bytes(t * cfg.rgb_size * cfg.rgb_size * 3), np.uint8).reshape(
                t, cfg.rgb_size, cfg.rgb_size, 3),  # [T, H, W, 3]
            "keypoints": rng.random((t, k, 3), dtype=np.float32).astype(np.float16),  # [T, K, 3]
            "keypoints_mask": rng.random((t, k)) > 0.1,  # [T, K]
            "flow": rng.integers(-127, 128, (t, 2, cfg.flow_size, cfg.flow_size), dtype=np.int8),  # [T, 2, h, w]
        }
        t0 = time.perf_counter()
        cache_lib.write_npz_atomic(path, arrays, chash)
        seconds += time.perf_counter() - t0
        nbytes += path.stat().st_size
    write_manifest(ddir / "manifest.jsonl", utts)
    Vocabulary(("<blank>", *glosses)).save(ddir / "vocab.json")
    cache_lib.write_meta(root, DATASET, {**meta, "config_hash": chash})
    frames = int(sum(lengths))
    return {"clips": len(lengths), "frames": frames, "bytes": nbytes, "bytes_per_frame": nbytes / frames,
            "write_s": seconds, "write_frames_per_s": frames / seconds if seconds else None}


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    name: str
    model: Any  # ModelConfig | StudentConfig
    train: Any  # models.train.TrainConfig
    streams: tuple[str, ...]
    student: bool = False


def presets(cfg: ScaleConfig) -> list[Preset]:
    """The five measured models from the project's own presets (weights random: speed only)."""
    from distill.recipes import load_recipe
    from models.students import StudentConfig
    from models.train import load_config
    from preprocess.configs import preset_dir

    run = load_config(preset_dir("teachers") / f"{TEACHER_PRESET}.yaml")
    fusion = replace(run.model, rgb_pretrained=None, **(TOY_MODEL if cfg.toy else {}))
    rgb = replace(fusion, streams=("rgb",), fusion="none")
    out = [
        Preset("rgb_resnet18", replace(rgb, rgb_backbone="resnet18"), run.train, ("rgb",)),
        Preset("rgb_resnet34", replace(rgb, rgb_backbone="resnet34"), run.train, ("rgb",)),
        Preset("keypoints", replace(fusion, streams=("keypoints",), fusion="none"), run.train, ("keypoints",)),
        Preset("fusion", fusion, run.train, tuple(fusion.streams)),
    ]
    recipe = load_recipe(STUDENT_RECIPE)
    student = StudentConfig.from_dict({**recipe.student, **(TOY_STUDENT if cfg.toy else {})})
    out.append(Preset("student_kdmslrt", student, recipe.train, recipe.streams, student=True))
    return out


def build(preset: Preset, vocab_size: int, spec: Any) -> Any:
    import torch

    from models.build import build_model
    from models.students import build_student

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "random init": intended here
        return build_student(preset.model, vocab_size, spec) if preset.student else build_model(preset.model, vocab_size, spec)


# ----------------------------------------------------------------------------- measurements


def loader_rate(ds: Any, batch_size: int, workers: int, device: Any, passes: int) -> dict[str, Any]:
    """The training loader alone (no model): clips/s and frames/s over ``passes`` epochs, timed from
    the first batch (worker start-up excluded), batches moved to ``device`` as training does."""
    import torch

    from models.data import BucketBatchSampler, collate_uint8, make_loader, to_device

    sampler = BucketBatchSampler(ds.lengths, batch_size, shuffle=True, seed=0)
    loader = make_loader(ds, sampler, collate_uint8, workers, device)
    clips = frames = 0
    t0 = None
    for epoch in range(passes + 1):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        for inputs, lengths, *_ in loader:
            to_device(inputs, device)
            if t0 is None:  # the first batch pays for worker start-up
                if torch.device(device).type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                continue
            clips += len(lengths)
            frames += int(lengths.sum())
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    del loader  # stops persistent workers
    return {"clips": clips, "frames": frames, "seconds": seconds, "clips_per_s": clips / seconds,
            "frames_per_s": frames / seconds, "workers": workers, "batch_size": batch_size}


def training_batches(ds: Any, batch_size: int, steps: int) -> list[Any]:
    """A short warm-up batch, then ``steps`` batches whose mean length is nearest the sample's mean
    (representative clips when only a few steps are timed), collated once (loading not timed)."""
    from models.data import BucketBatchSampler, collate_uint8

    batches = list(BucketBatchSampler(ds.lengths, batch_size, shuffle=True, seed=0))
    mean = float(np.mean(ds.lengths))
    ranked = sorted(batches, key=lambda b: abs(float(np.mean([ds.lengths[i] for i in b])) - mean))
    chosen = [ranked[i % len(ranked)] for i in range(steps)]
    warm = collate_uint8([ds[min(range(len(ds)), key=lambda i: ds.lengths[i])]])
    short = min(16, min(ds.lengths))
    warm = ({k: v[:, :short] for k, v in warm[0].items()}, warm[1].clamp(max=short), *warm[2:])
    return [warm] + [collate_uint8([ds[i] for i in b]) for b in chosen]


def run(cfg: ScaleConfig, num_frames_csv: str | os.PathLike, device: str = "auto", cache: str | None = None,
        models: Sequence[str] = MODELS, threads: int | None = None, compile: bool = False,
        progress: Any = None) -> dict[str, Any]:
    """The whole benchmark; returns the report (see :func:`markdown`)."""
    import torch

    from evaluate.speed import time_training
    from models.data import AugmentConfig, CacheDataset
    from models.runtime import BatchTooLarge
    from preprocess.device import resolve_device

    dev = resolve_device(device)
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    counts = read_num_frames(num_frames_csv)
    lengths = sample_lengths(counts, cfg.clips, cfg.frame_divisor)
    cuda = dev.type == "cuda"
    if threads:
        torch.set_num_threads(threads)
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    report: dict[str, Any] = {
        "machine": machine(dev), "config": asdict(cfg), "device": str(dev),
        "phoenix14": {"clips": int(len(counts)), "frames": int(counts.sum()), "mean_frames": float(counts.mean()),
                      "max_frames": int(counts.max()), "csv": str(num_frames_csv)},
        "sample_lengths": lengths,
    }
    tmp = None if cache else tempfile.mkdtemp(prefix="signdistill-scale-")
    root = Path(cache or tmp)
    try:
        say(f"scale: writing {len(lengths)} clips ({sum(lengths)} frames) into {root}")
        report["cache"] = write_cache(root, lengths, cfg)
        from preprocess.bench import bytes_per_100_frames

        per100 = bytes_per_100_frames(root / DATASET)
        report["cache"]["bytes_per_100_frames"] = per100
        bpf = report["cache"]["bytes_per_frame"]
        report["cache"]["phoenix14_bytes"] = bpf * report["phoenix14"]["frames"] * cfg.frame_divisor

        run_teacher = presets(cfg)
        by_name = {p.name: p for p in run_teacher}
        fusion = by_name["fusion"]
        aug = replace(AugmentConfig(), crop_size=cfg.crop_size)
        full = CacheDataset(root, DATASET, "train", fusion.streams, aug, seed=0)
        bs_loader = cfg.batch_size or fusion.train.batch_size
        say(f"scale: loader alone ({cfg.workers} workers, batch {bs_loader}, {cfg.loader_passes} passes)")
        report["loader"] = loader_rate(full, bs_loader, cfg.workers, dev, cfg.loader_passes)

        rows = []
        for name in models:
            p = by_name[name]
            bs = cfg.batch_size or (p.train.batch_size if cuda else 1)
            steps = cfg.steps or (math.ceil(len(lengths) / bs) if cuda else 1)
            p_aug = aug if "rgb" in p.streams or "flow" in p.streams else replace(aug, crop_size=0)
            ds = CacheDataset(root, DATASET, "train", p.streams, p_aug, seed=0)
            model = build(p, len(ds.vocab), ds.spec())
            batches = training_batches(ds, bs, steps)
            say(f"scale: training {name} ({steps} step(s) of {bs} clip(s))")
            row: dict[str, Any] = {"model": name, "parameters": int(sum(x.numel() for x in model.parameters())),
                                   "batch_size": bs, "streams": list(p.streams)}
            try:
                row.update(time_training(model, batches, p.train, dev, warmup=1, compile=compile))
            except BatchTooLarge as e:
                row["error"] = str(e)
            if "frames_per_s" in row:
                total = report["phoenix14"]["frames"]
                row["epoch_s"] = total / row["frames_per_s"]
                row["clips_per_s_phoenix"] = row["frames_per_s"] / report["phoenix14"]["mean_frames"]
            rows.append(row)
            del model, batches
            if cuda:
                torch.cuda.empty_cache()
        report["training"] = rows
        report["verdict"] = verdict(report)
        return report
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Loader vs the slowest teacher, per frame (clips of the sample's and PHOENIX14's mean length differ)."""
    teachers = [r for r in report["training"] if not r["model"].startswith("student") and "frames_per_s" in r]
    if not teachers:
        return {}
    heaviest = min(teachers, key=lambda r: r["frames_per_s"])
    loader = report["loader"]
    ratio = loader["frames_per_s"] / heaviest["frames_per_s"]
    bpf = report["cache"]["bytes_per_frame"]
    return {"heaviest": heaviest["model"], "heaviest_frames_per_s": heaviest["frames_per_s"],
            "loader_frames_per_s": loader["frames_per_s"], "ratio": ratio, "target": LOADER_TARGET,
            "met": ratio >= LOADER_TARGET,
            # when the cache outgrows the page cache, the disk must stream this much for the heaviest teacher
            "disk_read_mb_s_needed": heaviest["frames_per_s"] * bpf / 1e6}


def machine(dev: Any) -> dict[str, Any]:
    import torch

    out = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


# ----------------------------------------------------------------------------- report


def _h(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the training table, the loader line, the cache size and the verdict."""
    m, ph, c = report["machine"], report["phoenix14"], report["cache"]
    where = m.get("gpu") or f"CPU {m.get('cpu') or m['processor']}, {m['cpu_count']} cores, {m['threads']} torch threads"
    lines = [f"Device: {report['device']} ({where}); sample of {c['clips']} clips, {c['frames']} frames "
             f"(PHOENIX14 train: {ph['clips']} clips, {ph['frames']:,} frames, mean {ph['mean_frames']:.1f})", "",
             "| model | params | batch | steps | clips/s | frames/s | frames per CPU-s | peak memory | PHOENIX14 epoch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["training"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['batch_size']} | - | {r['error']} | | | | |")
            continue
        mem = f"{_gb(r['peak_bytes'])} ({'GPU' if r['memory'].startswith('cuda') else 'RSS +'})"
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f} M | {r['batch_size']} | {r['steps']} | "
                     f"{r['clips_per_s']:.3f} | {r['frames_per_s']:.1f} | {r['frames'] / max(r['cpu_seconds'], 1e-9):.1f} | "
                     f"{mem} | {_h(r.get('epoch_s'))} |")
    ld = report["loader"]
    lines += ["", f"Loader alone ({ld['workers']} workers, batch {ld['batch_size']}, fusion streams, crop + flip + "
              f"time scaling): {ld['clips_per_s']:.2f} clips/s, {ld['frames_per_s']:.0f} frames/s",
              f"Cache: {c['bytes_per_frame'] / 1e3:.1f} kB per frame "
              f"({', '.join(f'{k} {v / 100e3:.1f}' for k, v in c.get('bytes_per_100_frames', {}).items())} kB); "
              f"PHOENIX14 train at these sizes: {_gb(c['phoenix14_bytes'])}"]
    v = report.get("verdict") or {}
    if v:
        lines.append(f"Loader / heaviest teacher ({v['heaviest']}), per frame: {v['ratio']:.1f}x "
                     f"(target >= {v['target']}x: {'met' if v['met'] else 'NOT met'}); feeding it from disk needs "
                     f"{v['disk_read_mb_s_needed']:.1f} MB/s once the cache outgrows the page cache")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("evaluate.scale"), description=__doc__.split("\n\n")[0])
    p.add_argument("--num-frames-csv", default=str(DEFAULT_NUM_FRAMES),
                   help="id,num_frames CSV of the training videos (default: PHOENIX14's under ../shared)")
    p.add_argument("--clips", type=int, default=None, help="generated clips (default 4 on CPU, 64 on CUDA)")
    p.add_argument("--batch-size", type=int, default=0, help="clips per step (default: each preset's; 1 on CPU)")
    p.add_argument("--steps", type=int, default=0, help="timed steps per model (default: one pass on CUDA, 1 on CPU)")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes (default 2)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    add_device(p, "training device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (eager fallback)")
    add_cache(p, "keep the generated feature cache here (default: a temp folder, removed)")
    p.add_argument("--toy", action="store_true", help="tiny sizes and models (tests: the report's shape only)")
    p.add_argument("--json", default=None, help="also write the report as JSON")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from preprocess.device import resolve_device

    dev = resolve_device(args.device)
    clips = args.clips or (64 if dev.type == "cuda" else 4)
    sizes = {**TOY, "workers": 0 if args.workers == 2 else args.workers} if args.toy else {"workers": args.workers}
    cfg = ScaleConfig(clips=clips, batch_size=args.batch_size, steps=args.steps, **sizes)
    report = run(cfg, args.num_frames_csv, str(dev), args.cache,
                 [m.strip() for m in args.models.split(",") if m.strip()], args.threads, args.compile)
    table = markdown(report)
    report["markdown"] = table
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
