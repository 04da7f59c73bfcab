"""Model configuration and the one factory every trainer, checkpoint and export uses.

A checkpoint stores ``ModelConfig.to_dict()``, the vocabulary size and the ``InputSpec``;
``build_model`` rebuilds the exact same network from those three.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from models.base import STREAMS, InputSpec
from models.encoders import RGB_BACKBONES, FlowEncoder, KeypointEncoder, RGBEncoder
from models.fusion import FUSIONS, CSLRModel
from models.keypoint_input import KeypointNormConfig
from preprocess.configs import from_dict
from preprocess.layouts import SUBSETS, subset_indices

TEMPORALS = ("conv_bilstm",)  # "tscm" (CRKD hybrid convolution) is planned, not built yet


@dataclass(frozen=True)
class ModelConfig:
    streams: tuple[str, ...] = ("keypoints",)  # subset of STREAMS, in fusion order
    fusion: str = "none"  # "none" (exactly one stream) | "early" | "late" | "attention"
    rgb_backbone: str = "resnet18"  # "resnet18" | "resnet34" | "resnet50" | "tiny" (small CNN for CPU demos)
    # ImageNet weights: a local torchvision state-dict path, "imagenet" (torchvision's file in the torch
    # hub cache) or None (random init, warned once)
    rgb_pretrained: str | None = None
    tiny_channels: int = 16  # width of the first "tiny" CNN layer (doubles per layer; frame feature = 8x this)
    keypoint_subset: str = "all"  # preprocess.layouts subset name ("mediapipe_92", ...) or "all"
    keypoint_dim: int = 256  # width of the per-frame keypoint MLP
    # keypoint normalisation (models.keypoint_input): centre, reference point, scale, motion features
    keypoint_center: str = "auto"  # "auto" | "mean" | "point" | "none"
    keypoint_center_point: int = -1  # index of the centre point in the cached layout (center "point")
    keypoint_scale: str = "auto"  # "auto" | "frame" | "utterance" | "none"
    keypoint_deltas: int = 0  # 1: + velocity, 2: + velocity and acceleration
    flow_channels: int = 16  # width of the first flow CNN layer (doubles per layer; frame feature = 4x this)
    temporal: str = "conv_bilstm"  # temporal model: K5-P2-K5-P2 conv block + BiLSTM
    hidden: int = 256  # width of the conv block and of the BiLSTM output (even: two directions)
    lstm_layers: int = 2  # BiLSTM layers
    dropout: float = 0.1  # dropout on frame/temporal features and between LSTM layers
    share_classifier: bool = False  # SMKD: conv level and BiLSTM level share the classifier weights

    def __post_init__(self) -> None:
        streams = tuple(self.streams)
        object.__setattr__(self, "streams", streams)  # tolerate lists from YAML/JSON
        if not streams:
            raise ValueError("streams is empty; give at least one of ('rgb', 'keypoints', 'flow')")
        bad = [s for s in streams if s not in STREAMS]
        if bad:
            raise ValueError(f"unknown stream(s) {bad}; choose from {STREAMS}")
        if len(set(streams)) != len(streams):
            raise ValueError(f"streams {list(streams)} repeats a stream")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; choose one of {FUSIONS}")
        if len(streams) == 1 and self.fusion != "none":
            raise ValueError(
                f"fusion {self.fusion!r} needs several streams; use fusion 'none' for streams {list(streams)}"
            )
        if len(streams) > 1 and self.fusion == "none":
            raise ValueError(f"streams {list(streams)} need a fusion ('early', 'late' or 'attention'), got 'none'")
        if self.rgb_backbone not in RGB_BACKBONES:
            raise ValueError(f"unknown rgb_backbone {self.rgb_backbone!r}; choose one of {RGB_BACKBONES}")
        if self.rgb_pretrained is not None and (not isinstance(self.rgb_pretrained, str) or not self.rgb_pretrained):
            raise ValueError(f"rgb_pretrained must be a file path, 'imagenet' or None, got {self.rgb_pretrained!r}")
        if self.rgb_pretrained is not None and self.rgb_backbone == "tiny":
            raise ValueError(
                f"rgb_pretrained={self.rgb_pretrained!r} given for rgb_backbone 'tiny', which has no ImageNet weights"
            )
        if self.keypoint_subset != "all" and self.keypoint_subset not in SUBSETS:
            raise ValueError(
                f"unknown keypoint_subset {self.keypoint_subset!r}; choose 'all' or one of {sorted(SUBSETS)}"
            )
        self.keypoint_norm()  # validates the keypoint_* normalisation fields
        if self.temporal not in TEMPORALS:
            raise ValueError(f"unknown temporal {self.temporal!r}; available: {TEMPORALS}")
        for name in ("tiny_channels", "keypoint_dim", "flow_channels", "hidden", "lstm_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden % 2:
            raise ValueError(f"hidden must be even (BiLSTM directions split it), got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.share_classifier, bool):
            raise ValueError(f"share_classifier must be true or false, got {self.share_classifier!r}")

    def keypoint_norm(self) -> KeypointNormConfig:
        return KeypointNormConfig(self.keypoint_center, self.keypoint_center_point, self.keypoint_scale,
                                  self.keypoint_deltas)

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        """Config from a plain dict (YAML/JSON/checkpoint); unknown keys are refused, not ignored."""
        return from_dict(ModelConfig, d, what="model config key(s)")

    def to_dict(self) -> dict:
        """Plain dict (lists, not tuples) that YAML/JSON and ``from_dict`` round-trip."""
        d = asdict(self)
        d["streams"] = list(self.streams)
        return d


def _check_spec(cfg: ModelConfig, spec: InputSpec) -> None:
    need = {"rgb": spec.rgb_size, "keypoints": spec.num_keypoints, "flow": spec.flow_size}
    field_of = {"rgb": "rgb_size", "keypoints": "num_keypoints", "flow": "flow_size"}
    for s in cfg.streams:
        if need[s] <= 0:
            raise ValueError(
                f"model stream {s!r} needs {s} in the cache, but the cache has none ({field_of[s]}={need[s]}); "
                f"rebuild the cache with {s} or drop {s!r} from streams"
            )


def build_encoder(stream: str, cfg: ModelConfig, spec: InputSpec) -> nn.Module:
    """Frame encoder of one stream, sized from the config and the cache's ``InputSpec``."""
    if stream == "rgb":
        return RGBEncoder(cfg.rgb_backbone, cfg.rgb_pretrained, cfg.tiny_channels)
    if stream == "keypoints":
        idx = subset_indices(spec.keypoint_layout, cfg.keypoint_subset, spec.num_keypoints)
        return KeypointEncoder(idx.tolist(), spec.keypoint_layout, cfg.keypoint_dim, cfg.dropout,
                               num_points=spec.num_keypoints, norm=cfg.keypoint_norm())
    if stream == "flow":
        return FlowEncoder(cfg.flow_channels)
    raise ValueError(f"unknown stream {stream!r}; choose from {STREAMS}")


