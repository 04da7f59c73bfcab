"""Student models (the same forward contract as the teachers).

Three students, all under the ``models.base`` contract (``forward(inputs, lengths) ->
ModelOutput`` with logits "main" (+ "conv_main") and features "frame" [B, T, D], "temporal"
and "context" [B, T // 4, D]):

- ``LandmarkStudent`` (KD-MSLRT's 1D student): MediaPipe landmarks (the 92-point subset or
  any K) -> per-frame linear embedding of (x, y, z, mask) -> K5-P2-K5-P2 temporal convs
  (T -> T // 4) -> a small transformer encoder -> classifier shared by the conv and the
  transformer levels. Under 1 M parameters, written with plain ops so it exports to ONNX with
  a dynamic time axis and quantises to int8 under 2 MB.
- ``RGBStudent``: a tiny per-frame CNN -> K5-P2-K5-P2 -> BiLSTM (VAC/SMKD layout, small).
- LRINet (``models.lrinet``), CRKD's low-resolution student.

``build_student(cfg, vocab_size, spec)`` builds any of them and refuses, with one clear
message, a student that cannot take the cache's inputs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.augment import LandmarkAugment, LandmarkAugmentConfig  # noqa: F401 - still importable from here
from models.base import InputSpec, ModelOutput
from models.encoders import RGBEncoder
from models.keypoint_input import KeypointInput, KeypointNormConfig
from models.lrinet import LRINet, LRINetConfig
from models.temporal import BiLSTM, TemporalConv, length_mask, pad_min_time
from preprocess.configs import from_dict
from preprocess.layouts import SUBSETS, subset_indices

STUDENT_KINDS = ("landmark", "rgb", "lrinet")


@dataclass(frozen=True)
class StudentConfig:
    """Which student and its sizes; saved in checkpoints so ``build_student`` rebuilds it."""

    kind: str = "landmark"  # "landmark" (1D landmark student) | "rgb" (tiny CNN + BiLSTM) | "lrinet" (CRKD)
    keypoint_subset: str = "mediapipe_92"  # landmark: preprocess.layouts subset, or "all" (custom layouts)
    dim: int = 128  # landmark: model width (embedding, temporal convs, transformer)
    layers: int = 2  # landmark: transformer encoder layers
    heads: int = 4  # landmark: attention heads (dim must divide by it)
    ff_dim: int = 512  # landmark: transformer feed-forward width
    kernel_size: int = 5  # landmark/rgb: temporal conv kernel (K5-P2-K5-P2)
    rgb_channels: int = 16  # rgb: first conv width of the tiny CNN (doubles per layer; frame feature 8x)
    hidden: int = 256  # rgb: temporal conv / BiLSTM width (even)
    lstm_layers: int = 1  # rgb: BiLSTM layers
    input_size: int = 72  # lrinet: input side r (56, 72, 88, 104); other cached sizes are resized
    grad_stop_p: float = 0.0  # lrinet: CRKD stochastic gradient stopping probability per frame
    lrinet_width: float = 1.0  # lrinet: channel-width multiplier (1.0 is the paper's card; CPU scale e.g. 1/16)
    lrinet_stem_repeats: int = 3  # lrinet: split-kernel (1x3, 3x1) pairs per stem stage (paper: 3)
    dropout: float = 0.1  # dropout inside the student
    # landmark: keypoint normalisation (models.keypoint_input): centre, reference point, scale, motion
    keypoint_center: str = "auto"  # "auto" | "mean" | "point" | "none"
    keypoint_center_point: int = -1  # index of the centre point in the cached layout (center "point")
    keypoint_scale: str = "auto"  # "auto" | "frame" | "utterance" | "none"
    keypoint_deltas: int = 0  # 1: + velocity, 2: + velocity and acceleration

    def __post_init__(self) -> None:
        self.keypoint_norm()  # validates the keypoint_* fields
        if self.kind not in STUDENT_KINDS:
            raise ValueError(f"unknown student kind {self.kind!r}; choose one of {STUDENT_KINDS}")
        if self.keypoint_subset != "all" and self.keypoint_subset not in SUBSETS:
            raise ValueError(f"unknown keypoint_subset {self.keypoint_subset!r}; choose 'all' or one of {sorted(SUBSETS)}")
        for name in ("dim", "layers", "heads", "ff_dim", "rgb_channels", "hidden", "lstm_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"student {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"student dim {self.dim} is not divisible by heads {self.heads}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"student kernel_size must be odd and >= 1, got {self.kernel_size}")
        if self.hidden % 2:
            raise ValueError(f"student hidden must be even (BiLSTM directions), got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"student dropout must be in [0, 1), got {self.dropout}")
        if self.kind == "lrinet":
            self.lrinet_config()  # validates the LRINet fields
        elif (self.lrinet_width, self.lrinet_stem_repeats) != (1.0, 3):
            raise ValueError(f"lrinet_width and lrinet_stem_repeats apply to kind 'lrinet' only, not {self.kind!r}")

    def keypoint_norm(self) -> KeypointNormConfig:
        return KeypointNormConfig(self.keypoint_center, self.keypoint_center_point, self.keypoint_scale,
                                  self.keypoint_deltas)

    def lrinet_config(self) -> LRINetConfig:
        return LRINetConfig(input_size=self.input_size, grad_stop_p=self.grad_stop_p, dropout=self.dropout,
                            width=float(self.lrinet_width), stem_repeats=int(self.lrinet_stem_repeats))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "StudentConfig":
        return from_dict(StudentConfig, d, what="student option(s)")


def sinusoidal_positions(steps: int, dim: int, device: torch.device | None = None) -> Tensor:
    """[steps, dim] sine/cosine position codes (Vaswani et al.); built per call, any length."""
    pos = torch.arange(steps, device=device, dtype=torch.float32).unsqueeze(1)  # [T, 1]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))  # [dim/2]
    angles = pos * freq  # [T, dim/2]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(steps, -1)[:, :dim]  # interleave -> [T, dim]


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with a key-padding mask, in plain exportable ops."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_valid: Tensor) -> Tensor:
        """Args:
            x: [B, T, D].
            key_valid: [B, T] bool, False on padded steps (never attended to).

        Returns:
            [B, T, D].
        """
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, H, T, dh]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # [B, H, T, T]
        scores = scores.masked_fill(~key_valid[:, None, None, :], -1e4)
        attn = torch.matmul(scores.softmax(dim=-1), v)  # [B, H, T, dh]
        attn = attn.transpose(1, 2).reshape(b, t, d)  # [B, T, H * dh]
        x = x + self.dropout(self.out(attn))
        return x + self.dropout(self.ff(self.norm2(x)))


class LandmarkStudent(nn.Module):
    """KD-MSLRT 1D landmark student: embedding -> K5-P2-K5-P2 -> transformer -> shared classifier.

    Args:
        vocab_size: classes including the blank (index 0).
        indices: the K' points (into the cached layout) the model reads.
        layout: the cache's layout name (holistic: shoulder-based normalisation).
    """

    def __init__(self, vocab_size: int, indices: Tensor | list[int] | np.ndarray, layout: str,
                 cfg: StudentConfig = StudentConfig(), num_points: int | None = None) -> None:
        super().__init__()
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.input = KeypointInput(idx, layout, int(num_points or int(idx.max()) + 1), cfg.keypoint_norm())
        self.embed = nn.Sequential(nn.Linear(self.input.out_dim, cfg.dim), nn.LayerNorm(cfg.dim), nn.ReLU(inplace=True))
        self.dim = cfg.dim
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv = TemporalConv(cfg.dim, cfg.dim, cfg.kernel_size)
        self.layers = nn.ModuleList(EncoderLayer(cfg.dim, cfg.heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.classifier = nn.Linear(cfg.dim, vocab_size)

    @property
    def indices(self) -> Tensor:
        """[K'] the points of the cached layout the student reads."""
        return self.input.indices

    def forward(self, inputs: dict[str, Tensor], lengths: Tensor) -> ModelOutput:
        """Args:
            inputs: "keypoints" [B, T, K, 3] raw cache coordinates (x, y in [0, 1]; NaN allowed
                where missing) and "keypoints_mask" [B, T, K] bool (optional: finite points).
            lengths: [B] valid frames.

        Returns:
            ModelOutput: logits "main" (transformer) and "conv_main" (conv block) [B, T // 4, V];
            features "frame" [B, T, D], "temporal" and "context" [B, T // 4, D].
        """
        kp, mask = self.input.take(inputs["keypoints"], inputs.get("keypoints_mask"))  # [B, T, P, 3], [B, T, P]
        t_in = kp.shape[1]
        kp, mask = pad_min_time(kp), pad_min_time(mask)
        t = kp.shape[1]
        x = self.input.features(kp, mask, lengths)  # [B, T, K' * channels]
        frame = self.embed(x) * length_mask(lengths, t).unsqueeze(-1).to(x.dtype)  # [B, T, D]

        temporal, out_lengths = self.conv(self.dropout(frame), lengths)  # [B, T', D]
        valid = length_mask(out_lengths, temporal.shape[1])  # [B, T']
        h = temporal + sinusoidal_positions(temporal.shape[1], self.dim, temporal.device).unsqueeze(0)
        for layer in self.layers:
            h = layer(self.dropout(h), valid)
        context = self.norm(h) * valid.unsqueeze(-1).to(h.dtype)  # [B, T', D]
        logits = {"main": self.classifier(context), "conv_main": self.classifier(temporal)}
        feats = {"frame": frame[:, :t_in], "temporal": temporal, "context": context}
        return ModelOutput(logits=logits, out_lengths=out_lengths, features=feats)


class RGBStudent(nn.Module):
    """Small RGB-only student: tiny per-frame CNN -> K5-P2-K5-P2 -> BiLSTM, shared classifier (SMKD)."""

    def __init__(self, vocab_size: int, cfg: StudentConfig = StudentConfig(kind="rgb")) -> None:
        super().__init__()
        self.encoder = RGBEncoder("tiny", tiny_channels=cfg.rgb_channels)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv = TemporalConv(self.encoder.out_dim, cfg.hidden, cfg.kernel_size)
        self.lstm = BiLSTM(cfg.hidden, cfg.hidden, cfg.lstm_layers, cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, vocab_size)

    def forward(self, inputs: dict[str, Tensor], lengths: Tensor) -> ModelOutput:
        """Args:
            inputs: "rgb" [B, T, 3, H, W] float in [0, 1] (any H, W >= 16).
            lengths: [B] valid frames.

        Returns:
            ModelOutput: logits "main" (BiLSTM), "conv_main" [B, T // 4, V]; features
            "frame" [B, T, 8 * rgb_channels], "temporal", "context" [B, T // 4, hidden].
        """
        rgb = inputs["rgb"]
        frame = self.encoder(pad_min_time(rgb), lengths)  # [B, T, D]
        temporal, out_lengths = self.conv(self.dropout(frame), lengths)  # [B, T', H]
        context = self.lstm(self.dropout(temporal), out_lengths)  # [B, T', H]
        logits = {"main": self.classifier(context), "conv_main": self.classifier(temporal)}
        feats = {"frame": frame[:, : rgb.shape[1]], "temporal": temporal, "context": context}
        return ModelOutput(logits=logits, out_lengths=out_lengths, features=feats)


def build_student(cfg: StudentConfig, vocab_size: int, spec: InputSpec) -> nn.Module:
    """The student ``cfg`` describes, for a cache whose inputs ``spec`` describes.

    Raises:
        ValueError: (one line naming the fix) when the cache lacks the student's input,
            e.g. an RGB student on a keypoint-only corpus, or a subset the layout lacks.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (blank + one gloss), got {vocab_size}")
    if cfg.kind == "landmark":
        if spec.num_keypoints <= 0:
            raise ValueError(
                "student kind 'landmark' needs keypoints but the cache has none; "
                "extract landmarks (make features) or choose an rgb/lrinet student"
            )
        indices = subset_indices(spec.keypoint_layout, cfg.keypoint_subset, spec.num_keypoints)
        return LandmarkStudent(vocab_size, indices, spec.keypoint_layout, cfg, num_points=spec.num_keypoints)
    if spec.rgb_size <= 0:
        raise ValueError(
            f"student kind {cfg.kind!r} needs RGB frames but the cache has none (keypoint-only corpus?); "
            "cache rgb in make features or choose the landmark student"
        )
    if cfg.kind == "rgb":
        return RGBStudent(vocab_size, cfg)
    return LRINet(vocab_size, cfg.lrinet_config())
