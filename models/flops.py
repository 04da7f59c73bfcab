"""Parameter and multiply-accumulate counts, and the LRINet card against the CRKD paper.

``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of every
convolution and matrix product (pooling, BN and activations are not counted, as in the
papers' tables), so MACs = FLOPs / 2. The paper reports "257 GFLOPs" for LRINet at 72 x 72
and 200 frames; a count by hand and this counter both give about 250 G multiply-accumulates
(twice that in FLOPs), so the paper's "GFLOPs" are MACs and the card compares MACs with it.

The card is counted on the meta device: shapes only, no arithmetic, so 200 frames of
72 x 72 take well under a second on any CPU.

    python -m models.flops [--size 72] [--frames 200] [--vocab 1296] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from models.lrinet import LRINet, LRINetConfig
from preprocess.commandline import command, prog

PAPER_PARAMS_M = 10.5  # CRKD paper, LRINet at 72 x 72 (millions)
PAPER_GFLOPS = 257.0  # CRKD paper, 200 frames at 72 x 72; multiply-accumulates (see module docstring)
PHOENIX14_VOCAB = 1296  # 1295 PHOENIX14 glosses + the CTC blank


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, inputs: dict[str, Tensor], lengths: Tensor) -> int:
    """Multiply-accumulates of one forward pass in eval mode (FlopCounterMode FLOPs / 2).

    Works on real tensors and on the meta device (shapes only). The model's train/eval mode
    is restored afterwards.

    Args:
        model: follows ``forward(inputs, lengths)``.
        inputs: model inputs, e.g. {"rgb": [B, T, 3, r, r]}.
        lengths: [B] valid frames.
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(inputs, lengths)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def lrinet_card(size: int = 72, frames: int = 200, vocab_size: int = PHOENIX14_VOCAB) -> dict[str, Any]:
    """Parameters and MACs of LRINet (default config) for one clip, next to the paper's figures.

    Args:
        size: input side r (56, 72, 88, 104).
        frames: clip length T.
        vocab_size: classifier width (PHOENIX14: 1296 with the blank).

    Returns:
        dict with params, macs, gmacs, gflops (= 2 x MACs), the paper's figures and the
        relative deltas in percent (the paper's figures are at 72 x 72 and 200 frames).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    with torch.device("meta"):
        model = LRINet(vocab_size, LRINetConfig(input_size=size))
        rgb = torch.empty(1, frames, 3, size, size)
        lengths = torch.full((1,), frames, dtype=torch.long)
    params = count_params(model)
    macs = count_macs(model, {"rgb": rgb}, lengths)
    return {
        "input_size": size,
        "frames": frames,
        "vocab_size": vocab_size,
        "first_kernel": size // 8 - 6,
        "params": params,
        "params_m": params / 1e6,
        "macs": macs,
        "gmacs": macs / 1e9,
        "gflops": 2 * macs / 1e9,
        "paper_params_m": PAPER_PARAMS_M,
        "paper_gflops": PAPER_GFLOPS,
        "paper_gflops_are_macs": True,
        "params_delta_pct": 100.0 * (params / 1e6 - PAPER_PARAMS_M) / PAPER_PARAMS_M,
        "macs_delta_pct": 100.0 * (macs / 1e9 - PAPER_GFLOPS) / PAPER_GFLOPS,
    }


def format_card(card: dict[str, Any]) -> str:
    """The card as a small plain-text table."""
    rows = [
        ("input", f"{card['input_size']}x{card['input_size']}, {card['frames']} frames, V={card['vocab_size']}", ""),
        ("first bottleneck k", str(card["first_kernel"]), "k = r/8 - 6"),
        ("parameters", f"{card['params_m']:.3f} M", f"paper {card['paper_params_m']} M ({card['params_delta_pct']:+.1f}%)"),
        ("multiply-accumulates", f"{card['gmacs']:.1f} G", f"paper {card['paper_gflops']:g} \"GFLOPs\" ({card['macs_delta_pct']:+.1f}%)"),
        ("FLOPs (2 x MACs)", f"{card['gflops']:.1f} G", "the paper's GFLOPs are MACs"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = ["LRINet card (CRKD)", "-" * (w0 + w1 + 40)]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("models.flops"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=72, help="input side r (56, 72, 88, 104)")
    parser.add_argument("--frames", type=int, default=200, help="clip length")
    parser.add_argument("--vocab", type=int, default=PHOENIX14_VOCAB, help="classifier width")
    parser.add_argument("--json", type=Path, default=None, help="also write the card to this JSON file")
    args = parser.parse_args(argv)
    card = lrinet_card(args.size, args.frames, args.vocab)
    print(format_card(card))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(card, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
