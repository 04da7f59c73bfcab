"""`make eval`: decode one split of a cached dataset with a checkpoint and score it.

    python -m evaluate.eval --ckpt runs/x/best.pt --cache cache --dataset synthsign --split dev

Writes ``<out>/<split>.ctm`` (the official CTM format with each gloss's time in the clip, from
its CTC spike), ``<out>/<split>.stm`` (the references it was scored against, so sclite or
``evaluate/wer.py --hyp <split>.ctm --ref <split>.stm`` rescores it to the same WER) and
``<out>/<split>.report.txt`` (per-utterance alignments), prints the WER line and returns the
score. The checkpoint is checked against the cache first: a different vocabulary or extractor
configuration is refused instead of producing a meaningless WER.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from evaluate.core.decode import GlossLM, TimedGloss
from evaluate.core.normalize import RULE_NAMES
from models.base import TIME_REDUCTION
from models.decoding import decode_dataset
from models.ensemble import checkpoint_paths, load_ensemble
from preprocess.commandline import add_cache, add_device, add_out, command, prog
from preprocess.device import resolve_device
from preprocess.files import atomic_write_text
from preprocess.manifest import read_manifest


def evaluate(ckpt: str | os.PathLike | Sequence[str | os.PathLike], cache: str | os.PathLike, dataset: str | None = None, split: str = "dev",
             beam: int = 10, out: str | os.PathLike | None = None, rules: str | None = None,
             device: str = "cpu", batch_size: int = 8, lm: GlossLM | None = None, lm_weight: float = 0.5,
             ref: str | os.PathLike | None = None):
    """Decode ``split`` with the checkpoint, write CTM + report under ``out``; returns the ScoreResult.

    References are the manifest's glosses, or an official STM / text file given as ``ref``
    (for PHOENIX, whose official STMs are cleaner than the corpus annotation). ``dataset``
    defaults to the one the checkpoint was trained on.
    """
    from evaluate.core.formats import format_timed_ctm, read_transcripts, write_stm
    from evaluate.core.wer import format_report, score

    paths = checkpoint_paths(ckpt)  # several: their ensemble (mean posterior) is decoded
    model, state = load_ensemble(paths, device)
    ckpt = paths[0]
    ds = state.dataset_split(cache, split, dataset, name=",".join(map(str, paths)))
    dataset = ds.dataset
    rules = rules or state.rules
    if len(ds) == 0:
        raise ValueError(f"{ds.root}: split {split!r} has no cached utterances to evaluate; "
                         f"check --split or run `make features DATASET={dataset}`")
    timings: dict[str, list[TimedGloss]] = {}
    hyps = decode_dataset(model, ds, state.vocab, device, beam=beam, batch_size=batch_size, lm=lm, lm_weight=lm_weight,
                          timings=timings)
    # Every utterance of the split is scored: one without a valid cache file is an [EMPTY] hypothesis
    # (the official rule for a missing hypothesis), so the reference never shrinks.
    refs = read_transcripts(ref) if ref else {u.id: list(u.glosses) for u in read_manifest(ds.root / "manifest.jsonl", split)}
    missing = [u for u in refs if u not in hyps]
    if missing:
        print(f"warning: {ds.root}/{split}: {len(missing)} of {len(refs)} reference utterances have no valid cache "
              f"file (e.g. {', '.join(missing[:3])}) and are scored as [EMPTY] hypotheses; rebuild them with "
              f"`make features DATASET={dataset}`", file=sys.stderr)
    result = score(hyps, refs, rules)
    out = Path(out) if out else ckpt.parent / "eval"
    segments = {}
    for u in ds.utts:  # seconds of the source video: the model's time reduction, then the clip's frame rate
        segments[u.id] = [(state.vocab[g.token], *g.seconds(u.fps, TIME_REDUCTION, u.num_frames or None), g.score)
                          for g in timings.get(u.id, [])]
    atomic_write_text(out / f"{split}.ctm", format_timed_ctm(segments))
    write_stm(out / f"{split}.stm", refs)  # what was scored against, so evaluate/wer.py can rescore the CTM
    atomic_write_text(out / f"{split}.report.txt", format_report(result) + "\n")
    return result


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("evaluate.eval"), description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, nargs="+",
                   help="checkpoint (best.pt / last.pt from models.train); several: decode their ensemble")
    add_cache(p, required=True)
    p.add_argument("--dataset", help="dataset name under the cache root (default: the checkpoint's)")
    p.add_argument("--split", default="dev", help="split to decode and score (default dev)")
    p.add_argument("--beam", type=int, default=10, help="prefix beam width (1: greedy)")
    add_out(p, "output folder (default <ckpt folder>/eval)")
    p.add_argument("--rules", choices=RULE_NAMES,
                   help="WER normalisation (default: the checkpoint's training rules)")
    add_device(p, "device to decode on")
    p.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    p.add_argument("--ref", help="reference STM/text file instead of the manifest's glosses")
    p.add_argument("--lm", help="gloss n-gram LM JSON (python -m evaluate.lm) for the beam search")
    p.add_argument("--lm-weight", type=float, default=0.5, help="weight of the LM log-probability in the beam score")
    p.add_argument("--json", action="store_true", help="also print one JSON line: wer sub del ins n_ref")
    args = p.parse_args(argv)
    lm = None
    if args.lm:
        from evaluate.core.lm import NGramLM

        lm = NGramLM.load(args.lm)
    result = evaluate(args.ckpt, args.cache, args.dataset, args.split, beam=args.beam, out=args.out,
                      rules=args.rules, device=resolve_device(args.device), batch_size=args.batch_size, lm=lm,
                      lm_weight=args.lm_weight, ref=args.ref)
    print(f"{args.split}: {result.summary()}")
    if args.json:
        print(json.dumps({"split": args.split, **result.to_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
