"""Feature-extraction benchmark (`make bench`): the extraction speed bars (DIS pairs/s, feature overhead, cache re-run).

Measured on the real clips in ``../shared/clips`` (skipped when absent) and on a small
generated synthsign corpus, one process and one thread per stage, as a `--workers 1` run:

- frames/s of each stage: decode (decord), MediaPipe Holistic, optical flow per method,
  write (uncompressed ``.npz``);
- the driver's own overhead over MediaPipe alone on the same clips (target <= 15%);
- DIS frame pairs/s at 112x112 (target >= 500);
- cache bytes per 100 frames for each stream;
- a second driver run over the finished cache against the first (target >= 50x faster).

``--scale`` measures what a PHOENIX14 extraction costs instead: RAFT (torchvision
``raft_small``/``raft_large``, random weights: speed only) and DIS frame pairs/s at 224x224 on
``--flow-device``, and the whole driver's frames/s on the real clips at PHOENIX14's settings
(RGB 256, DIS flow 112, MediaPipe landmarks) for each ``--workers-list`` count, projected onto
the frames of ``--num-frames-csv``.

Prints a markdown table and writes the figures as JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from preprocess.commandline import add_device, add_out, command, prog

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIPS = REPO_ROOT.parent / "shared" / "clips"
DEFAULT_NUM_FRAMES = REPO_ROOT.parent / "shared" / "data" / "phoenix14" / "annotations" / "manual" / "train.num_frames.csv"
RAFT_BENCH_SIZE = 224  # teacher resolution
PHOENIX_FEATURES = ["--rgb-size", "256", "--flow", "dis", "--flow-size", "112", "--landmarks", "mediapipe"]
FLOW_BENCH_SIZE = 112  # the flow-speed bar is stated at 112x112
FLOW_METHODS = ("dis", "farneback", "tvl1")
# Frame pairs each flow method gets (TV-L1 and RAFT take ~0.1-1 s a pair on one CPU thread).
FLOW_PAIRS = {"dis": 400, "farneback": 200, "tvl1": 12, "raft_small": 8}
SYNTH_MEDIAPIPE_FRAMES = 250  # synthsign renders through MediaPipe (its cache uses the exact landmarks)
TARGETS = {"overhead_pct": 15.0, "dis_pairs_per_s_112": 500.0, "rerun_speedup": 50.0}


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _rate(n: float, s: float) -> float | None:
    return round(n / s, 1) if s > 0 and n else None


# ----------------------------------------------------------------------------- stage timings


def decode_all(videos: list[Path]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Decode every video (decord, PyAV fallback): the frames and the decode rate."""
    from preprocess.video import read_frames

    read_frames(videos[0], max_frames=2)  # import decord/PyAV outside the timing
    clips, seconds = [], 0.0
    for v in videos:
        (frames, _), s = _timed(read_frames, v)
        clips.append(frames)
        seconds += s
    n = sum(len(c) for c in clips)
    return clips, {"frames": n, "seconds": round(seconds, 3), "fps": _rate(n, seconds)}


