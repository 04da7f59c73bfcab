"""``signdistill <command> [options]``: every stage of the pipeline behind one console script.

Each command runs the ``main(argv)`` of the module that implements it, with the rest of the
command line: ``signdistill eval --ckpt best.pt --cache cache`` is ``python -m evaluate.eval
--ckpt best.pt --cache cache``, and ``signdistill eval --help`` is that module's help. Modules
are imported only when their command runs, so ``signdistill --help`` starts at once.
"""
from __future__ import annotations

import importlib
import sys
from typing import NamedTuple, Sequence

from preprocess import commandline


class Command(NamedTuple):
    module: str  # the module whose main(argv) runs
    help: str  # one line for `signdistill --help`


COMMANDS: dict[str, Command] = {
    "synthsign": Command("preprocess.synthsign", "generate the synthsign corpus (videos + keypoints)"),
    "prepare": Command("preprocess.datasets", "read a corpus into manifest.jsonl and vocab.json (no features)"),
    "features": Command("preprocess.features", "extract the feature cache (RGB, landmarks, optical flow)"),
    "keypoints": Command("preprocess.keypoint_io", "export cached landmarks as .pose files, or render them"),
    "train": Command("models.train", "train a teacher (or any model) with CTC"),
    "distill": Command("distill.train", "distil a student from a teacher by a recipe"),
    "correct": Command("distill.correction", "train or apply the gloss-sequence corrector"),
    "lm": Command("evaluate.lm", "estimate a gloss n-gram language model"),
    "eval": Command("evaluate.eval", "decode a cached split with a checkpoint and score it"),
    "score": Command("evaluate.wer", "WER of hypotheses against references (CTM/STM or text)"),
    "cv": Command("evaluate.cv", "k-fold cross-validation over seeds"),
    "export": Command("evaluate.export", "export a checkpoint to ONNX (fp32, int8) with a model card"),
    "tflite": Command("evaluate.tflite", "convert an exported landmark model to TFLite and check it"),
    "infer": Command("evaluate.infer", "recognise a video file or a webcam stream"),
    "serve": Command("evaluate.serve", "local web page: upload a clip, get its glosses"),
    "plot": Command("evaluate.plot", "pictures: training curves, posteriors, alignments, confusions"),
    "tables": Command("evaluate.tables", "teacher and student tables (WER, size, speed)"),
    "bench": Command("evaluate.speed", "model latency and live frames/s"),
    "bench-features": Command("preprocess.bench", "feature-extraction speed"),
    "bench-scale": Command("evaluate.scale", "training throughput and memory at PHOENIX14 sizes"),
    "flops": Command("models.flops", "parameters and FLOPs of the LRINet student"),
    "demo": Command("evaluate.demo", "the whole pipeline on synthsign, ending in a WER table"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
    return ("usage: signdistill <command> [options]\n\nEvery stage of the pipeline behind one console script."
            + "\n\ncommands:\n" + "\n".join(lines)
            + "\n\n`signdistill <command> --help` shows the options of one command.\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"signdistill: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} "
              "(signdistill --help lists them)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name].module)
    commandline.invoked_as = f"signdistill {name}"
    try:
        return commandline.command(module.main)(rest)
    finally:
        commandline.invoked_as = None


if __name__ == "__main__":
    sys.exit(main())
