"""README tables from trained runs: the teacher benchmark and the KD ablation (CTC-only twin vs distilled).

    python -m evaluate.tables teachers [--runs exp/teachers] [--cache cache] [--dataset synthsign]
    python -m evaluate.tables students [--runs exp/students] [--recipes <folder of recipe YAMLs>]
    python -m evaluate.tables all [--teacher-runs ...] [--student-runs ...]
        [--out FILE.md] [--json FILE] [--beam 10] [--frames 200] [--threads 1] [--repeats 10]
        [--stat median|min] [--no-onnx]

Teachers: every run folder with a ``best.pt`` (``python -m models.train``) gives one row:
parameters, median training clips/s (``metrics.jsonl``), epochs, milliseconds per
``--frames``-frame clip (batch 1, ``--threads`` CPU threads) and dev/test WER with a prefix
beam search (``evaluate.eval.evaluate``, which also leaves CTM + report in ``<run>/eval/<split>``).
Then the accuracy bar is checked: the best fused teacher (chosen on dev) must beat
every single-stream model on dev and on test.

Students: for every recipe (the ``recipes/*.yaml`` presets) the CTC-only twin
(``<runs>/<recipe>_ctc``) and the distilled run (``<runs>/<recipe>``), as ``distill.train``
lays them out. WERs come from the run's ``results.json`` when it was decoded with the same
beam, else they are decoded here; parameters, the size of the model weights alone (state dict,
no optimizer state), the int8 ONNX size and the milliseconds per clip are always measured here,
so every row is measured the same way. Runs not trained yet are rows saying so, with the command
that trains them.

Markdown goes to stdout (and ``--out``); ``--json`` writes every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import yaml

from preprocess.commandline import add_cache, add_out, command, prog
from preprocess.configs import preset_dir
from preprocess.files import atomic_write_text

if TYPE_CHECKING:
    from models.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER_RUNS = Path("exp") / "teachers"
DEFAULT_STUDENT_RUNS = Path("exp") / "students"
SPLITS = ("dev", "test")
STATS = ("median", "min")
ERRORS = (ValueError, FileNotFoundError, KeyError, RuntimeError)  # one bad run must not sink the table


@dataclass(frozen=True)
class Settings:
    cache: str = "cache"  # cache root the runs were trained on
    dataset: str | None = None  # dataset under the cache (None: each checkpoint's own)
    beam: int = 10  # prefix beam width of the dev/test decoding
    frames: int = 200  # clip length of the speed measurement
    threads: int = 1  # CPU threads of the speed measurement
    repeats: int = 10  # timed runs per model (median reported)
    warmup: int = 2  # untimed runs first
    onnx: bool = True  # students: export + int8-quantise to report the int8 file size and speed
    stat: str = "median"  # timing shown: "median" | "min" (min: the uncontended figure on a busy machine)
    train_batches: int = 10  # teachers: training steps timed now for clips/s (0: the training log's median)

    def __post_init__(self) -> None:
        if self.stat not in STATS:
            raise ValueError(f"stat must be one of {STATS}, got {self.stat!r}")
        for name in ("beam", "frames", "threads", "repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0 or self.train_batches < 0:
            raise ValueError(f"warmup and train_batches must be >= 0, got {self.warmup!r}, {self.train_batches!r}")


# ------------------------------------------------------------------------------- helpers


def median_clips_per_s(metrics: Sequence[dict[str, Any]]) -> float | None:
    """Median of ``train_clips_per_s`` over epochs: one epoch slowed by another process does not move it."""
    vals = [float(r["train_clips_per_s"]) for r in metrics if r.get("train_clips_per_s") is not None]
    return statistics.median(vals) if vals else None


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> int:
    """Bytes on disk of the model weights alone: the state dict saved to a temporary file."""
    fd, tmp = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    try:
        torch.save(state_dict, tmp)
        return os.path.getsize(tmp)
    finally:
        os.unlink(tmp)


def time_model(model: torch.nn.Module, spec: Any, input_names: Sequence[str], s: Settings) -> float:
    """Median milliseconds per ``s.frames``-frame clip, batch 1, ``s.threads`` threads (evaluate.speed)."""
    from evaluate.speed import measure

    r = measure(model, spec, frames=s.frames, threads=s.threads, repeats=s.repeats, warmup=s.warmup,
                input_names=input_names)
    return float(r["ms_min"] if s.stat == "min" else r["ms_per_clip"])


def cpu_name() -> str:
    """The CPU model, for the table caption (timings only compare on the same machine)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.3f}"


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n / 1e3:.1f} k"


