"""`make features`: fill the per-video cache (RGB, landmarks, optical flow) for one dataset.

``python -m preprocess.features``: arguments, the report table and the exit codes of a run.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from preprocess.commandline import add_cache, add_device, command, prog
from preprocess.configs import UserError
from preprocess.features.config import LANDMARK_MODES, STAGES
from preprocess.features.driver import Report, run
from preprocess.flow import DTYPES as FLOW_DTYPES, METHODS as FLOW_METHODS


def _fmt_rate(frames: int, seconds: float) -> str:
    return f"{frames / seconds:,.1f}" if seconds > 0 and frames else "-"


def report_table(rep: Report, title: str):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_column("frames/s", justify="right")
    t.add_row("videos done / skipped / failed", f"{rep.done} / {rep.skipped} / {rep.failed}", "")
    t.add_row("frames extracted", f"{rep.frames:,}", "")
    for stage in STAGES:
        s = rep.stage_s.get(stage, 0.0)
        t.add_row(f"  {stage} (sum over videos)", f"{s:.2f} s", _fmt_rate(rep.frames, s))
    t.add_row("wall time", f"{rep.wall_s:.2f} s", _fmt_rate(rep.frames, rep.wall_s))
    hr = rep.hand_rate
    t.add_row("hand-detection rate (MediaPipe videos)",
              f"{hr:.2f} over {len(rep.hand_rates)}" if hr is not None else "-", "")
    t.add_row("cache size", _fmt_bytes(rep.cache_bytes), "")
    return t


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("preprocess.features"), description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="dataset name (configs/datasets/<name>.yaml) or a YAML path")
    p.add_argument("--data-root", default=None, help="folder holding the corpus (overrides the YAML's root)")
    add_cache(p, "feature cache root; files go to <cache>/<dataset>/<split>/<id>.npz", default="cache")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                   help="worker processes, one MediaPipe graph each (1 = in-process; default: half the cores)")
    p.add_argument("--shard", default="0/1", help="i/n: process utterances k with k %% n == i")
    p.add_argument("--splits", default=None, help="comma-separated splits (default: all)")
    p.add_argument("--limit", type=int, default=None, help="only the first N utterances (after --splits)")
    p.add_argument("--force", action="store_true", help="rebuild files even when they are valid")
    p.add_argument("--max-failed-frac", type=float, default=0.0,
                   help="exit 0 while at most this fraction of the shard's utterances failed (default 0: any "
                        "failure exits 1; e.g. 0.01 for a huge corpus with a few broken videos)")
    g = p.add_argument_group("extractor (defaults: the dataset YAML's features:)")
    g.add_argument("--rgb-size", type=int, default=None, help="RGB crop side (0 = no RGB)")
    g.add_argument("--landmarks", choices=LANDMARK_MODES, default=None, help="landmark source")
    g.add_argument("--flow", dest="flow_method", choices=FLOW_METHODS, default=None, help="optical flow method")
    g.add_argument("--flow-size", type=int, default=None, help="flow field side")
    g.add_argument("--flow-dtype", choices=FLOW_DTYPES, default=None, help="flow storage dtype")
    g.add_argument("--flow-clip", type=float, default=None, help="flow clip in pixels")
    g.add_argument("--raft-weights", default=None, help="local RAFT checkpoint")
    add_device(g, "RAFT device", default=None, flag="--flow-device", dest="device")
    g.add_argument("--max-frames", type=int, default=None, help="keep at most N frames per video (0 = all)")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the readers' one-line notes
    console = Console(highlight=False)
    try:
        if not 0.0 <= args.max_failed_frac <= 1.0:
            raise UserError(f"--max-failed-frac must be in [0, 1], got {args.max_failed_frac}")
        rep = run(args, console)
    except KeyboardInterrupt:
        console.print("interrupted: finished files are kept; run the same command again to resume", markup=False)
        return 130
    if rep.skipped and not (rep.done or rep.failed):  # a finished cache: one line, not a table of zeros
        console.print(f"features: {args.dataset} (shard {args.shard}): all {rep.skipped} videos already cached "
                      f"({_fmt_bytes(rep.cache_bytes)}); nothing to do", markup=False, soft_wrap=True)
        return 0
    console.print(report_table(rep, f"features: {args.dataset} (shard {args.shard})"))
    total = rep.done + rep.skipped + rep.failed
    if rep.failed and (rep.done + rep.skipped == 0 or rep.failed > args.max_failed_frac * total):
        print(f"error: {rep.failed} of {total} utterances failed (listed above and in {rep.failures_path}); "
              "fix or remove them and rerun (finished files are kept), or pass "
              f"--max-failed-frac {rep.failed / total:.3g} to accept this", file=sys.stderr)
        return 1
    if rep.failed:
        print(f"warning: {rep.failed} of {total} utterances failed (within --max-failed-frac "
              f"{args.max_failed_frac}); see failures.jsonl", file=sys.stderr)
    elif rep.done + rep.skipped == 0:
        console.print("nothing to do for this shard", markup=False)
    return 0
