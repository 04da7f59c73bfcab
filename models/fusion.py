"""Single-stream models and fusion teachers (early, late, attention) under the ``models.base`` contract.

Each stream is a ``StreamBranch``: frame encoder -> ``TemporalConv`` -> ``BiLSTM`` with a CTC
head on the BiLSTM output and another on the conv output (multi-level CTC, VAC/SMKD). A
fusion teacher keeps every branch whole, so each stream can be trained with its own CTC loss
and read out alone, and adds a fused "main" level on top.

Output levels (all [B, T', V], T' = T // 4):
  single stream: "main" (BiLSTM), "conv_main" (conv block)
  fusion:        "main", "conv_main" (fused), and "<stream>", "conv_<stream>" for every stream
Features: "frame_<s>" [B, T, D_s], "temporal_<s>" [B, T', H], "context_<s>" [B, T', H] per
stream, and the fused "frame" (concat of the streams' frame features), "temporal", "context";
attention fusion adds "attention" [B, T', S] (weights over streams, in ``streams`` order).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.base import ModelOutput
from models.temporal import BiLSTM, TemporalConv, length_mask, pad_min_time

FUSIONS = ("none", "early", "late", "attention")


class StreamBranch(nn.Module):
    """One modality end to end: ``encoder`` -> conv block -> BiLSTM -> classifier(s).

    Args:
        encoder: maps (inputs, lengths) of this stream to frame features [B, T, encoder.out_dim].
        share_classifier: SMKD: the conv level and the BiLSTM level use the same classifier.
    """

    def __init__(
        self,
        encoder: nn.Module,
        vocab_size: int,
        hidden: int,
        lstm_layers: int,
        dropout: float,
        share_classifier: bool,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.conv = TemporalConv(encoder.out_dim, hidden)
        self.lstm = BiLSTM(hidden, hidden, lstm_layers, dropout)
        self.classifier = nn.Linear(hidden, vocab_size)
        self.conv_classifier = self.classifier if share_classifier else nn.Linear(hidden, vocab_size)

    def forward(self, frame: Tensor, lengths: Tensor) -> dict[str, Tensor]:
        """Args:
            frame: [B, T, D] frame features from ``encoder`` (T >= 4).
            lengths: [B] valid frames.

        Returns:
            dict with "temporal" [B, T', H], "context" [B, T', H], "logits" and "conv_logits" [B, T', V].
        """
        temporal, out_lengths = self.conv(self.dropout(frame), lengths)  # [B, T', H]
        context = self.lstm(self.dropout(temporal), out_lengths)  # [B, T', H]
        return {
            "temporal": temporal,
            "context": context,
            "logits": self.classifier(context),
            "conv_logits": self.conv_classifier(temporal),
            "out_lengths": out_lengths,
        }


def log_mean_posteriors(logits: list[Tensor]) -> Tensor:
    """log(mean_s softmax(logits_s)) over streams, computed stably in the log domain.

    Args:
        logits: S tensors [B, T', V].

    Returns:
        [B, T', V] log-probabilities of the averaged posteriors.
    """
    logp = torch.stack([x.log_softmax(dim=-1) for x in logits], dim=0)  # [S, B, T', V]
    return torch.logsumexp(logp, dim=0) - math.log(len(logits))


class AttentionFusion(nn.Module):
    """Per-time-step softmax weights over streams from their concatenated temporal features."""

    def __init__(self, num_streams: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(num_streams * hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_streams)
        )

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            feats: [B, T', S, H] per-stream temporal features.

        Returns:
            fused [B, T', H] and weights [B, T', S] (sum to 1 over streams).
        """
        b, t = feats.shape[:2]
        weights = self.score(feats.reshape(b, t, -1)).softmax(dim=-1)  # [B, T', S*H] -> [B, T', S]
        fused = (weights.unsqueeze(-1) * feats).sum(dim=2)  # [B, T', H]
        return fused, weights


class CSLRModel(nn.Module):
    """A single-stream model (fusion "none") or a fusion teacher over several streams.

    Args:
        encoders: stream name -> encoder, in the order of the config's ``streams``.
        fusion: "none" | "early" | "late" | "attention".
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        vocab_size: int,
        fusion: str = "none",
        hidden: int = 256,
        lstm_layers: int = 2,
        dropout: float = 0.1,
        share_classifier: bool = False,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
        if (fusion == "none") != (len(encoders) == 1):
            raise ValueError(f"fusion {fusion!r} does not fit {len(encoders)} stream(s): use 'none' for exactly one")
        self.streams = tuple(encoders)
        self.fusion = fusion
        self.branches = nn.ModuleDict(
            {
                s: StreamBranch(enc, vocab_size, hidden, lstm_layers, dropout, share_classifier)
                for s, enc in encoders.items()
            }
        )
        if fusion in ("early", "attention"):
            if fusion == "early":
                self.combine: nn.Module = nn.Sequential(
                    nn.Linear(len(encoders) * hidden, hidden), nn.ReLU(inplace=True)
                )
            else:
                self.combine = AttentionFusion(len(encoders), hidden)
            self.dropout = nn.Dropout(dropout)
            self.lstm = BiLSTM(hidden, hidden, lstm_layers, dropout)
            self.classifier = nn.Linear(hidden, vocab_size)
            self.conv_classifier = self.classifier if share_classifier else nn.Linear(hidden, vocab_size)

    def encode(self, stream: str, inputs: dict[str, Tensor], lengths: Tensor) -> Tensor:
        """Frame features [B, T, D] of one stream (T padded to at least 4 frames)."""
        enc = self.branches[stream].encoder
        if stream == "keypoints":
            return enc(pad_min_time(inputs["keypoints"]), pad_min_time(inputs["keypoints_mask"]), lengths)
        return enc(pad_min_time(inputs[stream]), lengths)

    def forward(self, inputs: dict[str, Tensor], lengths: Tensor) -> ModelOutput:
        """Args:
            inputs: "rgb" [B, T, 3, H, W] in [0, 1]; "keypoints" [B, T, K, 3] + "keypoints_mask"
                [B, T, K] bool; "flow" [B, T, 2, h, w] in pixels (only the configured streams).
            lengths: [B] valid frames.

        Returns:
            ModelOutput with the levels and features listed in the module docstring.
        """
        lengths = lengths.to(inputs[self.streams[0]].device)  # masks are built next to the features
        logits: dict[str, Tensor] = {}
        feats: dict[str, Tensor] = {}
        outs: dict[str, dict[str, Tensor]] = {}
        for s in self.streams:
            frame = self.encode(s, inputs, lengths)  # [B, T, D_s]
            outs[s] = self.branches[s](frame, lengths)
            feats[f"frame_{s}"] = frame[:, : inputs[s].shape[1]]  # drop the padding of clips under 4 frames
            feats[f"temporal_{s}"] = outs[s]["temporal"]
            feats[f"context_{s}"] = outs[s]["context"]
        out_lengths = outs[self.streams[0]]["out_lengths"]

        if self.fusion == "none":
            (s,) = self.streams
            logits["main"], logits["conv_main"] = outs[s]["logits"], outs[s]["conv_logits"]
            for key in ("frame", "temporal", "context"):
                feats[key] = feats[f"{key}_{s}"]
            return ModelOutput(logits=logits, out_lengths=out_lengths, features=feats)

        for s in self.streams:
            logits[s], logits[f"conv_{s}"] = outs[s]["logits"], outs[s]["conv_logits"]
        feats["frame"] = torch.cat([feats[f"frame_{s}"] for s in self.streams], dim=-1)  # [B, T, sum D_s]
        temporals = [outs[s]["temporal"] for s in self.streams]  # S x [B, T', H]
        if self.fusion == "late":
            logits["main"] = log_mean_posteriors([outs[s]["logits"] for s in self.streams])
            logits["conv_main"] = log_mean_posteriors([outs[s]["conv_logits"] for s in self.streams])
            feats["temporal"] = torch.stack(temporals, dim=0).mean(dim=0)  # [B, T', H]
            feats["context"] = torch.stack([outs[s]["context"] for s in self.streams], dim=0).mean(dim=0)
            return ModelOutput(logits=logits, out_lengths=out_lengths, features=feats)

        if self.fusion == "early":
            fused = self.combine(torch.cat(temporals, dim=-1))  # [B, T', S*H] -> [B, T', H]
        else:
            fused, weights = self.combine(torch.stack(temporals, dim=2))  # [B, T', S, H] -> [B, T', H]
            feats["attention"] = weights
        # padded steps stay zero, like every other temporal feature
        fused = fused * length_mask(out_lengths, fused.shape[1]).unsqueeze(-1).to(fused.dtype)
        context = self.lstm(self.dropout(fused), out_lengths)  # [B, T', H]
        feats["temporal"], feats["context"] = fused, context
        logits["main"] = self.classifier(context)
        logits["conv_main"] = self.conv_classifier(fused)
        return ModelOutput(logits=logits, out_lengths=out_lengths, features=feats)