def _one_line(e: BaseException) -> str:
    return str(e.args[0] if isinstance(e, KeyError) and e.args else e).splitlines()[0]


# ------------------------------------------------------------------------------ teachers


def teacher_row(run: str | os.PathLike, s: Settings) -> dict[str, Any]:
    """One teacher run (a folder with ``best.pt``) measured: size, speed, training rate, dev/test WER."""
    from evaluate.eval import evaluate
    from models.build import count_parameters
    from models.checkpoint import load_model
    from models.train import read_metrics

    run = Path(run)
    best = run / "best.pt"
    model, ckpt = load_model(best)
    cfg = ckpt.config
    streams = list(ckpt.streams)
    metrics = read_metrics(run / "metrics.jsonl")
    planned = int(ckpt.train_config.get("epochs") or 0) or None
    trained = max((int(r["epoch"]) for r in metrics), default=int(ckpt.epoch or 0))
    row: dict[str, Any] = {
        "name": run.name, "run": str(run), "checkpoint": str(best),
        "streams": streams, "fusion": str(cfg.get("fusion", "none")), "fused": len(streams) > 1,
        "parameters": count_parameters(model), "train_clips_per_s": median_clips_per_s(metrics),
        "epochs": trained, "epochs_planned": planned, "best_epoch": ckpt.epoch,
        "training": bool(planned and trained < planned),
        "ms_per_clip": time_model(model, ckpt.spec, ckpt.input_names, s),
        "notes": [],
    }
    row["train_clips_per_s_log"] = row["train_clips_per_s"]
    if s.train_batches:
        from evaluate.speed import training_clips_per_s

        try:
            row["train_clips_per_s"] = training_clips_per_s(model, ckpt, s.cache, s.dataset, s.train_batches)
        except ERRORS as e:
            row["notes"].append(f"training speed not measured ({_one_line(e)}); clips/s from the training log")
    del model
    for split in SPLITS:
        row[f"{split}_wer"], row[split] = None, None
        try:
            result = evaluate(best, s.cache, s.dataset, split, beam=s.beam, out=run / "eval" / split)
        except ERRORS as e:
            row["notes"].append(f"{split}: {_one_line(e)}")
            continue
        row[split] = result.to_dict()
        row[f"{split}_wer"] = result.wer
    return row


