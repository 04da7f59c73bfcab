"""Estimate a gloss n-gram LM (``evaluate.core.lm.NGramLM``) from training transcripts.

    python -m evaluate.lm --manifest data/phoenix14/manifest.jsonl --split train --order 3 --out lm.json
"""
from __future__ import annotations

import argparse
import sys

from evaluate.core.lm import NGramLM
from preprocess.commandline import add_out, command, prog


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("evaluate.lm"), description="Estimate a gloss n-gram LM.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest JSONL (the glosses of --split are used)")
    src.add_argument("--text", help="transcripts: STM, CTM or `id gloss ...` lines")
    p.add_argument("--split", default="train", help="manifest split to read (default train)")
    p.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    p.add_argument("--smoothing", choices=("kn", "addk"), default="kn", help="Kneser-Ney or add-k smoothing")
    add_out(p, "output JSON", required=True)
    args = p.parse_args(argv)
    if args.manifest:
        from preprocess.manifest import read_manifest

        sentences = [u.glosses for u in read_manifest(args.manifest, split=args.split)]
    else:
        from evaluate.core.formats import read_transcripts

        sentences = list(read_transcripts(args.text).values())
    if not sentences:
        raise ValueError(f"{args.manifest or args.text}: no sentences to estimate the LM from")
    lm = NGramLM(args.order, args.smoothing).fit(sentences)
    lm.save(args.out)
    print(f"{args.out}: order {lm.order} {lm.smoothing}, {len(sentences)} sentences, "
          f"{len(lm.vocabulary)} tokens, perplexity on them {lm.perplexity(sentences):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
