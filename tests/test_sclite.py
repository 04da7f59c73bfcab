"""Our scorer against real sclite (Debian package `sctk`) on the official reference STMs.

Hypotheses are the references perturbed with a seeded RNG (deletions, insertions, substitutions,
empty and missing utterances, and every decoration the normalisation rules remove). The sclite
side gets its normalisation from a second, independent implementation written here the way the
official shell pipeline works (regexes over whole CTM lines / sentences), so the test never
compares the scorer with itself. WER must agree to 0.1 points and S/D/I exactly, utterance by
utterance.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from itertools import groupby
from pathlib import Path

import pytest

from evaluate.core.formats import format_ctm, read_stm, write_ctm
from evaluate.core.wer import score, score_files
from evaluate.wer import main

DEBIAN_SCLITE = "/usr/lib/sctk/bin/sclite"  # where the Debian package puts it (not on PATH)


def _sclite() -> str:
    found = shutil.which("sclite")
    if found:
        return found
    if os.access(DEBIAN_SCLITE, os.X_OK):
        return DEBIAN_SCLITE
    pytest.skip("sclite not installed (apt-get install sctk)")


# ----------------------------------------------------------------------------------------------
# independent normalisation for the sclite side


def official_phoenix14_ctm(ctm_text: str, ref_ids: list[str]) -> str:
    """The official PHOENIX14 preprocessing, line by line on the CTM text like its sed chain."""
    seds = [
        ("loc-", ""), ("cl-", ""), ("qu-", ""), ("poss-", ""), ("lh-", ""),
        ("S0NNE", "SONNE"), ("HABEN2", "HABEN"),
        ("__EMOTION__", ""), ("__PU__", ""), ("__LEFTHAND__", ""),
        ("ZEIGEN ", "ZEIGEN-BILDSCHIRM "), ("ZEIGEN$", "ZEIGEN-BILDSCHIRM"),
        (r"([A-Z][A-Z])RAUM", r"\1"), ("-PLUSPLUS", ""),
    ]  # fmt: skip
    kept: dict[str, list[str]] = {}
    for line in ctm_text.splitlines():
        for pat, rep in seds:
            line = re.sub(pat, rep, line)
        if any(t in line for t in ("__LEFTHAND__", "__EPENTHESIS__", "__EMOTION__")):
            continue
        fields = line.split()
        if len(fields) >= 5:  # a line whose gloss became empty is dropped
            kept.setdefault(fields[0], []).append(" ".join(fields))
    out = []
    for uid in sorted(ref_ids):
        out += kept.get(uid, [f"{uid} 1 0.000 0.030 [EMPTY]"])
    return "\n".join(out) + "\n"


def clean_phoenix14t_sentence(words: list[str]) -> list[str]:
    """PHOENIX14-T cleaning on the sentence string, both sides (as the corpus's official evaluation script)."""
    s = " ".join(words)
    s = re.sub(r"(?<!\S)__\S*?__(?!\S)", " ", s)
    s = re.sub(r"(?<!\S)(?:loc|cl)-", "", s)
    s = re.sub(r"-PLUSPLUS(?!\S)", "", s)
    s = re.sub(r"(?<!\S)([A-Z]+)RAUM(?!\S)", r"\1", s)
    return [w for w, _ in groupby(s.split())]


def stm_lines(refs: dict[str, list[str]], speakers: dict[str, str]) -> str:
    return "".join(
        f"{u} 1 {speakers.get(u, 'spk')} 0.0 1.79769e+308 {' '.join(refs[u])}".rstrip() + "\n"
        for u in sorted(refs)
    )


def speakers_of(stm: Path) -> dict[str, str]:
    return {ln.split()[0]: ln.split()[2] for ln in stm.read_text(encoding="utf-8").splitlines() if ln.strip()}


# ----------------------------------------------------------------------------------------------
# sclite


def run_sclite(tmp: Path, ctm_text: str, stm_text: str) -> tuple[dict[str, tuple], tuple[int, int]]:
    """Per-file (C, S, D, I) from the pra report, and (n_ref, errors) from the rsum table."""
    hyp, ref = tmp / "hyp.ctm", tmp / "ref.stm"
    hyp.write_text(ctm_text, encoding="utf-8")
    ref.write_text(stm_text, encoding="utf-8")
    proc = subprocess.run(
        [_sclite(), "-h", str(hyp), "ctm", "-r", str(ref), "stm", "-f", "0", "-o", "rsum", "pra", "stdout"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    per_file: dict[str, tuple[int, int, int, int]] = {}
    current = None
    totals = None
    for line in proc.stdout.splitlines():
        if line.startswith("File: "):
            current = line[len("File: "):].strip().lower()  # sclite prints ids lower-cased
        elif line.startswith("Scores: (#C #S #D #I)"):
            c, s, d, i = map(int, line.split(")")[1].split())
            per_file[current] = (c, s, d, i)
        elif re.match(r"\s*\|\s*Sum\s*\|", line):
            nums = [int(x) for x in re.findall(r"\d+", line)]
            # | Sum | #Snt #Wrd | Corr Sub Del Ins Err S.Err |
            totals = (nums[1], nums[6])
    assert totals is not None, proc.stdout[-2000:]
    return per_file, totals


# ----------------------------------------------------------------------------------------------
# perturbation

NOISE = ["__EMOTION__", "__PU__", "__LEFTHAND__", "__EPENTHESIS__"]


def perturb(refs: dict[str, list[str]], seed: int, style: str) -> dict[str, list[str]]:
    rng = random.Random(seed)
    vocab = sorted({w for ws in refs.values() for w in ws})
    hyps: dict[str, list[str]] = {}
    for uid, ref in refs.items():
        r = rng.random()
        if r < 0.05:
            continue  # missing utterance
        if r < 0.10:
            hyps[uid] = []  # empty utterance
            continue
        if r < 0.13 and style != "none":
            hyps[uid] = rng.sample(NOISE, 2)  # only noise: normalises to nothing
            continue
        out: list[str] = []
        for w in ref:
            x = rng.random()
            if x < 0.10:
                pass  # deletion
            elif x < 0.20:
                out.append(rng.choice(vocab))  # substitution
            else:
                out.append(decorate(w, rng, style))
            if rng.random() < 0.08:
                out.append(rng.choice(vocab))  # insertion
            if style != "none" and rng.random() < 0.08:
                out.append(rng.choice(NOISE + ["__ON__", "__OFF__"]))
            if style == "phoenix14t" and rng.random() < 0.08 and out:
                out.append(out[-1])  # repeat, collapsed by the 14-T rules
        hyps[uid] = out
    return hyps


def decorate(w: str, rng: random.Random, style: str) -> str:
    if style == "none" or w.startswith("__"):
        return w
    if style == "phoenix14":
        if w == "ZEIGEN-BILDSCHIRM" and rng.random() < 0.7:
            return "ZEIGEN"
        if w == "SONNE" and rng.random() < 0.5:
            return "S0NNE"
        if w == "HABEN" and rng.random() < 0.5:
            return "HABEN2"
        x = rng.random()
        if x < 0.06:
            return rng.choice(["loc-", "cl-", "poss-", "qu-", "lh-"]) + w
        if x < 0.10:
            return w + "-PLUSPLUS"
        if x < 0.13 and re.fullmatch(r".*[A-Z][A-Z]", w):
            return w + "RAUM"
        if x < 0.15:
            return w.lower()  # sclite compares case-insensitively
        return w
    x = rng.random()  # phoenix14t
    if x < 0.06:
        return rng.choice(["loc-", "cl-"]) + w
    if x < 0.10:
        return w + "-PLUSPLUS"
    if x < 0.13 and re.fullmatch(r"[A-Z]+", w):
        return w + "RAUM"
    return w


# ----------------------------------------------------------------------------------------------

CASES = [
    ("phoenix14/evaluation/phoenix2014-groundtruth-dev.stm", "phoenix14", 1),
    ("phoenix14/evaluation/phoenix2014-groundtruth-test.stm", "phoenix14", 2),
    ("phoenix14t/evaluation/phoenix2014-T-groundtruth-dev.stm", "phoenix14t", 3),
    ("phoenix14t/evaluation/phoenix2014-T-groundtruth-test.stm", "phoenix14t", 4),
    ("phoenix14/evaluation/phoenix2014-groundtruth-dev.stm", "phoenix14t", 5),  # refs lose __ON__
    ("csl-daily/evaluation/CSL-Daily-groundtruth-dev.stm", "none", 6),
]


def compare(tmp_path: Path, ctm_for_sclite: str, stm_for_sclite: str, ours) -> None:
    per_file, (n_ref, errors) = run_sclite(tmp_path, ctm_for_sclite, stm_for_sclite)
    assert ours.n_ref == n_ref
    assert abs(ours.wer - 100.0 * errors / n_ref) < 0.1
    assert ours.sub + ours.dels + ours.ins == errors
    mismatched = []
    for u in ours.utterances:
        a = u.alignment
        mine = (a.corr, a.sub, a.dels, a.ins)
        theirs = per_file.get(u.id.lower())
        if theirs != mine:
            mismatched.append((u.id, mine, theirs, u.ref, u.hyp))
    assert not mismatched, mismatched[:3]
    assert len(per_file) == len(ours.utterances)
    assert sum(v[1] for v in per_file.values()) == ours.sub
    assert sum(v[2] for v in per_file.values()) == ours.dels
    assert sum(v[3] for v in per_file.values()) == ours.ins


@pytest.mark.parametrize("rel,rules,seed", CASES, ids=[f"{Path(c[0]).stem}-{c[1]}" for c in CASES])
def test_agrees_with_sclite_on_official_stms(shared_dir, tmp_path, rel, rules, seed):
    stm = shared_dir / "data" / rel
    refs = read_stm(stm)
    speakers = speakers_of(stm)
    hyps = perturb(refs, seed, rules)

    # our side: the CTM a model run would write, read back through the CLI's code path
    write_ctm(tmp_path / "ours.ctm", hyps)
    ours = score_files(tmp_path / "ours.ctm", stm, rules)
    assert score(hyps, refs, rules).to_dict() == ours.to_dict()  # empty == missing

    if rules == "phoenix14":
        ctm = official_phoenix14_ctm(format_ctm(hyps), list(refs))
        ref_text = stm_lines(refs, speakers)
    elif rules == "phoenix14t":
        ctm = format_ctm({u: clean_phoenix14t_sentence(h) for u, h in hyps.items()})
        ref_text = stm_lines({u: clean_phoenix14t_sentence(r) for u, r in refs.items()}, speakers)
    else:
        ctm, ref_text = format_ctm(hyps), stm_lines(refs, speakers)
    compare(tmp_path, ctm, ref_text, ours)
    assert 5.0 < ours.wer < 80.0  # the perturbation really produced errors of every kind
    assert min(ours.sub, ours.dels, ours.ins) > 0


def test_tie_breaking_matches_sclite(tmp_path):
    """Tiny vocabulary, random lengths: many equal-cost alignments, so only sclite's exact
    tie-breaking gives the same S/D/I split."""
    rng = random.Random(7)
    refs = {f"u{i:04d}": [rng.choice("ABC") for _ in range(rng.randint(1, 9))] for i in range(600)}
    hyps = {u: [rng.choice("ABCD") for _ in range(rng.randint(0, 9))] for u in refs}
    ours = score(hyps, refs, "none")
    compare(tmp_path, format_ctm(hyps), stm_lines(refs, {}), ours)


def test_cli_json_matches_sclite(shared_dir, tmp_path, capsys):
    stm = shared_dir / "data" / "phoenix14/evaluation/phoenix2014-groundtruth-test.stm"
    refs = read_stm(stm)
    hyps = perturb(refs, 11, "phoenix14")
    write_ctm(tmp_path / "h.ctm", hyps)
    assert main(["--hyp", str(tmp_path / "h.ctm"), "--ref", str(stm), "--rules", "phoenix14", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    ctm = official_phoenix14_ctm(format_ctm(hyps), list(refs))
    _, (n_ref, errors) = run_sclite(tmp_path, ctm, stm_lines(refs, speakers_of(stm)))
    assert got["n_ref"] == n_ref
    assert abs(got["wer"] - 100.0 * errors / n_ref) < 0.1
