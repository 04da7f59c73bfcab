"""CTC decoding: batched greedy and prefix beam search with an optional gloss n-gram LM.

:func:`decode_outputs` is the one path from a batch of model outputs to glosses (training's dev
WER, evaluation, the teacher cache, live recognition); the functions below it are its parts.

Decoding runs once per evaluation over every utterance, so it must never be the bottleneck:
greedy is one batched argmax; the beam search works on NumPy rows and expands, per frame, only
the `token_topk` most probable glosses (a gloss outside them cannot enter a beam of that width
unless its prefix is already far ahead, which pruning would discard anyway).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from evaluate.core.lm import EOS

if TYPE_CHECKING:  # tensors are accepted, but decoding runs on NumPy: ONNX-only inference never imports torch
    from torch import Tensor

NEG_INF = float("-inf")


class GlossLM(Protocol):
    """What the beam search needs from a language model (evaluate.core.lm.NGramLM provides it)."""

    def score(self, prefix: Sequence, token) -> float: ...


def _numpy(x: Any, dtype: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a NumPy array of ``dtype``."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        x = x.float() if np.dtype(dtype).kind == "f" else x.long()
        return x.numpy()
    return np.asarray(x, dtype=dtype)


def _check(log_probs: Any, lengths: Any, blank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(log_probs float32 [B, T, V], lengths int64 [B])`` as NumPy arrays, after checking their shapes."""
    lp, lens = _numpy(log_probs, np.float32), _numpy(lengths, np.int64)
    if lp.ndim != 3:
        raise ValueError(f"log_probs must be [B, T, V], got shape {tuple(lp.shape)}")
    if lens.ndim != 1 or lens.shape[0] != lp.shape[0]:
        raise ValueError(f"lengths must be [B={lp.shape[0]}], got shape {tuple(lens.shape)}")
    if not 0 <= blank < lp.shape[2]:
        raise ValueError(f"blank={blank} is outside the vocabulary of size {lp.shape[2]}")
    return lp, lens


