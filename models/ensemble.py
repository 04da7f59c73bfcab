"""An ensemble of trained models of the same vocabulary and inputs, used as one teacher.

On a small corpus a single teacher is often no better than the student it should teach;
the average of a few independently seeded runs is (ensembling removes much of the
seed-to-seed variance), and distilling that average into one student keeps most of the gain
at one model's cost. The ensemble's posteriors are the mean of the members' probabilities
(returned as log-probabilities, which ``log_softmax`` leaves unchanged); its features are the
members' features side by side, so a student's projector can regress onto all of them.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor, nn

from models.base import ModelOutput
from preprocess.configs import UserError

if TYPE_CHECKING:
    from models.checkpoint import Checkpoint


class Ensemble(nn.Module):
    """Members with equal time reduction and vocabulary, as one ``forward(inputs, lengths)`` model."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, inputs: dict[str, Tensor], lengths: Tensor) -> ModelOutput:
        outs = [m(inputs, lengths) for m in self.members]
        first = outs[0]
        for o in outs[1:]:
            if not torch.equal(o.out_lengths, first.out_lengths):
                raise ValueError("ensemble members reduce time differently; ensemble models of one architecture family")
        logits = {}
        for level in first.logits:
            if all(level in o.logits for o in outs):
                logits[level] = mean_posterior([o.logits[level] for o in outs])
        feats = {name: torch.cat([o.features[name].float() for o in outs], dim=-1)  # [B, T, M * D]
                 for name in first.features if all(name in o.features for o in outs)}
        return ModelOutput(logits=logits, out_lengths=first.out_lengths, features=feats)


def mean_posterior(logits: Sequence[Tensor], use: Tensor | None = None) -> Tensor:
    """Log of the members' mean probability, [B, T', V] from M tensors [B, T', V] (logits or
    log-probabilities); ``use`` [M, B] bool: average each clip over its chosen members only."""
    logp = torch.stack([x.float().log_softmax(-1) for x in logits])  # [M, B, T', V]
    if use is None:
        return torch.logsumexp(logp, dim=0) - math.log(len(logits))
    use = use.to(logp.device)
    masked = logp.masked_fill(~use[:, :, None, None], float("-inf"))
    return torch.logsumexp(masked, dim=0) - use.sum(0).float().log()[:, None, None]


def checkpoint_paths(ckpt: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One checkpoint, or the members of an ensemble, as a list of paths."""
    return [Path(ckpt)] if isinstance(ckpt, (str, os.PathLike)) else [Path(p) for p in ckpt]


def load_ensemble(paths: Sequence[str | os.PathLike], device: str | torch.device = "cpu"
                  ) -> tuple[nn.Module, Checkpoint]:
    """One checkpoint: its model; several: an ``Ensemble`` and the first member's checkpoint with
    ``members`` (every member's checkpoint) set. Members must share vocabulary, inputs and streams."""
    from models.checkpoint import load_model

    loaded = [load_model(p, device) for p in paths]
    if len(loaded) == 1:
        return loaded[0]
    model0, ckpt0 = loaded[0]
    for p, (_, ck) in zip(paths[1:], loaded[1:]):
        for key, what in (("vocab", "vocabulary"), ("spec", "input spec")):
            if getattr(ck, key) != getattr(ckpt0, key):
                raise UserError(f"ensemble member {p} has another {what} than {paths[0]}; "
                                "ensemble checkpoints trained on the same cache")
        if ck.streams != ckpt0.streams:
            raise UserError(f"ensemble member {p} reads streams {list(ck.streams)}, "
                            f"{paths[0]} reads {list(ckpt0.streams)}")
    ensemble = Ensemble([m for m, _ in loaded]).to(device).eval()
    return ensemble, replace(ckpt0, members=tuple(ck for _, ck in loaded))
