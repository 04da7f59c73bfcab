"""Pictures of what a model does: training curves, one utterance's posteriors and alignment,
the most frequent confusions, and teacher vs student posteriors.

    python -m evaluate.plot curves exp/demo/student exp/demo/student_ctc --out curves.png
    python -m evaluate.plot utterance --ckpt best.pt --cache cache --split dev [--utt ID] --out utt.png
    python -m evaluate.plot confusions --hyp eval/dev.ctm --ref eval/dev.stm --out conf.png
    python -m evaluate.plot distill --teacher teacher/best.pt --student student/best.pt --cache cache

PNG by default, SVG with ``--svg`` (or an ``.svg`` out name). The numbers behind each picture come
from functions that return plain data (:func:`curve_series`, :func:`alignment_rows`,
:func:`confusion_table`) so they can be checked without looking at pixels. matplotlib runs on its
file-only Agg backend: no display is needed.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evaluate.core.align import Alignment, align
from evaluate.core.decode import timed_glosses
from preprocess.commandline import add_cache, add_out, command, prog

BLANK_COLOUR = "0.75"
OP_COLOURS = {"C": "tab:green", "S": "tab:red", "D": "tab:purple", "I": "tab:orange"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _out_path(out: str | os.PathLike, svg: bool) -> Path:
    out = Path(out)
    if svg and out.suffix.lower() != ".svg":
        out = out.with_suffix(".svg")
    if out.suffix.lower() not in (".png", ".svg"):
        out = out.with_suffix(".png")
    return out


def _save(fig, out: str | os.PathLike, svg: bool = False) -> Path:
    """Write the figure atomically (temp file + rename: a crash never leaves a torn picture)."""
    plt = _pyplot()
    path = _out_path(out, svg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=path.suffix[1:], dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --- training curves -----------------------------------------------------------------------------


def run_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """Epoch records of a run folder (or its ``metrics.jsonl``); a staged run's stages follow each
    other, their epochs renumbered to run on."""
    from models.train import read_metrics

    run = Path(run)
    if run.is_file():
        return read_metrics(run)
    if (run / "metrics.jsonl").is_file():
        return read_metrics(run / "metrics.jsonl")
    stages = sorted(run.glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    rows: list[dict[str, Any]] = []
    for path in stages:
        offset = rows[-1]["epoch"] if rows else 0
        rows += [{**r, "epoch": offset + r.get("epoch", 0), "stage": path.parent.name} for r in read_metrics(path)]
    if not rows:
        raise FileNotFoundError(f"{run}: no metrics.jsonl in it or its stage folders; train the run first "
                                "(python -m models.train / distill.train)")
    return rows


def curve_series(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Name -> (epochs, values): ``train_loss``, ``dev_loss``, ``dev_wer``, ``lr`` and one
    ``level:<name>`` per training loss level; epochs without a value are left out."""
    out: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, epoch: float, value: Any) -> None:
        if isinstance(value, (int, float)) and np.isfinite(value):
            xs, ys = out.setdefault(name, ([], []))
            xs.append(float(epoch))
            ys.append(float(value))

    for r in rows:
        e = r.get("epoch", len(out))
        for key in ("train_loss", "dev_loss", "dev_wer", "lr"):
            add(key, e, r.get(key))
        for level, v in (r.get("train_levels") or {}).items():
            add(f"level:{level}", e, v)
    return out