def fused_beats_singles(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The accuracy bar: the best fused teacher (lowest dev WER, then test) beats every single stream
    on dev and on test (strictly lower WER).

    Args:
        rows: dicts with ``name``, ``fused`` (bool), ``dev_wer`` and ``test_wer`` (None: not measured).

    Returns:
        ``ok`` (True/False, None when there is nothing to compare), ``best_fused``, ``losses``
        (``[single, split, fused WER, single WER]`` for every comparison it does not win) and a
        one-line ``message`` with the figures.
    """
    scored = [r for r in rows if r.get("dev_wer") is not None and r.get("test_wer") is not None]
    fused = [r for r in scored if r["fused"]]
    singles = [r for r in scored if not r["fused"]]
    if not fused or not singles:
        return {"ok": None, "best_fused": None, "losses": [],
                "message": (f"fused-vs-single check not possible: {len(fused)} fused and {len(singles)} single-stream "
                            "teacher(s) with dev and test WER; train both kinds (`make teacher CONFIG=...`)")}
    best = min(fused, key=lambda r: (r["dev_wer"], r["test_wer"]))
    losses = [[r["name"], split, best[f"{split}_wer"], r[f"{split}_wer"]]
              for r in singles for split in SPLITS if not best[f"{split}_wer"] < r[f"{split}_wer"]]
    top = {split: min(singles, key=lambda r: r[f"{split}_wer"]) for split in SPLITS}
    figures = (f"the best fused teacher {best['name']} (dev {best['dev_wer']:.2f}, test {best['test_wer']:.2f}) "
               f"vs the best single streams (dev: {top['dev']['name']} {top['dev']['dev_wer']:.2f}, "
               f"test: {top['test']['name']} {top['test']['test_wer']:.2f})")
    if not losses:
        message = f"PASS: {figures}: it beats every single-stream model on dev and test"
    else:
        lost = "; ".join(f"{n} on {sp} ({f:.2f} vs {w:.2f})" for n, sp, f, w in losses)
        message = f"FAIL: {figures}: it does not beat {lost}"
    return {"ok": not losses, "best_fused": best["name"], "losses": losses, "message": message}


def teacher_runs(runs: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(run folders with best.pt, folders without one yet) directly under ``runs``, sorted by name."""
    runs = Path(runs)
    if not runs.is_dir():
        return [], []
    dirs = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [p for p in dirs if (p / "best.pt").is_file()], [p for p in dirs if not (p / "best.pt").is_file()]


def teacher_table(runs: str | os.PathLike, s: Settings, progress: bool = True) -> dict[str, Any]:
    """Rows for every trained teacher under ``runs``, the skipped folders and the fused-vs-single check."""
    ready, skipped = teacher_runs(runs)
    rows = []
    for run in ready:
        if progress:
            print(f"[teachers] {run.name} ...", file=sys.stderr, flush=True)
        try:
            rows.append(teacher_row(run, s))
        except ERRORS as e:
            rows.append({"name": run.name, "run": str(run), "error": _one_line(e), "fused": False,
                         "dev_wer": None, "test_wer": None})
    # single streams first, then fusions, so the check reads top to bottom
    rows.sort(key=lambda r: (bool(r.get("fused")), r["name"]))
    return {"runs": str(runs), "rows": rows, "skipped": [str(p) for p in skipped],
            "check": fused_beats_singles(rows)}


def teachers_markdown(table: dict[str, Any], s: Settings) -> str:
    f = s.frames
    lines = [f"| model | streams | fusion | params | train clips/s | epochs | ms / {f}-frame clip | dev WER | test WER |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in table["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | - | - | - | - | - | - | - | - |")
            notes.append(f"- {r['name']}: not measured: {r['error']}")
            continue
        epochs = str(r["epochs"])
        if r["training"]:
            epochs += f" of {r['epochs_planned']} (training)"
        lines.append(f"| {r['name']} | {'+'.join(r['streams'])} | {r['fusion']} | {_params(r['parameters'])} | "
                     f"{_fmt(r['train_clips_per_s'], 1)} | {epochs} | {_fmt(r['ms_per_clip'])} | "
                     f"{_fmt(r['dev_wer'])} | {_fmt(r['test_wer'])} |")
        notes += [f"- {r['name']}: {n}" for n in r["notes"]]
    if not table["rows"]:
        lines = [f"no trained teacher under {table['runs']} (a run folder with best.pt); train one with "
                 "`make teacher CONFIG=configs/teachers/<name>.yaml`"]
    out = "\n".join(lines)
    train = (f"{s.train_batches} training steps timed now (batch size, augmentation and optimizer of the run; "
             f"{os.cpu_count()} threads)" if s.train_batches else "median over epochs (metrics.jsonl)")
    out += (f"\n\nCPU: {cpu_name()}; ms / clip: {s.threads} thread(s), batch 1, {s.stat} of {s.repeats} runs; "
            f"train clips/s: {train}; WER: prefix beam search, beam {s.beam}.")
    if table["skipped"]:
        out += "\nSkipped (no best.pt yet): " + ", ".join(Path(p).name for p in table["skipped"]) + "."
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out + "\n\n" + table["check"]["message"]


# ------------------------------------------------------------------------------ students


def recipe_names(recipes: str | os.PathLike | None = None) -> list[str]:
    """Recipe names: the YAML file stems (``distill.train`` writes ``exp/students/<name>``)."""
    return sorted(p.stem for p in Path(recipes or preset_dir("recipes")).glob("*.yaml"))


def recipe_kind(recipes: str | os.PathLike, name: str) -> str:
    """The student kind a recipe trains (for rows of runs not trained yet)."""
    try:
        raw = yaml.safe_load((Path(recipes) / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        return str((raw.get("student") or {}).get("kind", "landmark"))
    except (OSError, yaml.YAMLError, AttributeError):
        return "-"


def train_command(recipe: str, kd: bool, runs: Path, cache: str) -> str:
    """The command that trains a missing run (``make student`` for the default layout)."""
    default_out = runs == DEFAULT_STUDENT_RUNS or runs.resolve() == (ROOT / DEFAULT_STUDENT_RUNS).resolve()
    if kd and default_out:
        return f"make student RECIPE={recipe}" + ("" if cache == "cache" else f" CACHE={cache}")
    cmd = f"python -m distill.train --recipe {recipe}" + ("" if kd else " --no-kd")
    if cache != "cache":
        cmd += f" --cache {cache}"
    if not default_out:
        cmd += f" --out {runs / (recipe if kd else recipe + '_ctc')}"
    return cmd


def int8_figures(model: torch.nn.Module, ckpt: Checkpoint, s: Settings) -> tuple[int, float]:
    """(int8 ONNX bytes, its ms per clip): export + dynamic int8 quantisation in a temporary folder."""
    from evaluate.export import export_onnx, preprocess_info, quantize_int8
    from evaluate.speed import measure

    spec = ckpt.spec
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, spec, ckpt.vocab, ckpt.config, Path(tmp) / "model.onnx",
                           ckpt.input_names, preprocess=preprocess_info(ckpt))
        q = quantize_int8(fp32, Path(tmp) / "model.int8.onnx")
        r = measure(q, spec, frames=s.frames, threads=s.threads, repeats=s.repeats, warmup=s.warmup)
        return int(r["size_bytes"]), float(r["ms_min"] if s.stat == "min" else r["ms_per_clip"])


def student_row(run: str | os.PathLike, recipe: str, kd: bool, s: Settings, runs: Path | None = None,
                kind: str = "-") -> dict[str, Any]:
    """One ablation row: a ``distill.train`` run measured, or a "not trained" row with its command."""
    from evaluate.eval import evaluate
    from models.build import count_parameters
    from models.checkpoint import load_model

    run = Path(run)
    row: dict[str, Any] = {"recipe": recipe, "mode": "kd" if kd else "ctc", "run": str(run), "student": kind,
                           "notes": []}
    for split in SPLITS:
        row[f"{split}_wer"] = row[f"{split}_corrected_wer"] = None
    best, results_path = run / "best.pt", run / "results.json"
    if not best.is_file():
        row["status"] = "in progress" if run.is_dir() and any(run.rglob("metrics.jsonl")) else "not trained"
        row["command"] = train_command(recipe, kd, runs or run.parent, s.cache)
        return row
    results: dict[str, Any] = {}
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            row["notes"].append(f"{results_path}: unreadable ({e}); WERs decoded here")
    row["status"] = "done" if results else "no results.json (training unfinished?)"
    row["epoch_s"] = {k: float(v) for k, v in (results.get("epoch_time_s") or {}).items()}  # per stage
    model, ckpt = load_model(best)
    row.update(student=str(results.get("student") or ckpt.config.get("kind", kind)), checkpoint=str(best),
               epoch=ckpt.epoch, parameters=count_parameters(model), weights_bytes=weights_bytes(ckpt.weights),
               torch_ms=time_model(model, ckpt.spec, ckpt.input_names, s), int8_bytes=None, int8_ms=None)
    if s.onnx:
        try:
            row["int8_bytes"], row["int8_ms"] = int8_figures(model, ckpt, s)
        except Exception as e:  # an op the exporter or quantiser cannot take: the row stands without it
            row["notes"].append(f"no int8 ONNX: {type(e).__name__}: {_one_line(e)}")
    splits = results.get("splits") or {}
    same_beam = int(results.get("beam") or 0) == s.beam
    for split in SPLITS:
        given = splits.get(split) if same_beam else None
        if given and given.get("wer") is not None:
            row[split], row[f"{split}_wer"], row["wer_source"] = given, float(given["wer"]), "results.json"
        else:
            try:
                got = evaluate(best, s.cache, s.dataset, split, beam=s.beam, out=run / "eval" / split).to_dict()
            except ERRORS as e:
                row["notes"].append(f"{split}: {_one_line(e)}")
                continue
            row[split], row[f"{split}_wer"], row["wer_source"] = got, float(got["wer"]), "decoded here"
        corrected = (splits.get(split) or {}).get("corrected")
        if corrected and corrected.get("wer") is not None:  # the text corrector's (results.json only)
            row[f"{split}_corrected_wer"] = float(corrected["wer"])
    if results and not same_beam:
        row["notes"].append(f"results.json decoded with beam {results.get('beam')}; WERs re-decoded with beam {s.beam}"
                            + ("; the corrected WER is results.json's" if row["dev_corrected_wer"] is not None else ""))
    return row


def kd_beats_ctc(kd: dict[str, Any], ctc: dict[str, Any]) -> bool | None:
    """True when the distilled run has a strictly lower WER than its CTC-only twin on dev and on test
    (None when either lacks a figure)."""
    pairs = [(kd.get(f"{sp}_wer"), ctc.get(f"{sp}_wer")) for sp in SPLITS]
    if any(a is None or b is None for a, b in pairs):
        return None
    return all(a < b for a, b in pairs)


def epoch_ratio(kd: dict[str, Any], ctc: dict[str, Any]) -> float | None:
    """Seconds per distillation epoch over seconds per CTC-only epoch (single-stage runs only:
    a staged recipe's stages train on different data, e.g. SMKD's sentences + segments)."""
    a, b = kd.get("epoch_s") or {}, ctc.get("epoch_s") or {}
    if len(a) != 1 or len(b) != 1:
        return None
    (ta,), (tb,) = a.values(), b.values()
    return ta / tb if tb > 0 else None


def student_table(runs: str | os.PathLike, s: Settings, recipes: str | os.PathLike | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Two rows per recipe (CTC-only twin, distilled) and whether distillation won."""
    runs = Path(runs)
    recipes = recipes or preset_dir("recipes")
    rows, verdicts = [], {}
    for name in recipe_names(recipes):
        kind = recipe_kind(recipes, name)
        pair = {}
        for kd in (False, True):
            run = runs / (name if kd else f"{name}_ctc")
            if progress:
                print(f"[students] {run.name} ...", file=sys.stderr, flush=True)
            try:
                pair[kd] = student_row(run, name, kd, s, runs, kind)
            except ERRORS as e:
                pair[kd] = {"recipe": name, "mode": "kd" if kd else "ctc", "run": str(run), "student": kind,
                            "status": "error", "error": _one_line(e), "notes": [], "dev_wer": None, "test_wer": None,
                            "dev_corrected_wer": None, "test_corrected_wer": None}
        verdicts[name] = kd_beats_ctc(pair[True], pair[False])
        pair[True]["epoch_ratio"] = epoch_ratio(pair[True], pair[False])
        pair[True]["kd_beats_ctc"] = verdicts[name]
        rows += [pair[False], pair[True]]
    return {"runs": str(runs), "recipes": str(recipes), "rows": rows, "kd_beats_ctc": verdicts}


def _epoch(r: dict[str, Any]) -> str:
    times = r.get("epoch_s") or {}
    if not times:
        return "-"
    text = " / ".join(f"{t:.1f}" for t in times.values())
    return text + (f" ({r['epoch_ratio']:.2f}x)" if r.get("epoch_ratio") else "")


def students_markdown(table: dict[str, Any], s: Settings) -> str:
    f = s.frames
    lines = [f"| recipe | training | student | params | weights MB | int8 ONNX MB | ms / {f}-frame clip (torch) | "
             f"ms / {f}-frame clip (int8) | s / epoch | dev WER | test WER | dev / test WER + text correction | "
             "KD beats CTC-only |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    notes = []
    for r in table["rows"]:
        mode = "KD" if r["mode"] == "kd" else "CTC only"
        verdict = {True: "yes", False: "no", None: "-"}[r.get("kd_beats_ctc")] if r["mode"] == "kd" else ""
        if "command" in r or "error" in r:
            what = f"{r['status']}: `{r['command']}`" if "command" in r else f"error: {r['error']}"
            lines.append(f"| {r['recipe']} | {mode} | {r['student']} | {what} | - | - | - | - | - | - | - | - | {verdict} |")
            continue
        corr = "-"
        if r["dev_corrected_wer"] is not None or r["test_corrected_wer"] is not None:
            corr = f"{_fmt(r['dev_corrected_wer'])} / {_fmt(r['test_corrected_wer'])}"
        lines.append(f"| {r['recipe']} | {mode} | {r['student']} | {_params(r['parameters'])} | "
                     f"{_mb(r['weights_bytes'])} | {_mb(r['int8_bytes'])} | {_fmt(r['torch_ms'])} | "
                     f"{_fmt(r['int8_ms'])} | {_epoch(r)} | {_fmt(r['dev_wer'])} | {_fmt(r['test_wer'])} | {corr} | {verdict} |")
        if r["status"] != "done":
            notes.append(f"- {r['recipe']} ({mode}): {r['status']}")
        notes += [f"- {r['recipe']} ({mode}): {n}" for n in r["notes"]]
    out = "\n".join(lines)
    out += (f"\n\nCPU: {cpu_name()}, {s.threads} thread(s), batch 1, {s.stat} of {s.repeats} runs. Weights MB: the "
            f"state dict alone (no optimizer state). WER: prefix beam search, beam {s.beam}. KD beats CTC-only: "
            "lower WER than the CTC-only twin on dev and on test. s / epoch: mean training seconds per epoch "
            "(per stage for staged recipes; KD rows: ratio to the CTC-only twin's epoch, the teacher running "
            "once beforehand into the teacher-output cache), from results.json, as measured while training.")
    if notes:
        out += "\n\n" + "\n".join(notes)
    return out


# ----------------------------------------------------------------------------------- CLI


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("evaluate.tables"), description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("teachers", "students", "all"), help="which table(s)")
    p.add_argument("--runs", help="run folders (default exp/teachers or exp/students; not with 'all')")
    p.add_argument("--teacher-runs", default=str(DEFAULT_TEACHER_RUNS), help="teacher runs for 'all'")
    p.add_argument("--student-runs", default=str(DEFAULT_STUDENT_RUNS), help="student runs for 'all'")
    p.add_argument("--recipes", default=None, help="recipe folder (default: the recipes presets)")
    add_cache(p, default="cache")
    p.add_argument("--dataset", help="dataset under the cache (default: each checkpoint's own)")
    p.add_argument("--beam", type=int, default=10, help="prefix beam width (default 10)")
    p.add_argument("--frames", type=int, default=200, help="frames per timed clip (default 200)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the timings (default 1)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per model, median reported (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--stat", choices=STATS, default="median",
                   help="timing reported: median (default) or min (steadier when other processes share the CPU)")
    p.add_argument("--train-batches", type=int, default=10,
                   help="teachers: training steps timed for clips/s (default 10; 0: the training log's median)")
    p.add_argument("--no-onnx", action="store_true", help="students: skip the int8 ONNX export (size and speed)")
    add_out(p, "also write the markdown here")
    p.add_argument("--json", help="also write every figure as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.runs and args.what == "all":
        p.error("--runs names one table's folder; with 'all' use --teacher-runs and --student-runs")
    s = Settings(cache=args.cache, dataset=args.dataset, beam=args.beam, frames=args.frames,
                 threads=args.threads, repeats=args.repeats, warmup=args.warmup, onnx=not args.no_onnx,
                 stat=args.stat, train_batches=args.train_batches)
    if not Path(args.cache).is_dir():
        raise FileNotFoundError(f"{args.cache}: no cache folder; pass --cache or run `make features` first")
    torch.set_num_threads(s.threads)
    result: dict[str, Any] = {"settings": asdict(s), "cpu": cpu_name(), "torch": torch.__version__}
    parts = []
    if args.what in ("teachers", "all"):
        runs = args.runs if args.what == "teachers" and args.runs else args.teacher_runs
        result["teachers"] = teacher_table(runs, s, progress=not args.quiet)
        parts.append("### Teachers\n\n" + teachers_markdown(result["teachers"], s))
    if args.what in ("students", "all"):
        if args.recipes and not Path(args.recipes).is_dir():
            raise FileNotFoundError(f"{args.recipes}: no recipe folder; pass --recipes")
        runs = args.runs if args.what == "students" and args.runs else args.student_runs
        result["students"] = student_table(runs, s, args.recipes, progress=not args.quiet)
        parts.append("### Students: CTC only vs distilled\n\n" + students_markdown(result["students"], s))
    text = "\n\n".join(parts) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
