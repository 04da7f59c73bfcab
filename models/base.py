"""The one contract every model follows.

``forward(inputs: dict[str, Tensor], lengths: LongTensor[B]) -> ModelOutput``. Models are pure:
no loss and no decoding inside, so they export to ONNX and distillation reads their features.
Input names match the cache arrays: ``rgb`` float [B, T, 3, H, W] in [0, 1] (the model applies ImageNet mean/std),
``keypoints`` float [B, T, K, 3], ``keypoints_mask`` bool [B, T, K], ``flow`` float [B, T, 2, h, w].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the ONNX inference path reads this module without importing torch
    from torch import Tensor

TIME_REDUCTION = 4  # every model shortens time by this factor so posteriors align
STREAMS = ("rgb", "keypoints", "flow")  # model-facing input streams; keypoints also bring keypoints_mask


@dataclass
class ModelOutput:
    logits: dict[str, Tensor]  # level name -> [B, T', V]; "main" is the level that is decoded
    out_lengths: Tensor  # [B] valid output steps (shared by all levels)
    features: dict[str, Tensor] = field(default_factory=dict)  # name -> [B, T or T', D] for distillation

    @property
    def main(self) -> Tensor:
        return self.logits["main"]


def out_length(lengths: Tensor) -> Tensor:
    """Output length after the K5-P2-K5-P2 temporal block.

    Convolutions are 'same'-padded (features beyond each length are zeroed first, so padding
    in a batch never leaks into valid steps) and each max-pool halves time: T' = T // 4.
    """
    return (lengths // TIME_REDUCTION).clamp(min=1)


@dataclass(frozen=True)
class InputSpec:
    """What the cache offers a model; read from the cache's meta.json, saved in checkpoints."""

    num_keypoints: int = 0  # K of the cached keypoints (0: no keypoints)
    keypoint_layout: str = ""  # layout name from meta.json, e.g. "mediapipe_holistic_543"
    rgb_size: int = 0  # H == W of cached rgb (0: no rgb)
    flow_size: int = 0  # h == w of cached flow (0: no flow)

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams it offers, in ``STREAMS`` order."""
        size = {"rgb": self.rgb_size, "keypoints": self.num_keypoints, "flow": self.flow_size}
        return tuple(s for s in STREAMS if size[s])
