"""Temporal modelling shared by every CSLR model: the VAC/SMKD 1D conv block and a BiLSTM.

Both are padding-invariant: the conv block zeroes features beyond each sequence's length
before every convolution, and the BiLSTM runs on packed sequences, so a clip gives the same
output alone or padded inside a batch (eval mode). Time shrinks by ``TIME_REDUCTION`` (4)
exactly as ``models.base.out_length`` says.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.base import TIME_REDUCTION, out_length


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Bool mask [B, max_len], True on the first ``lengths[b]`` steps of row b.

    Args:
        lengths: [B] valid steps per sequence.
        max_len: padded length T.
    """
    steps = torch.arange(max_len, device=lengths.device)  # [T]
    return steps.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def pad_min_time(x: Tensor, min_len: int = TIME_REDUCTION) -> Tensor:
    """Zero-pad dim 1 of ``x`` up to ``min_len`` steps so pooling leaves at least one step.

    Clips shorter than the time reduction would otherwise pool to zero steps while
    ``out_length`` promises one. Skipped while tracing (exports are traced on longer clips).
    """
    if _exporting() or x.shape[1] >= min_len:
        return x
    pad = x.new_zeros(x.shape[0], min_len - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], dim=1)


class TemporalConv(nn.Module):
    """K5-P2-K5-P2: two 'same'-padded 1D convolutions, each followed by BN, ReLU and max-pool 2.

    The output is the "visual"/"temporal" feature of VAC and SMKD; it feeds a conv-level CTC
    head and the BiLSTM.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 5) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(in_dim, out_dim, kernel_size, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(out_dim)
        self.conv2 = nn.Conv1d(out_dim, out_dim, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(out_dim)
        self.pool = nn.MaxPool1d(2)
        self.out_dim = out_dim

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            x: [B, T, C] frame features (T >= 4; see ``pad_min_time``).
            lengths: [B] valid frames.

        Returns:
            y: [B, T // 4, D], zero beyond each output length.
            out_lengths: [B] = ``out_length(lengths)``.
        """
        len1 = (lengths // 2).clamp(min=1)  # valid steps after the first pool
        len2 = out_length(lengths)  # after the second pool; equals (len1 // 2).clamp(min=1)
        h = x * length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)  # [B, T, C]
        h = h.transpose(1, 2)  # [B, C, T] for Conv1d
        h = self.pool(torch.relu(self.bn1(self.conv1(h))))  # [B, D, T // 2]
        h = h * length_mask(len1, h.shape[2]).unsqueeze(1).to(h.dtype)
        h = self.pool(torch.relu(self.bn2(self.conv2(h))))  # [B, D, T // 4]
        h = h * length_mask(len2, h.shape[2]).unsqueeze(1).to(h.dtype)
        return h.transpose(1, 2), len2  # [B, T // 4, D]


class BiLSTM(nn.Module):
    """Bidirectional LSTM over packed sequences; output width ``out_dim`` (out_dim // 2 per direction)."""

    def __init__(self, in_dim: int, out_dim: int, num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if out_dim % 2:
            raise ValueError(f"BiLSTM out_dim must be even (two directions), got {out_dim}")
        self.lstm = nn.LSTM(
            in_dim,
            out_dim // 2,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out_dim = out_dim

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Args:
            x: [B, T', C] features, T' >= max(lengths).
            lengths: [B] valid steps (>= 1).

        Returns:
            [B, T', out_dim], zero beyond each length.
        """
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])  # [B, T', out_dim]
        return y
