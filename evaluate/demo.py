"""``make demo``: the whole pipeline on the built-in synthsign corpus, from nothing to a WER table.

Stages (each skipped when its output is already complete, so an interrupted demo resumes):
  1. features  synthsign is generated, read as a custom corpus and cached (RGB, landmarks, flow)
  2. teacher   the multimodal fusion teacher is trained with CTC
  3. student   the KD-MSLRT landmark student is distilled from it (and, with --twin, its CTC-only twin)
  4. score     every model is decoded on dev and test and scored; a table closes the run
  5. pictures  curves.png (training curves of every model) and alignment.png (the student's
               first dev utterance: posteriors, decoded glosses, reference, errors)
Every stage calls the same entry point a user would type (``main(argv)``), so the demo is also
the end-to-end test of those commands.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preprocess.commandline import add_cache, add_out, command, prog
from preprocess.files import atomic_write_text

DATASET = "synthsign"
TEACHER_CONFIG = "synthsign_fusion_attention"  # a teacher preset (configs/teachers/<name>.yaml)
RECIPE = "kdmslrt"
# The demo trains shorter than the benchmark runs (configs: 30 epochs each) so that the whole
# pipeline fits in 10 minutes on 2 CPU cores; the WERs it prints are therefore a little higher
# than the README's tables.
TEACHER_EPOCHS = 20
STUDENT_EPOCHS = 20


def _run(name: str, entry, argv: list[str], timings: dict[str, float]) -> None:
    """Run one stage's ``main(argv)``; a non-zero exit stops the demo with the stage named."""
    print(f"\n== {name}: {' '.join(argv)}", flush=True)
    t0 = time.time()
    code = entry(argv)
    timings[name] = time.time() - t0
    if code:
        raise SystemExit(f"demo: stage {name!r} failed (exit {code}); fix the error above and rerun `make demo`")


def _score(ckpt: Path, cache: str, dataset: str, out: Path, beam: int) -> dict[str, float]:
    from evaluate.eval import evaluate

    return {split: evaluate(ckpt, cache, dataset, split, beam=beam, out=out / split).wer for split in ("dev", "test")}


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("evaluate.demo"), description=__doc__.split("\n\n")[0])
    add_cache(p, default="cache")
    add_out(p, "folder for checkpoints, CTMs and results.json", default="exp/demo")
    p.add_argument("--workers", type=int, default=2, help="feature-extraction processes")
    p.add_argument("--dataset", default=DATASET,
                   help="dataset name or YAML (default: the built-in synthsign; the teacher config and the "
                        "recipe must name the same dataset)")
    p.add_argument("--teacher-config", default=TEACHER_CONFIG, help="teacher training YAML or preset name")
    p.add_argument("--recipe", default=RECIPE, help="distillation recipe name or YAML")
    p.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS, help="teacher training epochs")
    p.add_argument("--student-epochs", type=int, default=STUDENT_EPOCHS, help="student training epochs")
    p.add_argument("--twin", action="store_true", help="also train the student with CTC alone, for comparison")
    p.add_argument("--beam", type=int, default=10, help="decoding beam for the final scores")
    args = p.parse_args(argv)

    from distill.train import main as student_main
    from preprocess.datasets import load_dataset_config
    from models.train import main as teacher_main
    from preprocess.features import main as features_main

    out = Path(args.out)
    timings: dict[str, float] = {}
    t0 = time.time()
    dataset = load_dataset_config(args.dataset).name  # the cache folder the later stages read
    _run("features", features_main, ["--dataset", args.dataset, "--cache", args.cache, "--workers", str(args.workers)],
         timings)
    teacher_dir = out / "teacher"
    _run("teacher", teacher_main, ["--config", args.teacher_config, "--cache", args.cache, "--out", str(teacher_dir),
                                   "--epochs", str(args.teacher_epochs),
                                   *(["--resume"] if (teacher_dir / "last.pt").exists() else [])], timings)
    runs = {"teacher (fusion: rgb+landmarks+flow)": teacher_dir / "best.pt"}
    students = [("student (landmarks, distilled)", out / "student", [])]
    if args.twin:
        students.append(("student (landmarks, CTC only)", out / "student_ctc", ["--no-kd"]))
    for label, sdir, extra in students:
        resume = ["--resume"] if any(sdir.rglob("last.pt")) else []
        _run(label, student_main, ["--recipe", args.recipe, "--teacher", str(teacher_dir / "best.pt"),
                                   "--cache", args.cache, "--out", str(sdir),
                                   "--epochs", str(args.student_epochs), *extra, *resume], timings)
        runs[label] = _final_checkpoint(sdir)

    print("\n== score", flush=True)
    results = {label: _score(ckpt, args.cache, dataset, ckpt.parent / "eval", args.beam) for label, ckpt in runs.items()}
    total = time.time() - t0
    atomic_write_text(out / "results.json", json.dumps({"wer": results, "seconds": timings, "total_seconds": total},
                                                       indent=2) + "\n")
    _print_table(results, total)
    for path in _pictures(out, runs, args.cache, dataset, args.beam):
        print(f"picture: {path}")
    return 0


def _pictures(out: Path, runs: dict[str, Path], cache: str, dataset: str, beam: int) -> list[Path]:
    """Training curves of every model side by side, and the distilled student's first dev utterance."""
    from evaluate.plot import plot_cached_utterance, plot_curves

    labels = list(runs)
    dirs = [runs[k].parent for k in labels]
    curves = plot_curves(dirs, out / "curves.png", labels=[k.split(" (")[0] + f" ({d.name})" for k, d in zip(labels, dirs)])
    student = runs[labels[1]] if len(labels) > 1 else runs[labels[0]]
    utt = plot_cached_utterance(student, cache, out / "alignment.png", split="dev", beam=beam, dataset=dataset)
    return [curves, utt]


def _final_checkpoint(run_dir: Path) -> Path:
    """The student's selected checkpoint: ``best.pt`` of the run, or of its last stage when staged."""
    results = run_dir / "results.json"
    if results.is_file():
        best = json.loads(results.read_text(encoding="utf-8")).get("checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    found = sorted(run_dir.rglob("best.pt"), key=lambda q: q.stat().st_mtime)
    if not found:
        raise SystemExit(f"demo: no best.pt under {run_dir}; the student stage did not finish")
    return found[-1]


def _print_table(results: dict[str, dict[str, float]], total: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"synthsign WER (%) — demo finished in {total / 60:.1f} min")
    table.add_column("model")
    table.add_column("dev", justify="right")
    table.add_column("test", justify="right")
    for label, wer in results.items():
        table.add_row(label, f"{wer['dev']:.2f}", f"{wer['test']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
