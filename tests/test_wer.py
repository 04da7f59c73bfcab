"""WER scorer: normalisation tables, file formats and their errors, alignment, CLI and report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluate.core.align import align, format_alignment
from evaluate.core.formats import (
    FormatError,
    detect_format,
    read_ctm,
    read_stm,
    read_transcripts,
    write_ctm,
    write_stm,
    write_text,
)
from evaluate.core.normalize import EMPTY, RULESETS, get_rules, normalize, normalize_gloss
from evaluate.core.wer import ScoringError, score
from evaluate.wer import main

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------ normalisation

PHOENIX14_HYP = [
    # (raw gloss, after the official PHOENIX14 rules; "" = deleted)
    ("loc-NORD", "NORD"),
    ("cl-KOMMEN", "KOMMEN"),
    ("qu-DU", "DU"),
    ("poss-EUCH", "EUCH"),
    ("lh-HOCH", "HOCH"),
    ("NICHT-cl-KOMMEN", "NICHT-KOMMEN"),  # the official sed removes the prefix anywhere
    ("S0NNE", "SONNE"),
    ("HABEN2", "HABEN"),
    ("loc-HABEN2-PLUSPLUS", "HABEN"),
    ("__EMOTION__", ""),
    ("__PU__", ""),
    ("__LEFTHAND__", ""),
    ("__EPENTHESIS__", ""),
    ("ZEIGEN", "ZEIGEN-BILDSCHIRM"),
    ("loc-ZEIGEN", "ZEIGEN-BILDSCHIRM"),
    ("ZEIGEN-BILDSCHIRM", "ZEIGEN-BILDSCHIRM"),
    ("ZEIGEN-PLUSPLUS", "ZEIGEN"),  # ZEIGEN is only rewritten at the end, before -PLUSPLUS goes
    ("REGEN-PLUSPLUS", "REGEN"),
    ("NORDRAUM", "NORD"),
    ("SUEDOSTRAUM", "SUEDOST"),
    ("DEUTSCHLANDRAUM", "DEUTSCHLAND"),
    ("RAUM", "RAUM"),  # needs two letters before RAUM
    ("TRAUM", "TRAUM"),
    ("loc-SUEDRAUM", "SUED"),
    ("__ON__", "__ON__"),
    ("__OFF__", "__OFF__"),
    ("WETTER", "WETTER"),
    ("neg-HABEN", "neg-HABEN"),
]

PHOENIX14T = [
    ("__ON__", ""),
    ("__OFF__", ""),
    ("__EMOTION__", ""),
    ("__PU__", ""),
    ("loc-NORD", "NORD"),
    ("cl-KOMMEN", "KOMMEN"),
    ("poss-EUCH", "poss-EUCH"),
    ("REGEN-PLUSPLUS", "REGEN"),
    ("NORDRAUM", "NORD"),
    ("TRAUM", "T"),  # the 14-T rule takes any letters before a RAUM ending
    ("RAUM", "RAUM"),
    ("loc-NORDWESTRAUM-PLUSPLUS", "NORDWEST"),
    ("C+M", "C+M"),
]


@pytest.mark.parametrize("raw,want", PHOENIX14_HYP)
def test_phoenix14_rule_table(raw, want):
    assert normalize_gloss(raw, "phoenix14") == want
    assert normalize([raw], "phoenix14") == ([want] if want else [])


@pytest.mark.parametrize("raw,want", PHOENIX14T)
def test_phoenix14t_rule_table(raw, want):
    assert normalize([raw], "phoenix14t", side="hyp") == ([want] if want else [])
    assert normalize([raw], "phoenix14t", side="ref") == ([want] if want else [])


def test_phoenix14_leaves_references_alone_and_keeps_repeats():
    assert normalize(["loc-NORD", "__PU__"], "phoenix14", side="ref") == ["loc-NORD", "__PU__"]
    assert normalize(["REGEN", "REGEN"], "phoenix14") == ["REGEN", "REGEN"]


def test_phoenix14t_collapses_repeats_after_dropping():
    assert normalize(["A", "A", "__PU__", "A", "B", "loc-B", "A"], "phoenix14t") == ["A", "B", "A"]


def test_none_is_plain():
    words = ["loc-NORD", "__ON__", "A", "A"]
    assert normalize(words, "none") == words
    assert normalize(words, "none", side="ref") == words


def test_unknown_rules_name_the_choices():
    with pytest.raises(ValueError, match="phoenix14t"):
        get_rules("phoenix2014")
    assert set(RULESETS) == {"phoenix14", "phoenix14t", "none"}


def test_empty_and_missing_hypotheses_are_scored_as_EMPTY():
    refs = {"u1": ["A", "B", "C"], "u2": ["A", "B", "C"], "u3": ["A", "B", "C"]}
    hyps = {"u1": [], "u2": ["__EMOTION__", "loc-", "__PU__"]}  # u3 missing
    r = score(hyps, refs, "phoenix14")
    for u in r.utterances:
        assert u.hyp == (EMPTY,)
        assert (u.alignment.sub, u.alignment.dels, u.alignment.ins) == (1, 2, 0)  # as sclite
    assert (r.sub, r.dels, r.ins, r.n_ref) == (3, 6, 0, 9)
    # without the [EMPTY] convention an empty hypothesis is all deletions (same WER)
    r14t = score(hyps, refs, "phoenix14t")
    assert (r14t.sub, r14t.dels, r14t.wer) == (0, 9, r.wer)


def test_on_off_count_in_phoenix14_but_not_in_14t():
    refs = {"u": ["__ON__", "REGEN", "__OFF__"]}
    hyps = {"u": ["REGEN"]}
    assert score(hyps, refs, "phoenix14").dels == 2
    assert score(hyps, refs, "phoenix14t").wer == 0.0


# ---------------------------------------------------------------------------------- alignment

ALIGN_CASES = [
    (["A", "B", "C", "D"], ["A", "C", "D", "E"], "CDCCI"),
    (["A", "B", "C"], ["[EMPTY]"], "DDS"),  # sclite puts the substitution last
    (["A", "B"], ["X", "Y", "Z"], "ISS"),  # checked with sclite: the insertion comes first
    ([], ["A", "B"], "II"),
    (["A", "B"], [], "DD"),
    (["a", "B"], ["A", "b"], "CC"),  # sclite compares case-insensitively
]


@pytest.mark.parametrize("ref,hyp,ops", ALIGN_CASES)
def test_alignment_table(ref, hyp, ops):
    a = align(ref, hyp)
    assert "".join(o for o, _, _ in a.ops) == ops
    assert a.corr + a.sub + a.dels == len(ref)
    assert a.corr + a.sub + a.ins == len(hyp)


def test_alignment_cost_is_minimal():
    """The chosen path costs what an independent weighted edit distance says is minimal."""
    import random

    def min_cost(r, h):
        d = [[0] * (len(h) + 1) for _ in range(len(r) + 1)]
        for i in range(len(r) + 1):
            for j in range(len(h) + 1):
                if i == 0 or j == 0:
                    d[i][j] = 3 * (i + j)
                else:
                    d[i][j] = min(d[i - 1][j - 1] + (0 if r[i - 1] == h[j - 1] else 4),
                                  d[i - 1][j] + 3, d[i][j - 1] + 3)
        return d[-1][-1]

    rng = random.Random(3)
    for _ in range(300):
        r = [rng.choice("ABC") for _ in range(rng.randint(0, 7))]
        h = [rng.choice("ABCD") for _ in range(rng.randint(0, 7))]
        assert align(r, h).cost == min_cost(r, h)


def test_case_sensitive_option():
    assert align(["a"], ["A"], case_sensitive=True).sub == 1


def test_format_alignment_marks_errors():
    ref, hyp, ev = format_alignment(align(["A", "BB", "C"], ["A", "C", "DDD"]))
    assert ref.split() == ["a", "BB", "c", "*"]
    assert hyp.split() == ["a", "*", "c", "DDD"]
    assert ev.split() == ["D", "I"]
    assert len(ref) == len(hyp)


# ------------------------------------------------------------------------------------ formats


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_detects_and_reads_every_format(tmp_path):
    ctm = write(tmp_path, "h.ctm", ";; comment\nu1 1 0.02 0.01 B 0.9\nu1 1 0.00 0.01 A\nu2 1 0.0 0.01 C\n")
    stm = write(tmp_path, "r.stm", ';; header\nu1 1 spk 0.0 1.79769e+308 <o,f0,male> A B\nu2 1 spk 0.0 9.0\n')
    txt = write(tmp_path, "h.txt", "u1 A B\nu2\n")
    assert [detect_format(p) for p in (ctm, stm, txt)] == ["ctm", "stm", "text"]
    assert read_transcripts(ctm) == {"u1": ["A", "B"], "u2": ["C"]}  # ordered by start time
    assert read_transcripts(stm) == {"u1": ["A", "B"], "u2": []}
    assert read_transcripts(txt) == {"u1": ["A", "B"], "u2": []}


def test_real_official_stm_layout(shared_dir):
    refs = read_stm(shared_dir / "data/phoenix14/evaluation/phoenix2014-groundtruth-dev.stm")
    assert len(refs) == 540
    assert refs["29July_2010_Thursday_heute_default-7"][:3] == ["__ON__", "TEMPERATUR", "WIE-AUSSEHEN"]


def test_stm_ignore_segment(tmp_path):
    stm = write(tmp_path, "r.stm", "u1 1 s 0 1 A\nu2 1 s 0 1 IGNORE_TIME_SEGMENT_IN_SCORING\n")
    assert read_stm(stm) == {"u1": ["A"]}


@pytest.mark.parametrize(
    "name,text,line,needle",
    [
        ("bad.ctm", "u1 1 0.0 0.01 A\nu1 1 0.01 0.01 B\nu1 1 0.02 C\n", 3, "5 or 6 fields"),
        ("bad2.ctm", "u1 1 0.0 0.01 A\n;; c\nu1 1 x 0.01 B\nu1 1 0.0 0.01 C\n", 3, "start and duration"),
        ("bad3.ctm", "u1 1 0.0 0.01 A 0.5\nu1 1 0.0 0.01 B\nu1 1 0.0 0.01 C 1 2\n", 3, "5 or 6 fields"),
        ("bad.stm", "u1 1 s 0.0 9 A\nu2 1 s 0.0\nu3 1 s 0 9 B\n", 2, "at least 5 fields"),
        ("bad2.stm", "u1 1 s 0.0 9 A\nu2 1 s 0.0 9 B\nu1 1 s 0.0 9 C\n", 3, "appears twice"),
        ("bad3.stm", "u1 1 s 0.0 9 A\nu2 1 s 0.0 9 <o,f0 B\n", 2, "label"),
        ("bad.txt", "u1 A\nu2 B\nu1 C\n", 3, "appears twice"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, name, text, line, needle):
    p = write(tmp_path, name, text)
    with pytest.raises(FormatError) as e:
        read_transcripts(p)
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert needle in str(e.value)


def test_writers_round_trip(tmp_path):
    hyps = {"b": ["X", "Y", "Z"], "a": ["W"], "c": []}
    write_ctm(tmp_path / "h.ctm", hyps)
    lines = (tmp_path / "h.ctm").read_text().splitlines()
    assert lines[0] == "a 1 0.000 0.010 W"
    assert lines[1:] == ["b 1 0.000 0.010 X", "b 1 0.010 0.010 Y", "b 1 0.020 0.010 Z"]
    assert read_ctm(tmp_path / "h.ctm") == {"a": ["W"], "b": ["X", "Y", "Z"]}  # empty: no line
    write_stm(tmp_path / "r.stm", hyps, speakers={"a": "signer01"})
    assert (tmp_path / "r.stm").read_text().splitlines()[0] == "a 1 signer01 0.0 1.79769e+308 W"
    assert read_stm(tmp_path / "r.stm") == {"a": ["W"], "b": ["X", "Y", "Z"], "c": []}
    write_text(tmp_path / "h.txt", hyps)
    assert read_transcripts(tmp_path / "h.txt") == {"a": ["W"], "b": ["X", "Y", "Z"], "c": []}


# --------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def pair(tmp_path):
    ref = write(tmp_path, "ref.stm", "u1 1 s 0.0 1.79769e+308 A B C D\nu2 1 s 0.0 1.79769e+308 E F\n")
    hyp = write(tmp_path, "hyp.ctm", "u1 1 0.0 0.01 A\nu1 1 0.01 0.01 C\nu1 1 0.02 0.01 D\n"
                "u1 1 0.03 0.01 X\nu2 1 0.0 0.01 E\nu2 1 0.01 0.01 G\n")
    return hyp, ref


def test_cli_json(pair, capsys):
    hyp, ref = pair
    assert main(["--hyp", str(hyp), "--ref", str(ref), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    got = json.loads(out[0])
    assert set(got) == {"wer", "sub", "del", "ins", "n_ref"}
    assert got == {"wer": pytest.approx(100 * 3 / 6), "sub": 1, "del": 1, "ins": 1, "n_ref": 6}


def test_cli_text_and_report(pair, tmp_path, capsys):
    hyp, ref = pair
    report = tmp_path / "out" / "report.txt"
    assert main(["--hyp", str(hyp), "--ref", str(ref), "--rules", "phoenix14", "--report", str(report)]) == 0
    line = capsys.readouterr().out.strip()
    assert "WER 50.00%" in line and "sub 1" in line and "del 1" in line and "ins 1" in line and "6" in line
    text = report.read_text()
    blocks = text.split("id: ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["u1", "u2"]
    u1 = blocks[0].splitlines()
    assert u1[1].startswith("Scores: (#C #S #D #I) 3 0 1 1")
    assert u1[2].split()[1:] == ["a", "B", "c", "d", "*"]
    assert u1[3].split()[1:] == ["a", "*", "c", "d", "X"]
    assert u1[4].split()[1:] == ["D", "I"]
    assert blocks[1].splitlines()[4].split()[1:] == ["S"]


def test_cli_unknown_ids_is_one_clear_error(pair, tmp_path, capsys):
    hyp, ref = pair
    bad = write(tmp_path, "extra.txt", "u1 A\nzz9 B\nzz8 C\n")
    assert main(["--hyp", str(bad), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "2 hypothesis id(s) not in the reference" in err and "'zz9'" in err and str(bad) in err
    with pytest.raises(ScoringError):
        score({"x": ["A"]}, {"u": ["A"]})


def test_cli_malformed_file_exit_code(pair, tmp_path, capsys):
    _, ref = pair
    bad = write(tmp_path, "bad.ctm", "u1 1 0.0 0.01 A\nu1 1 0.0 0.01\nu1 1 0.0 0.01 B\n")
    assert main(["--hyp", str(bad), "--ref", str(ref)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err


def test_cli_empty_reference(tmp_path, capsys):
    ref = write(tmp_path, "empty.stm", ";; nothing here\n")
    hyp = write(tmp_path, "h.txt", "")
    assert main(["--hyp", str(hyp), "--ref", str(ref)]) == 2
    assert "no utterances" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["script", "module"])
def test_runs_as_script_and_module(pair, tmp_path, how):
    hyp, ref = pair
    script = [sys.executable, str(ROOT / "evaluate" / "wer.py")]
    cmd = script if how == "script" else [sys.executable, "-m", "evaluate.wer"]
    cwd = tmp_path if how == "script" else ROOT
    proc = subprocess.run(cmd + ["--hyp", str(hyp), "--ref", str(ref), "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_ref"] == 6