def plot_curves(runs: Sequence[str | os.PathLike], out: str | os.PathLike, svg: bool = False,
                labels: Sequence[str] | None = None) -> Path:
    """Loss per level, dev WER and learning rate per epoch; one column per run, rows share their y axis."""
    plt = _pyplot()
    if not runs:
        raise ValueError("plot curves needs at least one run folder or metrics.jsonl")
    labels = list(labels) if labels else [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    series = [curve_series(run_metrics(r)) for r in runs]
    fig, axes = plt.subplots(3, len(runs), figsize=(4.2 * len(runs), 7.5), sharey="row", squeeze=False)
    for col, (label, ser) in enumerate(zip(labels, series)):
        ax_loss, ax_wer, ax_lr = axes[:, col]
        for name, (xs, ys) in ser.items():
            if name.startswith("level:"):
                ax_loss.plot(xs, ys, lw=1, ls="--", label=name[6:])
        for name, style in (("train_loss", "-"), ("dev_loss", ":")):
            if name in ser:
                ax_loss.plot(*ser[name], lw=2, ls=style, color="k", label=name.replace("_", " "))
        if "dev_wer" in ser:
            xs, ys = ser["dev_wer"]
            ax_wer.plot(xs, ys, marker="o", ms=3)
            best = int(np.argmin(ys))
            ax_wer.annotate(f"best {ys[best]:.1f}%", (xs[best], ys[best]), textcoords="offset points", xytext=(4, 8))
        if "lr" in ser:
            ax_lr.plot(*ser["lr"], color="tab:gray")
        ax_loss.set_title(label)
        ax_loss.legend(fontsize=7, loc="upper right")
        ax_lr.set_xlabel("epoch")
    axes[0, 0].set_ylabel("loss")
    axes[1, 0].set_ylabel("dev WER (%)")
    axes[2, 0].set_ylabel("learning rate")
    fig.tight_layout()
    return _save(fig, out, svg)


# --- one utterance -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignedWord:
    """One aligned position of the picture: its op (C/S/D/I), the words, and where it sits (output step)."""

    op: str
    ref: str | None
    hyp: str | None
    step: float  # the hypothesis gloss's spike; for a deletion, midway between its neighbours


def alignment_rows(ref: Sequence[str], hyp: Sequence[str], spikes: Sequence[int], steps: int) -> list[AlignedWord]:
    """The scorer's alignment of ``hyp`` to ``ref`` with an x position per aligned word.

    Args:
        ref, hyp: reference and decoded glosses.
        spikes: the output step of each decoded gloss (``len(hyp)`` of them).
        steps: valid output steps (a deletion after the last gloss sits between it and the end).
    """
    if len(spikes) != len(hyp):
        raise ValueError(f"{len(hyp)} decoded glosses but {len(spikes)} spike positions")
    a: Alignment = align(ref, hyp)
    placed: list[float | None] = []
    j = 0
    for op, _, _ in a.ops:
        if op == "D":
            placed.append(None)
        else:
            placed.append(float(spikes[j]))
            j += 1
    out = []
    for i, ((op, r, h), x) in enumerate(zip(a.ops, placed)):
        if x is None:  # a deletion: between the nearest placed neighbours (or the clip's edges)
            left = next((p for p in reversed(placed[:i]) if p is not None), 0.0)
            right = next((p for p in placed[i + 1:] if p is not None), float(steps))
            x = (left + right) / 2
        out.append(AlignedWord(op, r, h, x))
    return out


def plot_utterance(log_probs: np.ndarray, vocab: Sequence[str], hyp_ids: Sequence[int], ref: Sequence[str],
                   out: str | os.PathLike, svg: bool = False, title: str = "", seconds_per_step: float | None = None,
                   top: int = 8) -> Path:
    """Frame posteriors (blank greyed), decoded glosses at their spikes, the reference below, S/D/I marked.

    Args:
        log_probs: [T', V] log-probabilities of the valid steps.
        hyp_ids: the decoded token ids.
        ref: the reference glosses.
        seconds_per_step: x axis in seconds instead of output steps.
        top: most glosses whose posterior curves are drawn (the decoded ones first).
    """
    plt = _pyplot()
    probs = np.exp(np.asarray(log_probs, dtype=np.float64))  # [T', V]
    t_len = probs.shape[0]
    timed = timed_glosses(np.log(np.maximum(probs, 1e-30)), hyp_ids)
    hyp = [vocab[i] for i in hyp_ids]
    rows = alignment_rows(ref, hyp, [g.spike for g in timed], t_len)
    scale = seconds_per_step or 1.0
    x = np.arange(t_len) * scale

    fig, (ax, ax_txt) = plt.subplots(2, 1, figsize=(max(6.0, min(18.0, 0.12 * t_len + 4)), 5.2), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1.3]})
    ax.fill_between(x, probs[:, 0], color=BLANK_COLOUR, alpha=0.6, step="mid", label="blank")
    shown = list(dict.fromkeys(hyp_ids))
    rest = [int(v) for v in np.argsort(-probs[:, 1:].max(0)) + 1 if int(v) not in shown]
    for v in (shown + rest)[:top]:
        ax.plot(x, probs[:, v], lw=1.4, label=vocab[v])
    for g in timed:
        ax.axvspan(g.start * scale, g.end * scale, color="tab:blue", alpha=0.06)
        ax.annotate(vocab[g.token], (g.spike * scale, probs[g.spike, g.token]), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=8, weight="bold")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("posterior")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a spike
    ax.set_title(title or "frame posteriors")

    ax_txt.set_ylim(0, 3)
    ax_txt.set_yticks([2.2, 0.8], ["decoded", "reference"])
    for w in rows:
        c = OP_COLOURS[w.op]
        xx = w.step * scale
        ax_txt.text(xx, 2.2, w.hyp if w.hyp is not None else "*", ha="center", va="center", fontsize=8, color=c)
        ax_txt.text(xx, 0.8, w.ref if w.ref is not None else "*", ha="center", va="center", fontsize=8, color=c)
        if w.op != "C":
            ax_txt.text(xx, 1.5, w.op, ha="center", va="center", fontsize=9, weight="bold", color=c)
    counts = Counter(w.op for w in rows)
    ax_txt.set_title(f"S {counts['S']}  D {counts['D']}  I {counts['I']}  (of {len(ref)} reference glosses)",
                     fontsize=9)
    ax_txt.set_xlabel("seconds" if seconds_per_step else "output step")
    ax_txt.set_xlim(x[0] - scale, x[-1] + scale if t_len else scale)
    fig.tight_layout()
    return _save(fig, out, svg)


