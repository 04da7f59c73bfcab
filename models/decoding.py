"""Decode a cached split with a model: length-sorted batches through ``evaluate.core.decode.decode_outputs``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from evaluate.core.decode import GlossLM, TimedGloss, decode_outputs
from models.data import BucketBatchSampler, CacheDataset, collate


@torch.no_grad()
def decode_dataset(model: nn.Module, dataset: CacheDataset, tokens: Sequence[str], device: str | torch.device = "cpu",
                   beam: int = 1, batch_size: int = 8, lm: GlossLM | None = None, lm_weight: float = 0.5,
                   num_workers: int = 0, timings: dict[str, list[TimedGloss]] | None = None) -> dict[str, list[str]]:
    """Hypothesis glosses for every utterance of ``dataset``, in manifest order.

    ``tokens`` is the model's vocabulary; ``timings``, when given, receives each utterance's
    glosses placed in time (output steps).
    """
    model.eval()
    sampler = BucketBatchSampler(dataset.lengths, batch_size, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    hyps: dict[str, list[str]] = {}
    for inputs, lengths, _, _, ids in loader:
        out = model({k: v.to(device) for k, v in inputs.items()}, lengths.to(device))
        for utt, h in zip(ids, decode_outputs(out.main, out.out_lengths, tokens, beam=beam, lm=lm, lm_weight=lm_weight)):
            hyps[utt] = h.glosses
            if timings is not None:
                timings[utt] = h.timed()
    return {u.id: hyps[u.id] for u in dataset.utts}
