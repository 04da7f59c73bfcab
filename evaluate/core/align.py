"""Word alignment with sclite's costs and sclite's tie-breaking.

sclite (NIST SCTK) aligns with a weighted Levenshtein distance: correct 0, substitution 4,
insertion 3, deletion 3. Equal-cost alignments can split the same errors differently
(3 substitutions cost as much as 2 deletions + 2 insertions), so matching sclite's S/D/I counts,
not just its total, needs its tie-breaking too. In sclite's DP each cell prefers the diagonal
(correct or substitution) when it is no worse than both alternatives, then a deletion only when
it is strictly cheaper than an insertion; the backtrace starts from the last cell. Words compare
case-insensitively on ASCII letters, as sclite does without `-s`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

SUB_COST = 4
INS_COST = 3
DEL_COST = 3

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_case(word: str) -> str:
    """sclite's default case folding: ASCII letters only (it reads words as 8-bit bytes)."""
    return word.translate(_ASCII_LOWER)


@dataclass(frozen=True)
class Alignment:
    """One aligned utterance: `ops` pairs (op, ref word or None, hyp word or None), op in CSDI."""

    ops: tuple[tuple[str, str | None, str | None], ...]

    def count(self, op: str) -> int:
        return sum(1 for o, _, _ in self.ops if o == op)

    @property
    def corr(self) -> int:
        return self.count("C")

    @property
    def sub(self) -> int:
        return self.count("S")

    @property
    def dels(self) -> int:
        return self.count("D")

    @property
    def ins(self) -> int:
        return self.count("I")

    @property
    def errors(self) -> int:
        return self.sub + self.dels + self.ins

    @property
    def cost(self) -> int:
        return SUB_COST * self.sub + DEL_COST * self.dels + INS_COST * self.ins


def align(ref: Sequence[str], hyp: Sequence[str], case_sensitive: bool = False) -> Alignment:
    """Align a hypothesis to a reference exactly as sclite does.

    Args:
        ref: reference words (length N).
        hyp: hypothesis words (length M).
        case_sensitive: compare words as given (sclite `-s`) instead of folding ASCII case.

    Returns:
        The alignment; its ops list every reference word once and every hypothesis word once.
    """
    key = (lambda w: w) if case_sensitive else fold_case
    r = [key(w) for w in ref]
    h = [key(w) for w in hyp]
    n, m = len(r), len(h)
    # cost[i][j]: best cost aligning ref[:i] with hyp[:j]; move[i][j]: 0 diagonal, 1 del, 2 ins
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    move = [[0] * (m + 1) for _ in range(n + 1)]
    for j in range(1, m + 1):
        cost[0][j] = cost[0][j - 1] + INS_COST
        move[0][j] = 2
    for i in range(1, n + 1):
        cost[i][0] = cost[i - 1][0] + DEL_COST
        move[i][0] = 1
        ri, prev, row, mv = r[i - 1], cost[i - 1], cost[i], move[i]
        for j in range(1, m + 1):
            diag = prev[j - 1] + (0 if ri == h[j - 1] else SUB_COST)
            dele = prev[j] + DEL_COST
            ins = row[j - 1] + INS_COST
            if diag <= dele and diag <= ins:
                row[j], mv[j] = diag, 0
            elif dele < ins:
                row[j], mv[j] = dele, 1
            else:
                row[j], mv[j] = ins, 2
    ops: list[tuple[str, str | None, str | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        mv = move[i][j]
        if mv == 0:
            ops.append(("C" if r[i - 1] == h[j - 1] else "S", ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif mv == 1:
            ops.append(("D", ref[i - 1], None))
            i -= 1
        else:
            ops.append(("I", None, hyp[j - 1]))
            j -= 1
    ops.reverse()
    return Alignment(tuple(ops))


def format_alignment(alignment: Alignment) -> tuple[str, str, str]:
    """REF/HYP/Eval rows in sclite's `pra` style: columns padded, `*` for a missing word,
    correct words lower-case and errors upper-case as sclite prints them."""
    refs, hyps, evals = [], [], []
    for op, rw, hw in alignment.ops:
        if op == "C":
            rw, hw = fold_case(rw), fold_case(hw)  # type: ignore[arg-type]
        rw = rw if rw is not None else "*"
        hw = hw if hw is not None else "*"
        width = max(len(rw), len(hw))
        refs.append(rw.ljust(width))
        hyps.append(hw.ljust(width))
        evals.append(("" if op == "C" else op).ljust(width))
    return " ".join(refs), " ".join(hyps), " ".join(evals)