# --- confusions ----------------------------------------------------------------------------------


def aligned_pairs(hyps: dict[str, Sequence[str]], refs: dict[str, Sequence[str]]) -> list[tuple[str, str]]:
    """(reference, hypothesis) of every aligned position that has both words (correct or substituted),
    the missing side written ``*`` for deletions and insertions."""
    pairs = []
    for uid, ref in refs.items():
        for _, r, h in align(ref, hyps.get(uid, [])).ops:
            pairs.append((r if r is not None else "*", h if h is not None else "*"))
    return pairs


def confusion_table(pairs: Sequence[tuple[str, str]], top: int = 10) -> tuple[list[str], np.ndarray]:
    """The ``top`` glosses most often involved in an error and their confusion matrix (rows: reference).

    Returns:
        labels (``*`` included when deletions/insertions are among the errors) and int [L, L]
        counts from ``sklearn.metrics.confusion_matrix`` over the pairs among those labels.
    """
    from sklearn.metrics import confusion_matrix

    errors = Counter()
    for r, h in pairs:
        if r != h:
            errors[r] += 1
            errors[h] += 1
    labels = [w for w, _ in errors.most_common(top)]
    if not labels:
        return [], np.zeros((0, 0), dtype=np.int64)
    keep = [(r, h) for r, h in pairs if r in labels and h in labels]
    if not keep:
        return labels, np.zeros((len(labels), len(labels)), dtype=np.int64)
    refs, hyps = zip(*keep)
    return labels, confusion_matrix(refs, hyps, labels=labels)