def mediapipe_rate(clips: list[np.ndarray], max_frames: int | None = None) -> dict[str, Any]:
    """MediaPipe Holistic alone on decoded frames, one graph built inside the timing.

    Wall and CPU time are both kept: on a shared machine the CPU time of this process is the
    steadier measure of how much work each side does.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")
    from preprocess.landmarks import HolisticExtractor, NoPersonError, detection_rates

    import mediapipe  # noqa: F401 - imported outside the timing, like a warm worker

    if max_frames:  # MediaPipe is slow: a fixed frame budget keeps the benchmark short
        kept, left = [], max_frames
        for c in clips:
            if left <= 0:
                break
            kept.append(c[:left])
            left -= len(kept[-1])
        clips = kept
    hands, seconds, found = [], 0.0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    with HolisticExtractor() as ex:
        for frames in clips:
            t1 = time.perf_counter()
            try:
                _, mask = ex(frames)
                hands.append(detection_rates(mask)["any_hand"])
                found += 1
            except NoPersonError:  # synthetic renders need not look like a person to MediaPipe
                hands.append(0.0)
            seconds += time.perf_counter() - t1
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = sum(len(c) for c in clips)
    return {"frames": n, "seconds": round(total, 3), "cpu_seconds": round(cpu, 3),
            "fps": _rate(n, total), "videos_with_person": found,
            "hand_rate": round(float(np.mean(hands)), 3) if hands else None}


def flow_rates(clips: list[np.ndarray]) -> dict[str, Any]:
    """Frame pairs/s of each flow method on frames already cropped to 112x112."""
    from preprocess.flow import FlowConfig, compute_flow, resolve_raft_weights
    from preprocess.video import resize_crop

    small = [resize_crop(c, FLOW_BENCH_SIZE) for c in clips if len(c) >= 2]
    methods = list(FLOW_METHODS)
    try:
        resolve_raft_weights(FlowConfig(method="raft_small", size=128))
        methods.append("raft_small")
    except ValueError:
        pass  # no local RAFT weights (they cannot be downloaded here): skipped
    out: dict[str, Any] = {}
    for m in methods:
        size = 128 if m.startswith("raft") else FLOW_BENCH_SIZE
        cfg = FlowConfig(method=m, size=size)
        compute_flow(small[0][:2], cfg)  # build the estimator outside the timing
        budget, pairs, seconds = FLOW_PAIRS[m], 0, 0.0
        for frames in small:
            take = min(len(frames), budget - pairs + 1)
            if take < 2:
                break
            _, s = _timed(compute_flow, frames[:take], cfg)
            pairs += take - 1
            seconds += s
        out[m] = {"size": size, "pairs": pairs, "seconds": round(seconds, 3), "pairs_per_s": _rate(pairs, seconds)}
    return out


def write_rate(clips: list[np.ndarray], tmp: Path) -> dict[str, Any]:
    """Atomic ``.npz`` writes of a typical file (rgb 112, 543 keypoints, int8 flow 56)."""
    from preprocess.cache import write_npz_atomic
    from preprocess.video import resize_crop

    seconds, n = 0.0, 0
    for i, frames in enumerate(clips):
        t = len(frames)
        arrays = {"rgb": resize_crop(frames, 112), "keypoints": np.zeros((t, 543, 3), np.float16),
                  "keypoints_mask": np.ones((t, 543), bool), "flow": np.zeros((t, 2, 56, 56), np.int8)}
        _, s = _timed(write_npz_atomic, tmp / f"w{i}.npz", arrays, "0" * 16)
        seconds += s
        n += t
    return {"frames": n, "seconds": round(seconds, 3), "fps": _rate(n, seconds)}


# ----------------------------------------------------------------------------- driver runs


def bytes_per_100_frames(cache_dir: Path) -> dict[str, float]:
    """Stored bytes per 100 frames of each stream (from the zip members' sizes)."""
    sizes: dict[str, int] = {}
    frames = 0
    for f in cache_dir.rglob("*.npz"):
        with zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if name != "config_hash":
                    sizes[name] = sizes.get(name, 0) + info.compress_size
        with np.load(f) as z:
            frames += len(z["keypoints_mask"] if "keypoints_mask" in z.files else z["rgb"])
    return {k: round(v * 100 / frames) for k, v in sorted(sizes.items())} if frames else {}


def driver_runs(yaml_path: Path, cache: Path, extra: list[str], workers: int = 1) -> dict[str, Any]:
    """A first `--workers N` run into an empty cache, then a second over the finished cache."""
    from rich.console import Console

    from preprocess.features import build_parser, run

    args = build_parser().parse_args(["--dataset", str(yaml_path), "--cache", str(cache), "--workers", str(workers),
                                      *extra])
    with open(os.devnull, "w") as devnull:
        quiet = Console(file=devnull, width=120)
        c0 = time.process_time()
        first, t1 = _timed(run, args, quiet)
        cpu1 = time.process_time() - c0
        second, t2 = _timed(run, args, quiet)
    ds_dir = next(p for p in cache.iterdir() if p.is_dir())
    return {
        "first_s": round(t1, 3), "first_cpu_s": round(cpu1, 3), "second_s": round(t2, 4),
        "rerun_speedup": round(t1 / t2, 1) if t2 > 0 else None,
        "done": first.done, "failed": first.failed, "skipped_second": second.skipped, "frames": first.frames,
        "stage_s": {k: round(v, 3) for k, v in first.stage_s.items()},
        "stage_fps": {k: _rate(first.frames, v) for k, v in first.stage_s.items()},
        "hand_rate": None if first.hand_rate is None else round(first.hand_rate, 3),
        "bytes_per_100_frames": bytes_per_100_frames(ds_dir),
        "failures": first.failures,
    }


def clips_corpus(videos: list[Path], tmp: Path) -> Path:
    """A custom-corpus YAML over real videos (the driver's defaults: RGB 112, DIS flow 56, MediaPipe)."""
    corpus = tmp / "clips_corpus"
    corpus.mkdir(exist_ok=True)
    rows = ["id|split|signer|glosses|video"] + [f"{v.stem}|train|s|X|{v.resolve()}" for v in videos]
    (corpus / "corpus.csv").write_text("\n".join(rows) + "\n")
    yaml_path = tmp / "clips.yaml"
    yaml_path.write_text(json.dumps({"name": "clips", "reader": "custom", "root": str(corpus)}))
    return yaml_path


def bench_clips(clips_dir: Path, tmp: Path) -> dict[str, Any]:
    videos = sorted(clips_dir.glob("*.mp4"))
    clips, decode = decode_all(videos)
    res: dict[str, Any] = {"videos": len(videos), "decode": decode}
    res["mediapipe"] = mediapipe_rate(clips)
    res["flow"] = flow_rates(clips)
    res["write"] = write_rate(clips, tmp)
    yaml_path = clips_corpus(videos, tmp)
    drv = driver_runs(yaml_path, tmp / "cache_clips", [])
    mp_s, mp_cpu = res["mediapipe"]["seconds"], res["mediapipe"]["cpu_seconds"]
    drv["overhead_pct"] = round(100 * (drv["first_cpu_s"] - mp_cpu) / mp_cpu, 1)  # CPU time: load-proof
    drv["overhead_wall_pct"] = round(100 * (drv["first_s"] - mp_s) / mp_s, 1)
    res["driver"] = drv
    return res


def bench_synthsign(preset: str, tmp: Path) -> dict[str, Any]:
    import yaml

    from preprocess import synthsign
    from preprocess.configs import preset_dir

    root = tmp / "synthsign"
    _, gen_s = _timed(synthsign.generate, synthsign.preset(preset), root, False)
    videos = sorted((root).rglob("*.mp4"))
    clips, decode = decode_all(videos)
    res: dict[str, Any] = {"preset": preset, "videos": len(videos), "generate_s": round(gen_s, 2), "decode": decode}
    res["mediapipe"] = mediapipe_rate(clips, SYNTH_MEDIAPIPE_FRAMES)
    res["flow"] = flow_rates(clips)
    res["write"] = write_rate(clips, tmp)
    yaml_path = tmp / "synthsign.yaml"
    repo_yaml = preset_dir("datasets") / "synthsign.yaml"
    feats = (yaml.safe_load(repo_yaml.read_text()) or {}).get("features", {}) if repo_yaml.is_file() else {}
    yaml_path.write_text(json.dumps({"name": "synthsign", "reader": "synthsign", "root": str(root),
                                     "features": feats, "generator": {"preset": preset}}))
    res["driver"] = driver_runs(yaml_path, tmp / "cache_synth", [])
    res["driver"]["features"] = feats
    return res


# ----------------------------------------------------------------------------- PHOENIX14 scale


def raft_rates(clips: list[np.ndarray], pairs: int, device: str = "auto", size: int = RAFT_BENCH_SIZE
               ) -> dict[str, Any]:
    """Frame pairs/s of RAFT small/large (random weights: the same arithmetic as trained ones, so the
    speed holds; the flow itself is meaningless) and of DIS, at ``size`` x ``size``, ``pairs`` pairs each."""
    from preprocess.flow import FlowConfig, _estimator, _RaftFlow
    from preprocess.video import resize_crop

    small = np.concatenate([resize_crop(c, size) for c in clips if len(c) >= 2])  # [N, s, s, 3]
    out: dict[str, Any] = {}
    for m in ("raft_small", "raft_large", "dis"):
        cfg = FlowConfig(method=m, size=size, device=device)
        est = _RaftFlow(cfg, random_init=True) if cfg.is_raft else _estimator(cfg)
        frames = small[: (pairs if cfg.is_raft else FLOW_PAIRS["dis"]) + 1]  # DIS is cheap: more pairs
        est(frames[:2])  # model build / first-call costs outside the timing
        _, s = _timed(est, frames)
        out[m] = {"size": size, "pairs": len(frames) - 1, "seconds": round(s, 3),
                  "pairs_per_s": round((len(frames) - 1) / s, 3),
                  "device": (f"{est.device} ({_torch_threads()} threads)" if est.device.type == "cpu" else
                             str(est.device)) if cfg.is_raft else "cpu (1 thread)",
                  "weights": "random (speed only)" if cfg.is_raft else None}
    return out


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def read_frame_total(path: Path) -> int | None:
    """Sum of ``num_frames`` in an ``id,num_frames`` CSV (None when the file is absent)."""
    import csv

    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        return sum(int(r["num_frames"]) for r in csv.DictReader(f))


def bench_scale(clips_dir: Path, tmp: Path, workers: list[int], raft_pairs: int, device: str,
                num_frames_csv: Path) -> dict[str, Any]:
    """RAFT vs DIS at 224, and the driver's frames/s per worker count at PHOENIX14 settings."""
    videos = sorted(clips_dir.glob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"{clips_dir}: no .mp4 clips to measure on; pass --clips DIR")
    clips, decode = decode_all(videos)
    res: dict[str, Any] = {"videos": len(videos), "frames": decode["frames"], "raft": raft_rates(clips, raft_pairs, device)}
    yaml_path = clips_corpus(videos, tmp)
    runs = {}
    for w in workers:
        d = driver_runs(yaml_path, tmp / f"cache_w{w}", PHOENIX_FEATURES, workers=w)
        runs[w] = {"workers": w, "frames": d["frames"], "seconds": d["first_s"],
                   "fps": _rate(d["frames"], d["first_s"]), "stage_fps": d["stage_fps"], "failed": d["failed"]}
    res["driver"] = runs
    totals = {"train": read_frame_total(num_frames_csv)}
    for split in ("dev", "test"):
        sibling = num_frames_csv.with_name(num_frames_csv.name.replace("train", split))
        if sibling != num_frames_csv:
            totals[split] = read_frame_total(sibling)
    res["phoenix14_frames"] = {k: v for k, v in totals.items() if v}
    return res


def markdown_scale(res: dict[str, Any], workers_not_measured: list[int]) -> str:
    lines = ["| flow at 224x224 | device | pairs | pairs/s |", "|---|---|---:|---:|"]
    for m, r in res["raft"].items():
        note = f" ({r['weights']})" if r["weights"] else ""
        lines.append(f"| {m}{note} | {r['device']} | {r['pairs']} | {_fmt(r['pairs_per_s'])} |")
    frames = res["phoenix14_frames"]
    total = sum(frames.values())
    cols = " + ".join(f"{k} {v:,}" for k, v in frames.items())
    lines += ["", f"| extraction (RGB 256, DIS 112, MediaPipe), {res['videos']} real clips | frames/s (whole "
              f"driver) | MediaPipe stage frames/s per worker | PHOENIX14 train ({frames.get('train', 0):,} frames) | "
              f"all splits ({cols}) |", "|---|---:|---:|---:|---:|"]
    for w, r in res["driver"].items():
        fps = r["fps"]
        hours = (lambda n: f"{n / fps / 3600:.1f} h") if fps else (lambda n: "-")
        lines.append(f"| --workers {w} | {_fmt(fps)} | {_fmt(r['stage_fps'].get('landmarks'))} | "
                     f"{hours(frames.get('train', 0))} | {hours(total)} |")
    for w in workers_not_measured:
        lines.append(f"| --workers {w} | not measured ({os.cpu_count()} cores here) | | | |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:,.1f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def markdown(res: dict[str, Any]) -> str:
    parts = {k: res[k] for k in ("clips", "synthsign") if res.get(k)}
    cols = list(parts)
    lines = ["| stage (1 process, 1 thread) | " + " | ".join(f"{c} frames/s" for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]

    def row(label: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(_fmt(get(parts[c])) for c in cols) + " |")

    row("decode (decord)", lambda r: r["decode"]["fps"])
    row("MediaPipe Holistic (complexity 1)", lambda r: r["mediapipe"]["fps"])
    methods = sorted({m for r in parts.values() for m in r["flow"]}, key=lambda m: (m not in FLOW_METHODS, m))
    for m in methods:
        size = next(r["flow"][m]["size"] for r in parts.values() if m in r["flow"])
        row(f"flow {m} {size}x{size} (pairs/s)", lambda r, m=m: r["flow"].get(m, {}).get("pairs_per_s"))
    row("write .npz", lambda r: r["write"]["fps"])
    for stage in ("decode", "landmarks", "flow", "write"):
        row(f"driver stage: {stage}", lambda r, s=stage: r["driver"]["stage_fps"].get(s))
    row("driver wall (whole run)", lambda r: _rate(r["driver"]["frames"], r["driver"]["first_s"]))

    lines += ["", "| bar | value | target |", "|---|---:|---:|"]
    if "clips" in parts:
        c = parts["clips"]
        lines.append(f"| driver overhead over MediaPipe alone (clips, workers=1, CPU time) | "
                     f"{_fmt(c['driver']['overhead_pct'], ' %')} | <= {TARGETS['overhead_pct']:.0f} % |")
        lines.append(f"| same, wall clock ({c['mediapipe']['seconds']:.1f} s MediaPipe alone, "
                     f"{c['driver']['first_s']:.1f} s driver) | {_fmt(c['driver']['overhead_wall_pct'], ' %')} | |")
    dis = next((r["flow"]["dis"]["pairs_per_s"] for r in parts.values() if "dis" in r["flow"]), None)
    lines.append(f"| DIS frame pairs/s at 112x112 | {_fmt(dis)} | >= {TARGETS['dis_pairs_per_s_112']:.0f} |")
    for name, r in parts.items():
        d = r["driver"]
        lines.append(f"| second run over the finished cache ({name}): {d['first_s']:.2f} s -> {d['second_s']:.3f} s "
                     f"| {_fmt(d['rerun_speedup'], 'x')} | >= {TARGETS['rerun_speedup']:.0f}x |")
    if "clips" in parts:
        lines.append(f"| hand-detection rate (clips, mean over videos) | {_fmt(parts['clips']['driver']['hand_rate'])} | |")

    streams = sorted({s for r in parts.values() for s in r["driver"]["bytes_per_100_frames"]})
    lines += ["", "| cache bytes per 100 frames | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for s in streams:
        lines.append(f"| {s} | " + " | ".join(_fmt(parts[c]["driver"]["bytes_per_100_frames"].get(s)) for c in cols) + " |")
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("preprocess.bench"), description=__doc__.split("\n")[0])
    add_out(p, "write the figures as JSON to this file")
    p.add_argument("--clips", default=str(DEFAULT_CLIPS), help="folder of real .mp4 clips (skipped when absent)")
    p.add_argument("--synth-preset", default="tiny", help="synthsign preset to generate (tiny, demo, default)")
    p.add_argument("--no-synthsign", action="store_true", help="skip the synthsign part")
    p.add_argument("--scale", action="store_true",
                   help="only the PHOENIX14-scale figures: RAFT vs DIS at 224, driver frames/s per worker count")
    p.add_argument("--workers-list", default="1,2,4,8,16",
                   help="--scale: driver worker counts (those above the CPU count are reported as not measured)")
    p.add_argument("--raft-pairs", type=int, default=None, help="--scale: frame pairs per flow method "
                   "(default 4 on CPU, 64 on CUDA)")
    add_device(p, "--scale: RAFT device", flag="--flow-device")
    p.add_argument("--num-frames-csv", default=str(DEFAULT_NUM_FRAMES),
                   help="--scale: id,num_frames CSV of the training videos (dev/test siblings are added when present)")
    args = p.parse_args(argv)
    if args.scale:
        return main_scale(args)

    import cv2

    cv2.setNumThreads(1)  # per-process figures: the driver's workers run one thread each
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    res: dict[str, Any] = {"machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                                       "python": platform.python_version()}}
    with tempfile.TemporaryDirectory(prefix="signdistill-bench-") as tmp:
        tmp = Path(tmp)
        clips_dir = Path(args.clips)
        if clips_dir.is_dir() and any(clips_dir.glob("*.mp4")):
            (tmp / "c").mkdir()
            res["clips"] = bench_clips(clips_dir, tmp / "c")
        else:
            print(f"{clips_dir}: no clips; the real-video part is skipped", file=sys.stderr)
        if not args.no_synthsign:
            (tmp / "s").mkdir()
            res["synthsign"] = bench_synthsign(args.synth_preset, tmp / "s")
    if not (res.get("clips") or res.get("synthsign")):
        print("error: nothing to benchmark (no clips and --no-synthsign)", file=sys.stderr)
        return 2
    table = markdown(res)
    res["markdown"] = table
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return 0


def main_scale(args: argparse.Namespace) -> int:
    import cv2

    from preprocess.device import resolve_device

    cv2.setNumThreads(1)
    dev = resolve_device(args.flow_device, "--flow-device")
    try:
        wanted = sorted({int(w) for w in args.workers_list.split(",") if w.strip()})
    except ValueError:  # not a comma-separated list of integers
        wanted = []
    if not wanted or min(wanted) < 1:
        raise ValueError(f"--workers-list needs comma-separated counts >= 1, got {args.workers_list!r}")
    csv_path = Path(args.num_frames_csv)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no frame-count CSV; pass --num-frames-csv (PHOENIX14's "
                                "annotations/manual/train.num_frames.csv)")
    cores = os.cpu_count() or 1
    measured, skipped = [w for w in wanted if w <= cores], [w for w in wanted if w > cores]
    pairs = args.raft_pairs or (64 if dev.type == "cuda" else 4)
    with tempfile.TemporaryDirectory(prefix="signdistill-bench-scale-") as tmp:
        res = bench_scale(Path(args.clips), Path(tmp), measured, pairs, str(dev), csv_path)
    res["machine"] = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    res["workers_not_measured"] = skipped
    table = markdown_scale(res, skipped)
    res["markdown"] = table
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
