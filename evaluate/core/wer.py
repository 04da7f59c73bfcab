"""Word error rate equal to the official sclite-based evaluations, in pure Python.

Pipeline (the official one, without sed/perl/sclite): read hypotheses (CTM or text) and references
(STM or text), normalise with the chosen rule set, score an empty or missing hypothesis as
`[EMPTY]` where the rule set says so, align each utterance with sclite's costs and tie-breaking,
and sum. WER = (S + D + I) / N_ref * 100. ``python evaluate/wer.py`` scores two files with it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from evaluate.core.align import Alignment, align, format_alignment
from evaluate.core.formats import read_transcripts
from evaluate.core.normalize import fill_empty, get_rules, normalize
from preprocess.configs import UserError

log = logging.getLogger("evaluate.core.wer")


class ScoringError(UserError):
    """Inputs that cannot be scored together (unknown ids, empty reference)."""


@dataclass(frozen=True)
class UttScore:
    id: str  # utterance id
    ref: tuple[str, ...]  # reference after normalisation
    hyp: tuple[str, ...]  # hypothesis after normalisation and [EMPTY] filling
    alignment: Alignment  # sclite-style alignment of hyp to ref


@dataclass(frozen=True)
class ScoreResult:
    wer: float  # percent: 100 * (sub + dels + ins) / n_ref
    sub: int  # substitutions
    dels: int  # deletions ("del" in JSON; `del` is a Python keyword)
    ins: int  # insertions
    corr: int  # correct words
    n_ref: int  # reference words after normalisation
    rules: str  # rule set used
    utterances: tuple[UttScore, ...]  # per utterance, in reference order

    def to_dict(self) -> dict:
        """The JSON summary: exactly the keys wer, sub, del, ins, n_ref."""
        return {"wer": self.wer, "sub": self.sub, "del": self.dels, "ins": self.ins, "n_ref": self.n_ref}

    def summary(self) -> str:
        return (
            f"WER {self.wer:.2f}% | sub {self.sub} del {self.dels} ins {self.ins} | "
            f"ref words {self.n_ref} | utterances {len(self.utterances)} | rules {self.rules}"
        )


def _preview(ids: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:k])
    return shown + (f" and {len(ids) - k} more" if len(ids) > k else "")


def score(
    hyps: Mapping[str, Sequence[str]],
    refs: Mapping[str, Sequence[str]],
    rules: str = "none",
    case_sensitive: bool = False,
) -> ScoreResult:
    """Score hypotheses against references the way the official evaluation does.

    Args:
        hyps: utterance id -> hypothesis glosses (raw model output; ids may be missing).
        refs: utterance id -> reference glosses; defines the set of utterances scored.
        rules: "phoenix14", "phoenix14t" or "none" (see evaluate.core.normalize).
        case_sensitive: sclite folds ASCII case unless run with `-s`; so do we by default.

    Raises:
        ScoringError: a hypothesis id is not in the reference (sclite aborts on that too), or the
            reference has no words.
    """
    rs = get_rules(rules)
    unknown = [u for u in hyps if u not in refs]
    if unknown:
        raise ScoringError(
            f"{len(unknown)} hypothesis id(s) not in the reference: {_preview(unknown)} "
            "(score against the reference of the same split, or drop those utterances)"
        )
    if not refs:
        raise ScoringError("the reference has no utterances (empty split or wrong file?)")
    utts = []
    for uid, ref_words in refs.items():
        ref = normalize(ref_words, rs, side="ref")
        hyp = fill_empty(normalize(hyps.get(uid, ()), rs, side="hyp"), rs)
        utts.append(UttScore(uid, tuple(ref), tuple(hyp), align(ref, hyp, case_sensitive)))
    sub = sum(u.alignment.sub for u in utts)
    dels = sum(u.alignment.dels for u in utts)
    ins = sum(u.alignment.ins for u in utts)
    corr = sum(u.alignment.corr for u in utts)
    n_ref = sum(len(u.ref) for u in utts)
    if n_ref == 0:
        raise ScoringError("the reference has no words after normalisation; WER is undefined")
    wer = 100.0 * (sub + dels + ins) / n_ref
    return ScoreResult(wer, sub, dels, ins, corr, n_ref, rs.name, tuple(utts))


def format_report(result: ScoreResult) -> str:
    """Per-utterance alignments in the spirit of sclite's `pra` report."""
    out = [result.summary(), ""]
    for u in result.utterances:
        a = u.alignment
        r, h, e = format_alignment(a)
        n = len(u.ref)
        err = f"{100.0 * a.errors / n:.1f}%" if n else "n/a"
        out += [
            f"id: {u.id}",
            f"Scores: (#C #S #D #I) {a.corr} {a.sub} {a.dels} {a.ins}   WER {err}",
            f"REF:  {r}",
            f"HYP:  {h}",
            f"Eval: {e}".rstrip(),
            "",
        ]
    return "\n".join(out)


def score_files(hyp_path: str | Path, ref_path: str | Path, rules: str = "none") -> ScoreResult:
    """Read both files (format auto-detected) and score them."""
    hyps = read_transcripts(hyp_path)
    refs = read_transcripts(ref_path)
    if not refs:
        raise ScoringError(f"{ref_path}: no utterances in the reference file")
    if not hyps:
        log.warning("%s: no hypotheses in the file; every one of the %d reference utterances is scored as "
                    "[EMPTY] (check that it is the decoder's output)", hyp_path, len(refs))
    try:
        return score(hyps, refs, rules)
    except ScoringError as e:
        raise ScoringError(f"{hyp_path}: {e}") from None