def plot_confusions(pairs: Sequence[tuple[str, str]], out: str | os.PathLike, svg: bool = False, top: int = 10,
                    title: str = "") -> Path:
    plt = _pyplot()
    labels, mat = confusion_table(pairs, top)
    n = max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 1.0 + 0.5 * n))
    if labels:
        shown = mat.astype(float)
        ax.imshow(shown, cmap="Blues")
        for i in range(len(labels)):
            for j in range(len(labels)):
                if mat[i, j]:
                    ax.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if shown[i, j] > shown.max() / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no errors", ha="center", va="center")
        ax.set_axis_off()
    ax.set_xlabel("hypothesis ('*': inserted)")
    ax.set_ylabel("reference ('*': deleted)")
    ax.set_title(title or "most frequent confusions")
    fig.tight_layout()
    return _save(fig, out, svg)


# --- teacher vs student --------------------------------------------------------------------------


def plot_distill(teacher_lp: np.ndarray, student_lp: np.ndarray, vocab: Sequence[str], out: str | os.PathLike,
                 svg: bool = False, ref: Sequence[str] = (), title: str = "", top: int = 6) -> Path:
    """Teacher (solid) and student (dashed) posteriors of the same glosses on one time axis, blank greyed.

    Args:
        teacher_lp, student_lp: [T', V] log-probabilities (both models reduce time by the same factor).
    """
    plt = _pyplot()
    pt, ps = np.exp(teacher_lp), np.exp(student_lp)
    t_len = min(len(pt), len(ps))
    pt, ps = pt[:t_len], ps[:t_len]
    glosses = [int(v) for v in np.argsort(-np.maximum(pt[:, 1:].max(0), ps[:, 1:].max(0))) + 1][:top]
    fig, ax = plt.subplots(figsize=(max(6.0, min(18.0, 0.12 * t_len + 4)), 3.8))
    x = np.arange(t_len)
    ax.fill_between(x, pt[:, 0], color=BLANK_COLOUR, alpha=0.5, step="mid", label="blank (teacher)")
    ax.plot(x, ps[:, 0], color="0.5", lw=1, ls="--", label="blank (student)")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, v in enumerate(glosses):
        c = colours[k % len(colours)]
        ax.plot(x, pt[:, v], color=c, lw=1.6, label=f"{vocab[v]} teacher")
        ax.plot(x, ps[:, v], color=c, lw=1.2, ls="--", label=f"{vocab[v]} student")
    agree = float((pt.argmax(-1) == ps.argmax(-1)).mean()) if t_len else 0.0
    ax.set_title((title + " — " if title else "") + f"argmax agrees on {100 * agree:.0f}% of steps"
                 + (f"; reference: {' '.join(ref)}" if ref else ""), fontsize=9)
    ax.set_xlabel("output step")
    ax.set_ylabel("posterior")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, out, svg)


# --- from checkpoints and caches ------------------------------------------------------------------


def utterance_log_probs(ckpt: str | os.PathLike, cache: str | os.PathLike, split: str, utt: str | None = None,
                        dataset: str | None = None) -> tuple[np.ndarray, Any, Sequence[str]]:
    """(log-probabilities [T', V] of the valid steps, the utterance, the vocabulary) for one cached utterance."""
    import torch

    from models.checkpoint import load_model
    from models.data import collate

    model, state = load_model(ckpt, "cpu")
    ds = state.dataset_split(cache, split, dataset)
    ids = [u.id for u in ds.utts]
    if not ids:
        raise ValueError(f"{ds.root}: split {split!r} has no cached utterances; check --split")
    if utt is not None and utt not in ids:
        raise ValueError(f"{ds.root}: no utterance {utt!r} in split {split!r} (e.g. {', '.join(ids[:3])})")
    i = ids.index(utt) if utt is not None else 0
    inputs, lengths, _, _, _ = collate([ds[i]])
    model.eval()
    with torch.no_grad():
        o = model(inputs, lengths)
    n = int(o.out_lengths[0])
    return o.main[0, :n].float().log_softmax(-1).numpy(), ds.utts[i], state.vocab


