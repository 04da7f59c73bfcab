"""Word error rate equal to the official sclite-based evaluations, in pure Python
(the scorer itself is ``evaluate.core.wer``).

    python evaluate/wer.py --hyp out.ctm --ref phoenix2014-groundtruth-dev.stm --rules phoenix14

Pipeline (the official one, without sed/perl/sclite): read hypotheses (CTM or text) and references
(STM or text), normalise with the chosen rule set, score an empty or missing hypothesis as
`[EMPTY]` where the rule set says so, align each utterance with sclite's costs and tie-breaking,
and sum. WER = (S + D + I) / N_ref * 100.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python evaluate/wer.py`: make `import evaluate` work
    _here = Path(__file__).resolve().parent  # drop it so evaluate/*.py never shadow top-level names
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _here]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import logging

from evaluate.core.normalize import RULE_NAMES
from evaluate.core.wer import format_report, score_files
from preprocess.commandline import command, prog
from preprocess.files import atomic_write_text


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog("evaluate.wer"),
        description="WER equal to the official sclite-based evaluation (CTM/STM or plain text).",
    )
    p.add_argument("--hyp", required=True, help="hypotheses: CTM or `id gloss ...` lines")
    p.add_argument("--ref", required=True, help="references: STM or `id gloss ...` lines")
    p.add_argument(
        "--rules",
        default="none",
        choices=RULE_NAMES,
        help="normalisation of the official evaluation (default: none = plain comparison)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object: wer sub del ins n_ref")
    p.add_argument("--report", metavar="FILE", help="write per-utterance alignments to FILE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    result = score_files(args.hyp, args.ref, args.rules)
    if args.report:
        atomic_write_text(args.report, format_report(result) + "\n")
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