def build_model(cfg: ModelConfig, vocab_size: int, spec: InputSpec) -> nn.Module:
    """The network ``cfg`` describes, for a vocabulary of ``vocab_size`` (blank included) and the cache ``spec``."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (blank + at least one gloss), got {vocab_size}")
    _check_spec(cfg, spec)
    encoders = {s: build_encoder(s, cfg, spec) for s in cfg.streams}
    return CSLRModel(
        encoders,
        vocab_size,
        fusion=cfg.fusion,
        hidden=cfg.hidden,
        lstm_layers=cfg.lstm_layers,
        dropout=cfg.dropout,
        share_classifier=cfg.share_classifier,
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors, e.g. an SMKD shared classifier, counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ExportWrapper(nn.Module):
    """Positional-tensor view of a model for ONNX: ``(*inputs, lengths) -> (logits[level], out_lengths)``.

    Args:
        model: a ``models.base`` contract model.
        input_names: names of the ``inputs`` dict entries, in positional order.
        level: logits level to export (default "main").
    """

    def __init__(self, model: nn.Module, input_names: tuple[str, ...], level: str = "main") -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.level = level
        self.train(model.training)  # torch.onnx.export restores the wrapper's mode onto the model afterwards

    def forward(self, *args: Tensor) -> tuple[Tensor, Tensor]:
        *tensors, lengths = args
        out = self.model(dict(zip(self.input_names, tensors)), lengths)
        return out.logits[self.level], out.out_lengths
