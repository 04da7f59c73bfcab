"""Gloss normalisation rules of the official evaluations, as data tables.

The official PHOENIX14 evaluation rewrites the hypothesis CTM with a chain of `sed` substitutions
before calling sclite. A CTM carries one gloss per line, so each substitution acts on one gloss
at a time; the tables below replay that chain gloss by gloss, in the same order, with the same
substring semantics (`NICHT-cl-KOMMEN` -> `NICHT-KOMMEN`, `NORDRAUM` -> `NORD`), which is what
makes the WER equal to the official one. The sentence-level rules of that script (joining
spelled letters, `WIE AUSSEHEN`, collapsing repeats inside a line) never fire on a CTM line and
are therefore absent.

PHOENIX14-T is scored the way the recognition literature scores it: the same cleaning applied to
both sides (drop `__X__` tokens, strip `loc-`/`cl-`, `-PLUSPLUS` and a `RAUM` ending, collapse
consecutive repeats).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import groupby
from typing import Sequence

EMPTY = "[EMPTY]"


@dataclass(frozen=True)
class RuleSet:
    name: str  # the value of `--rules`
    # ordered (regex, replacement) substitutions applied to every gloss, like one `sed -e` each
    substitutions: tuple[tuple[str, str], ...] = ()
    # a gloss containing a match of any of these regexes is dropped (the official `grep -v`)
    drop: tuple[str, ...] = ()
    apply_to_ref: bool = False  # also normalise the reference (else refs are used verbatim)
    collapse_repeats: bool = False  # merge consecutive identical glosses after the rewrites
    # token scored for an empty or missing hypothesis (None: score it as zero words)
    empty_token: str | None = None
    _compiled: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            subs = tuple((re.compile(p), r) for p, r in self.substitutions)
            drop = tuple(re.compile(p) for p in self.drop)
        except re.error as e:
            raise ValueError(f"rule set {self.name!r}: bad regex: {e}") from e
        object.__setattr__(self, "_compiled", (subs, drop))


PHOENIX14 = RuleSet(
    name="phoenix14",
    substitutions=(
        (r"loc-", ""),
        (r"cl-", ""),
        (r"qu-", ""),
        (r"poss-", ""),
        (r"lh-", ""),
        (r"S0NNE", "SONNE"),
        (r"HABEN2", "HABEN"),
        (r"__EMOTION__", ""),
        (r"__PU__", ""),
        (r"__LEFTHAND__", ""),
        (r"ZEIGEN$", "ZEIGEN-BILDSCHIRM"),
        (r"([A-Z][A-Z])RAUM", r"\1"),
        (r"-PLUSPLUS", ""),
    ),
    drop=(r"__LEFTHAND__", r"__EPENTHESIS__", r"__EMOTION__"),
    apply_to_ref=False,
    collapse_repeats=False,
    empty_token=EMPTY,
)

PHOENIX14T = RuleSet(
    name="phoenix14t",
    substitutions=(
        (r"^__\S*__$", ""),
        (r"\bloc-", ""),
        (r"\bcl-", ""),
        (r"-PLUSPLUS\b", ""),
        (r"\b([A-Z]+)RAUM\b", r"\1"),
    ),
    apply_to_ref=True,
    collapse_repeats=True,
    empty_token=None,
)

NONE = RuleSet(name="none")

RULESETS: dict[str, RuleSet] = {r.name: r for r in (PHOENIX14, PHOENIX14T, NONE)}
RULE_NAMES = tuple(RULESETS)  # the choices of every --rules option and of train.rules


def get_rules(rules: str | RuleSet) -> RuleSet:
    """Look a rule set up by name; raises ValueError naming the choices."""
    if isinstance(rules, RuleSet):
        return rules
    try:
        return RULESETS[rules]
    except KeyError:
        raise ValueError(f"unknown rules {rules!r}; choose one of {sorted(RULESETS)}") from None


def normalize_gloss(gloss: str, rules: str | RuleSet) -> str:
    """Rewrite one gloss; returns '' when the gloss is deleted."""
    subs, drop = get_rules(rules)._compiled
    for pattern, repl in subs:
        gloss = pattern.sub(repl, gloss)
    if any(p.search(gloss) for p in drop):
        return ""
    return gloss.strip()


def normalize(glosses: Sequence[str], rules: str | RuleSet, side: str = "hyp") -> list[str]:
    """Normalise one utterance for scoring.

    Args:
        glosses: the utterance's glosses.
        rules: a rule set or its name.
        side: "hyp" or "ref"; refs are only rewritten by rule sets with `apply_to_ref`.

    An empty hypothesis is *not* replaced by the empty token here; `fill_empty` does that so that
    missing and empty hypotheses share one code path.
    """
    if side not in ("hyp", "ref"):
        raise ValueError(f"side must be 'hyp' or 'ref', got {side!r}")
    rs = get_rules(rules)
    if side == "ref" and not rs.apply_to_ref:
        return list(glosses)
    out = [g for g in (normalize_gloss(g, rs) for g in glosses) if g]
    if rs.collapse_repeats:
        out = [g for g, _ in groupby(out)]
    return out


def fill_empty(hyp: Sequence[str], rules: str | RuleSet) -> list[str]:
    """The official pipeline scores an empty hypothesis as the single word `[EMPTY]`."""
    rs = get_rules(rules)
    if not hyp and rs.empty_token is not None:
        return [rs.empty_token]
    return list(hyp)