def plot_cached_utterance(ckpt: str | os.PathLike, cache: str | os.PathLike, out: str | os.PathLike,
                          split: str = "dev", utt: str | None = None, beam: int = 10, svg: bool = False,
                          dataset: str | None = None) -> Path:
    """:func:`plot_utterance` of one cached utterance decoded by a checkpoint (as evaluate.eval decodes it)."""
    from evaluate.core.decode import decode_outputs
    from models.base import TIME_REDUCTION

    lp, u, vocab = utterance_log_probs(ckpt, cache, split, utt, dataset)
    ids = decode_outputs(lp[None], [len(lp)], vocab, beam=beam)[0].ids  # log_softmax leaves log-probabilities as they are
    return plot_utterance(lp, vocab, ids, u.glosses, out, svg, title=f"{u.id} ({Path(ckpt).parent.name}, beam {beam})",
                          seconds_per_step=TIME_REDUCTION / u.fps)


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("evaluate.plot"), description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("curves", help="training curves of one or more runs, side by side")
    c.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files)")
    add_out(c, "output image", default="curves.png")
    u = sub.add_parser("utterance", help="one cached utterance: posteriors, decoded glosses, alignment")
    u.add_argument("--ckpt", required=True, help="checkpoint to decode with")
    add_cache(u, required=True)
    u.add_argument("--dataset", help="dataset under the cache root (default: the checkpoint's)")
    u.add_argument("--split", default="dev", help="split the utterance is in")
    u.add_argument("--utt", help="utterance id (default: the split's first)")
    u.add_argument("--beam", type=int, default=10, help="prefix beam width (1: greedy)")
    add_out(u, "output image", default="utterance.png")
    f = sub.add_parser("confusions", help="most frequent confusions of a scored run (its CTM and STM)")
    f.add_argument("--hyp", required=True, help="hypotheses (CTM, e.g. evaluate.eval's <split>.ctm)")
    f.add_argument("--ref", required=True, help="references (STM, e.g. evaluate.eval's <split>.stm)")
    f.add_argument("--top", type=int, default=10, help="confusions shown")
    add_out(f, "output image", default="confusions.png")
    d = sub.add_parser("distill", help="teacher vs student posteriors of one cached utterance")
    d.add_argument("--teacher", required=True, help="teacher checkpoint")
    d.add_argument("--student", required=True, help="student checkpoint")
    add_cache(d, required=True)
    d.add_argument("--dataset", help="dataset under the cache root (default: each checkpoint's)")
    d.add_argument("--split", default="dev", help="split the utterance is in")
    d.add_argument("--utt", help="utterance id (default: the split's first)")
    add_out(d, "output image", default="distill.png")
    for sp in (c, u, f, d):
        sp.add_argument("--svg", action="store_true", help="write SVG instead of PNG")
    args = p.parse_args(argv)
    if args.what == "curves":
        path = plot_curves(args.runs, args.out, args.svg)
    elif args.what == "utterance":
        path = plot_cached_utterance(args.ckpt, args.cache, args.out, args.split, args.utt, args.beam, args.svg,
                                     args.dataset)
    elif args.what == "confusions":
        from evaluate.core.formats import read_transcripts

        pairs = aligned_pairs(read_transcripts(args.hyp), read_transcripts(args.ref))
        path = plot_confusions(pairs, args.out, args.svg, args.top, title=f"confusions of {Path(args.hyp).name}")
    else:
        lt, u_t, vocab = utterance_log_probs(args.teacher, args.cache, args.split, args.utt, args.dataset)
        ls, u_s, vocab_s = utterance_log_probs(args.student, args.cache, args.split, u_t.id, args.dataset)
        if tuple(vocab) != tuple(vocab_s):
            raise ValueError(f"{args.teacher} and {args.student} have different vocabularies")
        path = plot_distill(lt, ls, vocab, args.out, args.svg, ref=u_t.glosses, title=u_t.id)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
