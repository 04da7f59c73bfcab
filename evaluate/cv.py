"""`make cv`: k-fold cross-validation of a teacher, its distilled student and the CTC-only twin.

    python -m evaluate.cv --dataset boston104 --teacher-config configs/teachers/keypoints_small.yaml \\
        --recipe keypoints_small [--folds 5] [--seeds 0 1 2] [--group-by sentence|signer|none]
    python -m evaluate.cv --dataset boston104 --recipe keypoints_small --models twin student \\
        --ensemble-teacher twin | --cross-fit 5

For corpora without a dev split. Each fold is a dataset view of the cache
(``preprocess.folds``): trained on the other folds, scored on the held-out one, whose labels
select nothing (best.pt is chosen by training loss, or on a dev part carved out of the
training folds with ``--dev-frac``). For every fold and seed it trains the teacher
(``models.train``), the student distilled from that fold's teacher and its CTC-only twin
(``distill.train``); finished runs are skipped, so an interrupted CV resumes. The report
(``<out>/report.json`` and ``report.md``) gives per model the WER pooled over the folds
(every sentence scored once) for each seed, mean ± sd over seeds and over fold x seed runs,
and paired differences; a claim "A beats B" is printed only when the mean gap exceeds its sd.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from preprocess.commandline import add_cache, add_device, add_out, command, prog
from preprocess.configs import UserError
from preprocess.device import resolve_device
from preprocess.folds import GROUP_BY, FoldView, make_fold_view, own_splits_view
from preprocess.files import atomic_write_text

log = logging.getLogger("evaluate.cv")
MODELS = ("teacher", "student", "twin")  # what --models runs; "ensemble" is reported with --ensemble-teacher
REPORTED = ("teacher", "ensemble", "student", "twin")


@dataclass(frozen=True)
class RunResult:
    model: str  # "teacher" | "student" | "twin"
    fold: int
    seed: int
    wer: float  # held-out fold WER (%)
    errors: int  # substitutions + deletions + insertions
    n_ref: int  # reference glosses of the held-out fold
    unseen_tokens: int  # held-out glosses the fold's training part never shows


def _score_dict(r: Any) -> dict[str, Any]:
    d = r if isinstance(r, dict) else r.to_dict()
    return {"wer": float(d["wer"]), "errors": int(d["sub"]) + int(d["del"]) + int(d["ins"]), "n_ref": int(d["n_ref"])}


def finished(out: Path) -> dict[str, Any] | None:
    """The held-out score of a finished run folder (a teacher's or ensemble's result.json, a
    student's results.json), or None while it is not finished."""
    if (out / "result.json").is_file():
        return json.loads((out / "result.json").read_text(encoding="utf-8"))
    if (out / "results.json").is_file():
        return _score_dict(json.loads((out / "results.json").read_text(encoding="utf-8"))["splits"]["test"])
    return None


def run_teacher(config: str, view: FoldView, seed: int, out: Path, cache: str, epochs: int | None,
                beam: int, device: str) -> dict[str, Any]:
    """Train (or resume) the fold's teacher and score its held-out fold; cached in result.json."""
    from evaluate.eval import evaluate
    from models.train import load_config, train

    if (done := finished(out)) is not None:
        return done
    cfg = load_config(config, cache=cache, epochs=epochs)
    cfg = replace(cfg, data=replace(cfg.data, dataset=view.name, dev_split="dev"), train=replace(cfg.train, seed=seed))
    summary = train(cfg, out, resume=True, device=device)
    ckpt = summary["best_path"] or summary["last"]
    result = _score_dict(evaluate(ckpt, cache, view.name, "test", beam=beam, out=out / "eval", device="cpu"))
    atomic_write_text(out / "result.json", json.dumps(result) + "\n")
    return result


def run_student(recipe_name: str, view: FoldView, seed: int, out: Path, cache: str, epochs: int | None,
                teacher: Sequence[Path] | None, kd: bool, device: str, out_of_fold: bool = False) -> dict[str, Any]:
    """Distil (kd) or train the CTC-only twin on the fold; held-out WER from its results.json.
    ``out_of_fold``: the teacher members are cross-fitted (``teacher.out_of_fold``)."""
    from distill.recipes import load_recipe
    from distill.train import run_recipe

    if (done := finished(out)) is not None:
        return done
    recipe = load_recipe(recipe_name, cache=cache, epochs=epochs)
    recipe = replace(recipe, data=replace(recipe.data, dataset=view.name, dev_split="dev"),
                     train=replace(recipe.train, seed=seed))
    if out_of_fold:
        recipe = replace(recipe, teacher=replace(recipe.teacher, out_of_fold=True))
    results = run_recipe(recipe, out, teacher=[str(p) for p in teacher] if teacher else None, kd=kd, resume=True,
                         device=device)
    return _score_dict(results["splits"]["test"])


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = list(values)
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def summarise(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Per model: pooled WER per seed, mean ± sd over seeds and over runs; paired differences."""
    models = [m for m in REPORTED if any(r.model == m for r in runs)]
    seeds = sorted({r.seed for r in runs})
    out: dict[str, Any] = {"models": {}, "pairs": {}}
    for m in models:
        mine = [r for r in runs if r.model == m]
        pooled = {}
        for s in seeds:
            rs = [r for r in mine if r.seed == s]
            if rs:
                pooled[s] = 100.0 * sum(r.errors for r in rs) / max(1, sum(r.n_ref for r in rs))
        pm, psd = mean_sd(list(pooled.values()))
        fm, fsd = mean_sd([r.wer for r in mine])
        out["models"][m] = {"pooled_by_seed": pooled, "mean": pm, "sd": psd, "runs": len(mine),
                            "fold_mean": fm, "fold_sd": fsd}
    for a, b in (("student", "twin"), ("teacher", "twin"), ("ensemble", "twin"), ("student", "teacher")):
        if a in out["models"] and b in out["models"]:
            pa, pb = out["models"][a]["pooled_by_seed"], out["models"][b]["pooled_by_seed"]
            if set(pa) == {-1}:  # one ensemble per fold against every seed of the other model
                diffs = [pa[-1] - v for v in pb.values()]
            else:
                diffs = [pa[s] - pb[s] for s in pa if s in pb]
            if diffs:
                dm, dsd = mean_sd(diffs)
                sd = max(out["models"][a]["sd"], out["models"][b]["sd"], dsd)
                out["pairs"][f"{a}-{b}"] = {"mean_diff": dm, "sd_diff": dsd, "n": len(diffs),
                                            "a_beats_b": dm < 0 and -dm > sd and len(diffs) >= 3}
    return out


def format_report(summary: dict[str, Any], header: str, metric: str = "CV WER (pooled over folds, mean ± sd over seeds)") -> str:
    """Markdown table: pooled CV WER mean ± sd over seeds, per-run spread, and the claims that hold."""
    lines = [header, "", f"| model | {metric} | per seed | fold x seed runs: mean ± sd |",
             "|---|---:|---|---:|"]
    for m, s in summary["models"].items():
        per_seed = " / ".join(f"{v:.1f}" for v in s["pooled_by_seed"].values())
        lines.append(f"| {m} | {s['mean']:.1f} ± {s['sd']:.1f} | {per_seed} | "
                     f"{s['fold_mean']:.1f} ± {s['fold_sd']:.1f} (n={s['runs']}) |")
    lines.append("")
    for pair, p in summary["pairs"].items():
        a, b = pair.split("-")
        verdict = (f"{a} beats {b}" if p["a_beats_b"] else
                   "no claim: the gap does not exceed the spread (or fewer than 3 seeds)")
        lines.append(f"- {a} - {b}: {p['mean_diff']:+.1f} ± {p['sd_diff']:.1f} points over {p['n']} seed(s): {verdict}")
    return "\n".join(lines) + "\n"


def _best(run: Path) -> Path:
    return run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"


def cross_validate(dataset: str, teacher_config: str | None, recipe: str | None, cache: str = "cache",
                   out: str | Path = "exp/cv", folds: int = 5, seeds: Sequence[int] = (0, 1, 2),
                   group_by: str = "none", dev_frac: float = 0.0, epochs: int | None = None,
                   models: Sequence[str] = MODELS, beam: int = 10, device: str = "cpu",
                   fold_seed: int = 0, ensemble_teacher: str | None = None, only_folds: Sequence[int] | None = None,
                   teacher_ckpt: Sequence[str] | None = None, cross_fit: int = 0,
                   teacher_recipe: str | None = None) -> dict[str, Any]:
    """Run every (fold, seed, model) not yet finished; write and return the report.

    ``folds=1`` runs the dataset's own splits (trained on train, best.pt on dev, scored on test)
    for every seed. ``ensemble_teacher`` ("teacher" or "twin"): every student of a fold distils
    from the ensemble of that fold's teachers (or CTC-only twins: ensemble self-distillation)
    over all seeds, reported as the model "ensemble". ``teacher_ckpt``: a
    fixed, already trained teacher (one checkpoint, or several: their ensemble) instead of
    training one. ``teacher_recipe``: the teacher is that recipe's student trained CTC-only (e.g. a
    wider version of the student), instead of a ``teacher_config`` model. ``cross_fit`` (k >= 2): every student of a fold distils from k CTC-only twins
    (the recipe without KD, the first seed), each trained on the fold's training part less one
    of its own k folds, and learns every training clip from the twin that never saw it
    (``teacher.out_of_fold``); their WER on the clips they left out is logged. ``only_folds`` runs a subset (e.g. one process per core); the report covers
    the runs finished so far.
    """
    bad = sorted(set(models) - set(MODELS))
    if bad:
        raise UserError(f"--models {bad} unknown; choose from {list(MODELS)}")
    if ensemble_teacher not in (None, "teacher", "twin"):
        raise UserError(f"--ensemble-teacher must be teacher or twin, got {ensemble_teacher!r}")
    if ensemble_teacher == "twin" and "twin" not in models:
        raise UserError("--ensemble-teacher twin distils from the twins: keep twin in --models")
    if sum(bool(x) for x in (teacher_config, teacher_ckpt, teacher_recipe)) > 1:
        raise UserError("give the teacher once: --teacher-config, --teacher-recipe or --teacher-ckpt")
    if "teacher" in models and ensemble_teacher != "twin" and not (teacher_config or teacher_ckpt or teacher_recipe):
        raise UserError("the teacher and the distilled student need --teacher-config (or --teacher-recipe, --teacher-ckpt)")
    if ("student" in models or "twin" in models) and not recipe:
        raise UserError("the student and its twin need --recipe")
    if folds < 1:
        raise UserError(f"--folds must be >= 1 (1: the dataset's own splits), got {folds}")
    if cross_fit and (cross_fit < 2 or ensemble_teacher or teacher_ckpt or "teacher" in models
                      or "student" not in models):
        raise UserError("--cross-fit K (K >= 2) gives the students their teacher, the fold's K cross-fitted twins: "
                        "use it with --models student [twin], without --ensemble-teacher or --teacher-ckpt")
    if teacher_ckpt and folds > 1:
        raise UserError("--teacher-ckpt gives one teacher for every fold, which has seen the held-out folds; "
                        "use --teacher-config with --folds > 1 (or --folds 1)")
    out = Path(out) / dataset
    views = ([own_splits_view(cache, dataset)] if folds == 1 else
             [make_fold_view(cache, dataset, f, folds, group_by, fold_seed, dev_frac) for f in range(folds)])
    runs: list[RunResult] = []
    for view in views:
        run_this = only_folds is None or view.fold in only_folds
        if view.unseen_tokens and run_this:
            log.info("fold %d: %d of %d held-out gloss tokens never occur in its training part (they count as errors)",
                     view.fold, view.unseen_tokens, view.test_tokens)
        base = out / view.name
        fold_runs: list[RunResult] = []

        def record(model: str, seed: int, r: dict[str, Any] | None) -> None:
            if r is not None:
                fold_runs.append(RunResult(model, view.fold, seed, unseen_tokens=view.unseen_tokens, **r))

        def done_or_run(path: Path, fn):  # a run of a fold this process does not own is only read
            return fn() if run_this else finished(path)

        teachers: dict[int, list[Path]] = {}
        if teacher_ckpt:
            teachers = {s: [Path(p) for p in teacher_ckpt] for s in seeds}
        elif "teacher" in models and ensemble_teacher != "twin":
            for seed in seeds:
                tdir = base / f"seed{seed}" / "teacher"
                record("teacher", seed, done_or_run(tdir, lambda: run_student(
                    teacher_recipe, view, seed, tdir, cache, epochs, None, False, device) if teacher_recipe else
                    run_teacher(teacher_config, view, seed, tdir, cache, epochs, beam, device)))
                teachers[seed] = [_best(tdir)]
        twins: dict[int, dict[str, Any] | None] = {}
        if "twin" in models:
            for seed in seeds:
                tdir = base / f"seed{seed}" / "twin"
                twins[seed] = done_or_run(tdir, lambda: run_student(
                    recipe, view, seed, tdir, cache, epochs, None, False, device))
                record("twin", seed, twins[seed])
        if ensemble_teacher:  # one teacher per fold: the ensemble of its teachers' (or twins') seeds
            kind = "twin" if ensemble_teacher == "twin" else "teacher"
            members = [_best(base / f"seed{s}" / kind) for s in seeds]
            edir = base / "ensemble"
            if run_this or finished(edir) is not None:
                record("ensemble", -1, done_or_run(edir, lambda: _run_ensemble(members, view, edir, cache, beam)))
            teachers = {s: members for s in seeds}
        if cross_fit:
            crossfit = _cross_fit_members(recipe, view, cross_fit, group_by, fold_seed, seeds[0], base / "crossfit",
                                          cache, epochs, device, run_this)
            teachers = {s: crossfit for s in seeds}
        if "student" in models:
            for seed in seeds:
                sdir = base / f"seed{seed}"
                twin = twins.get(seed)
                if run_this and twin is not None:
                    best_teacher = min((r.wer for r in fold_runs if r.model in ("teacher", "ensemble")), default=None)
                    if best_teacher is not None and best_teacher > twin["wer"]:
                        log.warning("fold %d seed %d: the teacher (%.1f%% WER) is worse than the student's CTC twin "
                                    "(%.1f%%); distillation may make the student worse", view.fold, seed,
                                    best_teacher, twin["wer"])
                record("student", seed, done_or_run(sdir / "student", lambda: run_student(
                    recipe, view, seed, sdir / "student", cache, epochs, teachers.get(seed), True, device,
                    out_of_fold=bool(cross_fit))))
        runs += fold_runs
    summary = summarise(runs)
    unseen = sum(v.unseen_tokens for v in views)
    total = sum(v.test_tokens for v in views)
    what = "its own train/dev/test splits" if folds == 1 else f"{folds}-fold cross-validation (grouped by {group_by})"
    header = (f"## {dataset}: {what}, seeds {list(seeds)}\n\n"
              f"teacher `{'the CTC-only twins' if ensemble_teacher == 'twin' or cross_fit else teacher_config or teacher_recipe or ','.join(teacher_ckpt or [])}`"
              f"{f' (students distil from the ensemble of the fold {ensemble_teacher}s)' if ensemble_teacher else ''}"
              f"{f' (students distil from {cross_fit} cross-fitted twins per fold, out of fold)' if cross_fit else ''}, "
              f"recipe `{recipe}`; {unseen} of {total} held-out gloss tokens "
              f"({100.0 * unseen / max(total, 1):.1f}%) never occur in their training part.")
    report = {"dataset": dataset, "folds": folds, "group_by": group_by, "seeds": list(seeds), "dev_frac": dev_frac,
              "teacher_config": teacher_config, "teacher_recipe": teacher_recipe, "teacher_ckpt": list(teacher_ckpt or []), "recipe": recipe,
              "epochs": epochs, "ensemble_teacher": ensemble_teacher, "cross_fit": cross_fit,
              "unseen_tokens": unseen, "test_tokens": total, "summary": summary,
              "runs": [asdict(r) for r in runs]}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    metric = "test WER (mean ± sd over seeds)" if folds == 1 else "CV WER (pooled over folds, mean ± sd over seeds)"
    atomic_write_text(out / "report.md", format_report(summary, header, metric))
    return report


def _cross_fit_members(recipe: str, view: FoldView, k: int, group_by: str, fold_seed: int, seed: int, out: Path,
                       cache: str, epochs: int | None, device: str, run: bool) -> list[Path]:
    """The fold's k cross-fitted twins: twin j trains on the fold's training part less its inner fold j
    (a view that keeps the fold's vocabulary, so the twins can teach the fold's student)."""
    members, errors, n_ref = [], 0, 0
    for j in range(k):
        inner = make_fold_view(cache, view.name, j, k, group_by, fold_seed, split="train", parent_vocab=True)
        mdir = out / f"member{j}"
        r = run_student(recipe, inner, seed, mdir, cache, epochs, None, False, device) if run else finished(mdir)
        if r is not None:
            errors, n_ref = errors + r["errors"], n_ref + r["n_ref"]
        members.append(_best(mdir))
    if run and n_ref:
        log.info("fold %d: the cross-fitted twins' WER on the training clips they left out: %.1f%%",
                 view.fold, 100.0 * errors / n_ref)
    return members


def _run_ensemble(members: Sequence[Path], view: FoldView, out: Path, cache: str, beam: int) -> dict[str, Any]:
    """Held-out WER of the ensemble of ``members`` (cached in result.json)."""
    from evaluate.eval import evaluate

    if (done := finished(out)) is not None:
        return done
    result = _score_dict(evaluate([str(p) for p in members], cache, view.name, "test", beam=beam, out=out / "eval"))
    atomic_write_text(out / "result.json", json.dumps(result) + "\n")
    return result


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("evaluate.cv"), description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="dataset under the cache root (make features DATASET=...)")
    p.add_argument("--teacher-config", help="teacher training YAML (its data.dataset is replaced by each fold)")
    p.add_argument("--teacher-recipe", help="a recipe whose student, trained CTC-only, is the teacher "
                   "(e.g. a wider student) instead of --teacher-config")
    p.add_argument("--recipe", help="distillation recipe name or YAML (its data.dataset is replaced by each fold)")
    add_cache(p, default="cache")
    add_out(p, "output root; runs go to <out>/<dataset>/<fold>/seed<N>/", default="exp/cv")
    p.add_argument("--folds", type=int, default=5, help="number of folds (1: the dataset's own train/dev/test splits)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds per fold")
    p.add_argument("--group-by", choices=GROUP_BY, default="none",
                   help="what never straddles two folds: nothing (each utterance alone), the same gloss sentence, or a signer")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--dev-frac", type=float, default=0.0,
                   help="share of each fold's training part held out to choose best.pt (0: by training loss)")
    p.add_argument("--epochs", type=int, help="override the teacher's and the recipe's epochs")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="which models to run")
    p.add_argument("--beam", type=int, default=10, help="beam of the teacher's held-out decoding")
    add_device(p, "training device")
    p.add_argument("--ensemble-teacher", choices=("teacher", "twin"),
                   help="students distil from the ensemble of their fold's teachers (or CTC-only twins) over all seeds")
    p.add_argument("--teacher-ckpt", nargs="+", help="an already trained teacher (several: their ensemble) "
                   "instead of --teacher-config; with --folds 1")
    p.add_argument("--cross-fit", type=int, default=0, metavar="K",
                   help="students distil from K cross-fitted CTC-only twins per fold, each clip from the twin that "
                        "never trained on it (teacher.out_of_fold); with --models student [twin]")
    p.add_argument("--only-folds", type=int, nargs="+", help="run only these folds (e.g. one process per core)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    report = cross_validate(args.dataset, args.teacher_config, args.recipe, args.cache, args.out, args.folds,
                            args.seeds, args.group_by, args.dev_frac, args.epochs, args.models, args.beam,
                            str(resolve_device(args.device)), args.fold_seed, args.ensemble_teacher, args.only_folds,
                            args.teacher_ckpt, args.cross_fit, args.teacher_recipe)
    out = Path(args.out) / args.dataset
    print((out / "report.md").read_text(encoding="utf-8"), end="")
    print(f"report: {out / 'report.json'}")
    return 0 if report["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
