"""One run over a dataset: select this shard, skip valid files, extract the rest, record failures."""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from preprocess import cache
from preprocess.features.config import STAGES, FeatureConfig, Result
from preprocess.features.extract import close_worker, extract_job, finish_job, init_worker, load_job
from preprocess.features.plan import build_plan, prepare_manifest, write_meta_if_changed
from preprocess.files import atomic_write_text
from preprocess.manifest import Utterance
from preprocess.pool import run_jobs


@dataclass
class Report:
    """Totals of one run (what the final table shows; the benchmark reads it too)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    hand_rates: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    cache_bytes: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    failures_path: str = ""  # this run's failures.jsonl

    @property
    def hand_rate(self) -> float | None:
        rates = [r for r in self.hand_rates if not math.isnan(r)]
        return float(np.mean(rates)) if rates else None

    def add(self, r: Result) -> None:
        if not r.ok:
            self.failed += 1
            self.failures.append((r.id, r.message))
            return
        self.done += 1
        self.frames += r.frames
        for k, v in r.times.items():
            self.stage_s[k] = self.stage_s.get(k, 0.0) + v
        if r.hand_rate is not None:
            self.hand_rates.append(r.hand_rate)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def select(utts: Sequence[Utterance], splits: Iterable[str] | None, limit: int | None,
           shard: tuple[int, int]) -> list[Utterance]:
    """Split filter, then ``--limit``, then utterance k of that list goes to shard k % n."""
    wanted = set(splits) if splits else None
    out = [u for u in utts if wanted is None or u.split in wanted]
    if limit:
        out = out[:limit]
    i, n = shard
    return [u for k, u in enumerate(out) if k % n == i]


def _remove_stale_temps(cache_root: str, dataset: str, utts: Sequence[Utterance]) -> int:
    """Delete temp files a killed run left behind for ``utts`` (this shard's utterances only,
    so a shard running on another machine keeps its own in-progress writes)."""
    by_split: dict[str, set[str]] = {}
    for u in utts:
        by_split.setdefault(u.split, set()).add(u.id)
    removed = 0
    for split, ids in by_split.items():
        folder = cache.dataset_dir(cache_root, dataset) / split
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith(".") and name.endswith(".npz.tmp"):
                utt_id = name[1:-len(".npz.tmp")].rsplit(".", 1)[0]  # ".<id>.<random>.npz.tmp"
                if utt_id in ids:
                    try:
                        os.unlink(entry.path)
                        removed += 1
                    except FileNotFoundError:
                        pass
    return removed


def _reset_failures(path: Path, other_shards: set[tuple[str, str]]) -> None:
    """Start this run's ``failures.jsonl``: records of earlier runs go, except those of utterances
    that belong to other shards of the same selection (their own runs rewrite them)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and (rec.get("split"), rec.get("id")) in other_shards:
            keep.append(line)
    if keep:
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))
    else:
        path.unlink()


def _hash_member(chash: str) -> bytes:
    """The exact bytes ``cache.write_npz_atomic`` stores as the ``config_hash.npy`` member."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(np.array(chash)), allow_pickle=False)
    return buf.getvalue()


def _is_valid(path: Path, chash: str, member: bytes) -> bool:
    """``cache.is_valid`` with a fast path: compare the raw hash member, no array parsing.

    On a finished cache this check is most of a re-run's cost; anything unexpected falls
    back to the reference check.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.read("config_hash.npy") == member:
                return True
    except (OSError, KeyError, zipfile.BadZipFile, EOFError):
        return False
    return cache.is_valid(path, chash)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.npz") if f.is_file())


CLI_FIELDS = ("rgb_size", "landmarks", "flow_method", "flow_size", "flow_dtype", "flow_clip",
              "raft_weights", "device", "max_frames")


def _failure_line(utt_id: str, message: str) -> str:
    return f"FAILED {utt_id}: {' '.join(message.split())}"


def run(args: argparse.Namespace, console=None) -> Report:
    """Do one extraction run (everything ``main`` does except argument parsing and exit codes).

    Raises:
        ValueError / FileNotFoundError: configuration problems (bad dataset, empty manifest).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from preprocess.datasets import load_dataset_config

    console = console or Console(highlight=False)
    t_start = time.perf_counter()
    shard = _parse_shard(args.shard)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    ds = load_dataset_config(args.dataset, args.data_root)
    overrides = {k: getattr(args, k) for k in CLI_FIELDS if getattr(args, k, None) is not None}
    cfg = FeatureConfig.from_dict(ds.features, **overrides)
    if cfg.flow.is_raft:  # before any video is read: not once per failed utterance
        from preprocess.device import resolve_device

        resolve_device(cfg.flow.device, "--flow-device")
    out_dir = cache.dataset_dir(args.cache, ds.name)
    all_utts = prepare_manifest(ds, out_dir)
    if not all_utts:
        raise ValueError(f"{out_dir / 'manifest.jsonl'}: the {ds.name} reader found no utterances under "
                         f"{ds.root}; check --data-root / the YAML's root")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    chosen = select(all_utts, splits, args.limit, (0, 1))
    if not chosen:
        raise ValueError(f"{out_dir / 'manifest.jsonl'}: no utterance in splits {splits}; "
                         f"it has {sorted({u.split for u in all_utts})}")
    plan, meta = build_plan(ds, chosen, cfg, args.cache, reuse_meta=not args.force)
    write_meta_if_changed(args.cache, ds.name, meta)
    mine = select(chosen, None, None, shard)

    rep = Report(failures_path=str(out_dir / "failures.jsonl"))
    todo = []
    member = _hash_member(plan.chash)
    for u in mine:
        path = cache.utt_path(args.cache, ds.name, u.split, u.id)
        if not args.force and _is_valid(path, plan.chash, member):
            rep.skipped += 1
        else:
            todo.append(u)

    _remove_stale_temps(args.cache, ds.name, todo)
    failures_path = out_dir / "failures.jsonl"
    _reset_failures(failures_path, {(u.split, u.id) for u in chosen} - {(u.split, u.id) for u in mine})
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=False, disable=not todo)

    def on_result(r: Result) -> None:
        rep.add(r)
        if not r.ok:
            progress.console.print(_failure_line(r.id, r.message), markup=False, highlight=False, soft_wrap=True)
            with open(failures_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"id": r.id, "split": r.split, "source": r.source, "error": r.message,
                                    "config_hash": plan.chash, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                   ensure_ascii=False) + "\n")
        progress.update(task, advance=1, failed=rep.failed)

    def crash_result(u: Utterance, message: str) -> Result:
        return Result(u.id, u.split, False, message, source=u.source)

    with progress:
        task = progress.add_task(f"{ds.name} shard {args.shard}", total=len(todo), failed=0)
        if todo:
            run_jobs(todo, extract_job, min(args.workers, len(todo)), init_worker, (plan, os.getpid()), on_result,
                     crash_result, stages=(load_job, finish_job), finalizer=close_worker)
    rep.wall_s = time.perf_counter() - t_start
    rep.cache_bytes = _dir_bytes(out_dir)
    return rep