def log_softmax(x: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis (what ``torch.log_softmax`` computes)."""
    x = np.asarray(x, dtype=np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy_decode(log_probs: Tensor | np.ndarray, lengths: Tensor | np.ndarray | Sequence[int],
                  blank: int = 0) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks.

    Args:
        log_probs: [B, T, V] frame scores (log-probabilities or logits; only the argmax is used).
        lengths: [B] valid frames per sequence; frames beyond are ignored.
        blank: index of the CTC blank.

    Returns:
        B token-id lists.
    """
    lp, lens = _check(log_probs, lengths, blank)
    b, t, _ = lp.shape
    best = lp.argmax(axis=-1)  # [B, T]
    prev = np.concatenate([np.full((b, 1), -1, dtype=best.dtype), best[:, :-1]], axis=1)
    valid = np.arange(t)[None, :] < lens[:, None]  # [B, T]
    keep = (best != blank) & (best != prev) & valid
    return [best[i][keep[i]].tolist() for i in range(b)]


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def prefix_beam_search(
    log_probs: np.ndarray,
    beam: int = 10,
    lm: GlossLM | None = None,
    lm_weight: float = 0.5,
    insertion_bonus: float = 0.0,
    tokens: Sequence | None = None,
    blank: int = 0,
    token_topk: int | None = None,
) -> list[tuple[tuple[int, ...], float]]:
    """CTC prefix beam search over one utterance; returns the n-best (prefix, score), best first.

    Every prefix keeps two log scores: ending in blank (p_b) and ending in its last gloss (p_nb).
    Both are needed because a repeated gloss only starts a new label after a blank: from `A`,
    frame `A` extends p_nb of `A` itself, while `A A` can only grow from p_b(`A`).

    Args:
        log_probs: [T, V] log-probabilities of the valid frames.
        beam: prefixes kept after each frame.
        lm: optional LM; `lm_weight * lm.score(prefix, gloss)` is added when a gloss is appended
            and `lm_weight * lm.score(prefix, "</s>")` at the end.
        lm_weight: LM scale.
        insertion_bonus: added per appended gloss (counters the LM's bias to short outputs).
        tokens: id -> gloss table for the LM (e.g. `Vocabulary.tokens`); None: the LM sees ids.
        blank: CTC blank index.
        token_topk: glosses expanded per frame (default: `beam`, at most V - 1).

    Without pruning (beam and token_topk large enough) the score of a prefix is exactly
    log P(labelling | x), i.e. the sum over all its CTC alignments.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    t_len, v = log_probs.shape
    k = min(v - 1, token_topk if token_topk is not None else beam)
    if k < 1 and v > 1:
        raise ValueError(f"token_topk must be >= 1, got {token_topk}")

    lm_cache: dict[tuple[tuple[int, ...], int], float] = {}
    # an n-gram LM only sees the last n-1 glosses, so beams sharing them share one LM lookup
    ctx = getattr(lm, "order", 0) - 1

    def lm_bonus(prefix: tuple[int, ...], c: int) -> float:
        if lm is None:
            return insertion_bonus
        hist_ids = prefix if ctx < 0 else prefix[max(0, len(prefix) - ctx) :] if ctx > 0 else ()
        key = (hist_ids, c)  # truncated histories have length ctx, shorter prefixes less: no clash
        got = lm_cache.get(key)
        if got is None:
            hist = [tokens[i] for i in hist_ids] if tokens is not None else list(hist_ids)
            got = insertion_bonus + lm_weight * lm.score(hist, tokens[c] if tokens is not None else c)
            lm_cache[key] = got
        return got

    # candidate glosses per frame: top-k by probability, blank excluded
    lp_nb = log_probs.copy()
    lp_nb[:, blank] = NEG_INF
    if k < v - 1:
        cand = np.argpartition(-lp_nb, k - 1, axis=1)[:, :k]  # [T, k]
    else:
        cand = np.tile(np.array([i for i in range(v) if i != blank]), (t_len, 1))
    rows = log_probs.tolist()
    cand_l = cand.tolist()

    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, NEG_INF]}  # prefix -> [p_b, p_nb]
    for t in range(t_len):
        row = rows[t]
        p_blank = row[blank]
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = _logaddexp(pb, pnb)
            entry = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
            entry[0] = _logaddexp(entry[0], total + p_blank)
            last = prefix[-1] if prefix else -1
            for c in cand_l[t]:
                p = row[c]
                if p == NEG_INF:
                    continue
                new = prefix + (c,)
                ext = nxt.setdefault(new, [NEG_INF, NEG_INF])
                if c == last:
                    ext[1] = _logaddexp(ext[1], pb + p + lm_bonus(prefix, c))
                    entry[1] = _logaddexp(entry[1], pnb + p)  # repeat collapses into the prefix
                else:
                    ext[1] = _logaddexp(ext[1], total + p + lm_bonus(prefix, c))
            if last >= 0 and last not in cand_l[t]:  # keep the collapse path even if pruned
                entry[1] = _logaddexp(entry[1], pnb + row[last])
        alive = [(pre, sc) for pre, sc in nxt.items() if sc[0] > NEG_INF or sc[1] > NEG_INF]
        alive = alive or [((), [NEG_INF, NEG_INF])]  # every path impossible (all -inf frames)
        beams = dict(heapq.nlargest(beam, alive, key=lambda kv: _logaddexp(*kv[1])))

    final = []
    for prefix, (pb, pnb) in beams.items():
        s = _logaddexp(pb, pnb)
        if lm is not None:
            hist = [tokens[i] for i in prefix] if tokens is not None else list(prefix)
            s += lm_weight * lm.score(hist, EOS)
        final.append((prefix, s))
    final.sort(key=lambda x: x[1], reverse=True)
    return final


def beam_decode(
    log_probs: Tensor | np.ndarray,
    lengths: Tensor | np.ndarray | Sequence[int],
    beam: int = 10,
    lm: GlossLM | None = None,
    lm_weight: float = 0.5,
    insertion_bonus: float = 0.0,
    tokens: Sequence | None = None,
    blank: int = 0,
    token_topk: int | None = None,
) -> list[list[int]]:
    """Batched CTC prefix beam search; returns the best labelling of each sequence.

    Args:
        log_probs: [B, T, V] log-probabilities (apply log_softmax to logits first).
        lengths: [B] valid frames per sequence.
        beam, lm, lm_weight, insertion_bonus, tokens, blank, token_topk: see `prefix_beam_search`.

    Returns:
        B token-id lists.
    """
    lp, lens = _check(log_probs, lengths, blank)
    out = []
    for i, n in enumerate(lens):
        n = max(0, min(int(n), lp.shape[1]))
        if n == 0:
            out.append([])
            continue
        best = prefix_beam_search(lp[i, :n], beam, lm, lm_weight, insertion_bonus, tokens, blank, token_topk)
        out.append(list(best[0][0]))
    return out


# --- timing: where each decoded gloss sits in the clip ------------------------------------------


def ctc_segments(best: np.ndarray, blank: int = 0) -> list[tuple[int, int]]:
    """Greedy CTC path -> ``(token, first step)`` per emitted gloss (repeats merged, blanks dropped).

    Args:
        best: [T'] argmax ids of the valid output steps.
    """
    segs: list[tuple[int, int]] = []
    prev = -1
    for step, tok in enumerate(np.asarray(best).tolist()):
        if tok != blank and tok != prev:
            segs.append((tok, step))
        prev = tok
    return segs


def ctc_viterbi(log_probs: np.ndarray, labels: Sequence[int], blank: int = 0) -> np.ndarray:
    """Best single CTC path that spells ``labels``: the label index (0..L-1) each step belongs to, -1 on blanks.

    The decoders return a labelling, not a path; timing needs the path, so the labelling is
    force-aligned. For the greedy labelling this is the argmax path itself (up to ties).

    Args:
        log_probs: [T, V] log-probabilities of the valid steps.
        labels: the decoded token ids (L of them, no blank).

    Returns:
        int [T]: label position per step, -1 where the path is on a blank.
    """
    t_len = log_probs.shape[0]
    labels = list(labels)
    need = len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))  # a repeat needs a blank between
    if t_len < need:
        raise ValueError(f"{len(labels)} labels cannot be aligned to {t_len} output steps")
    if not labels:
        return np.full(t_len, -1, dtype=np.int64)
    ext = [blank]
    for c in labels:
        ext += [c, blank]  # 2L + 1 states: blank, l1, blank, l2, ..., blank
    s_len = len(ext)
    ext_a = np.array(ext)
    emit = log_probs[:, ext_a]  # [T, S]
    # a state may skip the blank before it when it is a label different from the label two back
    skip = np.zeros(s_len, dtype=bool)
    skip[2:] = (ext_a[2:] != blank) & (ext_a[2:] != ext_a[:-2])
    score = np.full(s_len, NEG_INF)
    score[0] = emit[0, 0]
    if s_len > 1:
        score[1] = emit[0, 1]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, t_len):
        stay = score
        one = np.concatenate([[NEG_INF], score[:-1]])
        two = np.where(skip, np.concatenate([[NEG_INF, NEG_INF], score[:-2]]), NEG_INF)
        cand = np.stack([stay, one, two])  # [3, S]
        back[t] = cand.argmax(0)
        score = cand.max(0) + emit[t]
    ends = [s_len - 1, s_len - 2] if s_len > 1 else [0]
    s = max(ends, key=lambda e: score[e])
    if score[s] == NEG_INF:
        raise ValueError(f"{len(labels)} labels cannot be aligned to {t_len} output steps")
    path = np.empty(t_len, dtype=np.int64)
    for t in range(t_len - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    return np.where(path % 2 == 1, path // 2, -1)


@dataclass(frozen=True)
class TimedGloss:
    """One decoded gloss placed in time (output steps: frames // the model's time reduction)."""

    token: int
    spike: int  # output step where its posterior peaks
    start: int  # first output step of its segment
    end: int  # one past its last output step
    score: float  # the gloss's posterior at its spike, in [0, 1]

    def seconds(self, fps: float, reduction: int, num_frames: int | None = None) -> tuple[float, float]:
        """(start, end) in seconds of the source video; ``num_frames`` clips the last segment."""
        lo, hi = self.start * reduction, self.end * reduction
        if num_frames is not None:
            hi = min(hi, num_frames)
            lo = min(lo, max(hi - 1, 0))
        return lo / fps, hi / fps


def timed_glosses(log_probs: np.ndarray, labels: Sequence[int], blank: int = 0,
                  pad: int = 2) -> list[TimedGloss]:
    """Time segments of a decoded labelling: each gloss's spike run plus a neighbourhood.

    A CTC gloss usually fires on one or two steps while the sign itself lasts longer, so each
    segment is its aligned steps widened into the blank steps around it: up to ``pad`` steps
    per side and never past the middle of the blank gap to the neighbouring gloss (segments
    never overlap).

    Args:
        log_probs: [T, V] log-probabilities of the valid steps.
        labels: decoded token ids (greedy or beam search, any labelling of these steps).
        pad: most blank steps added on each side of a spike run.

    Returns:
        One :class:`TimedGloss` per label, in order.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0 steps, got {pad}")
    log_probs = np.asarray(log_probs, dtype=np.float64)
    owner = ctc_viterbi(log_probs, labels, blank)
    t_len = len(owner)
    runs = []
    for k, tok in enumerate(labels):
        steps = np.flatnonzero(owner == k)
        lo, hi = int(steps[0]), int(steps[-1]) + 1  # viterbi gives every label >= 1 step
        spike = lo + int(np.argmax(log_probs[lo:hi, tok]))
        runs.append((tok, spike, lo, hi, float(np.exp(log_probs[spike, tok]))))
    out = []
    for k, (tok, spike, lo, hi, sc) in enumerate(runs):
        left_edge = runs[k - 1][3] if k > 0 else 0  # end of the previous run
        right_edge = runs[k + 1][2] if k + 1 < len(runs) else t_len  # start of the next run
        # the gap before this run is shared with the previous gloss: this one takes its right half
        gap_l = lo - left_edge
        take_l = min(pad, gap_l if k == 0 else gap_l // 2)
        gap_r = right_edge - hi
        take_r = min(pad, gap_r if k + 1 == len(runs) else (gap_r + 1) // 2)
        out.append(TimedGloss(tok, spike, lo - take_l, hi + take_r, sc))
    return out


# --- the one path from model outputs to glosses ---------------------------------------------------


@dataclass(frozen=True)
class Hypothesis:
    """One decoded utterance of a batch."""

    ids: list[int]  # decoded token ids (no blank)
    glosses: list[str]  # the ids through the vocabulary
    log_probs: np.ndarray  # [T', V] float32 log-probabilities of its valid steps (what timing needs)

    def timed(self) -> list[TimedGloss]:
        """Its glosses placed in time (see :func:`timed_glosses`)."""
        return timed_glosses(self.log_probs, self.ids)


def decode_outputs(logits: Tensor | np.ndarray, lengths: Tensor | np.ndarray | Sequence[int], tokens: Sequence[str],
                   beam: int = 1, lm: GlossLM | None = None, lm_weight: float = 0.5) -> list[Hypothesis]:
    """Hypotheses of a batch of model outputs: float32 log_softmax, then greedy decoding when
    ``beam <= 1`` and no LM, else prefix beam search.

    Args:
        logits: [B, T', V] main-level scores (blank = 0): a tensor on any device, or a NumPy array
            (ONNX Runtime, TFLite). Log-probabilities are fine too (log_softmax leaves them unchanged).
        lengths: [B] valid output steps.
        tokens: the id -> gloss table (the vocabulary's tokens).
        lm, lm_weight: gloss LM for the beam search and the weight of its log-probability.
    """
    if hasattr(logits, "detach"):  # a tensor: torch's log_softmax, on its device
        lp = logits.detach().float().log_softmax(-1).cpu().numpy()  # [B, T', V]
    else:
        lp = log_softmax(logits)
    lens = _numpy(lengths, np.int64)  # [B]
    if beam <= 1 and lm is None:
        seqs = greedy_decode(lp, lens, blank=0)
    else:
        seqs = beam_decode(lp, lens, beam=max(beam, 1), lm=lm, lm_weight=lm_weight, tokens=tokens)
    return [Hypothesis(seq, [tokens[i] for i in seq], lp[i, : int(n)]) for i, (seq, n) in enumerate(zip(seqs, lens.tolist()))]
