"""The generator's settings: ``SynthConfig``, its size presets and the corpus format constants."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from preprocess.synthsign.lexicon import max_vocabulary


FORMAT_VERSION = 1
NUM_POINTS = 543  # MediaPipe Holistic: pose 33 + face 468 + left hand 21 + right hand 21
SPLIT_NAMES = ("train", "dev", "test")


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0  # everything (lexicon, sentences, signers, noise) derives from this
    num_train: int = 400  # utterances in the train split
    num_dev: int = 60  # utterances in the dev split
    num_test: int = 60  # utterances in the test split
    num_glosses: int = 20  # vocabulary size (time words, subjects, objects, verbs, negation)
    num_signers: int = 5  # distinct rendered signers
    heldout_signers: int = 0  # the last k signers appear only in dev/test (signer-independent)
    min_glosses: int = 2  # shortest sentence, in glosses
    max_glosses: int = 5  # longest sentence, in glosses
    frames_per_gloss: float = 7.0  # mean frames of one gloss's own movement at tempo 1
    frame_size: int = 128  # square video side in pixels (even, for the mp4v encoder)
    fps: int = 25  # video frame rate
    difficulty: float = 0.5  # 0..1: detection/video noise, hand dropout, co-articulation, variation

    def __post_init__(self) -> None:
        def need_int(name: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ValueError(f"SynthConfig.{name}={v!r} must be an integer")
            if v < lo or (hi is not None and v > hi):
                bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"SynthConfig.{name}={v!r} must be {bound}")

        need_int("seed", 0)
        need_int("num_train", 1)
        need_int("num_dev", 0)
        need_int("num_test", 0)
        need_int("num_glosses", 3, max_vocabulary())
        need_int("num_signers", 1, 64)
        need_int("heldout_signers", 0, self.num_signers - 1)
        need_int("min_glosses", 1, 12)
        need_int("max_glosses", self.min_glosses, 12)
        need_int("frame_size", 32, 1024)
        need_int("fps", 1, 120)
        if self.frame_size % 2:
            raise ValueError(f"SynthConfig.frame_size={self.frame_size} must be even (mp4v encoder)")
        for name, lo, hi in (("frames_per_gloss", 3.0, 40.0), ("difficulty", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"SynthConfig.{name}={v!r} must be a finite number")
            if not lo <= v <= hi:
                raise ValueError(f"SynthConfig.{name}={v!r} must be in [{lo}, {hi}]")
        if self.heldout_signers and (self.num_dev + self.num_test) == 0:
            raise ValueError(f"SynthConfig.heldout_signers={self.heldout_signers} needs dev/test utterances")

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


PRESETS: dict[str, dict[str, Any]] = {
    # For tests: seconds to generate, small frames, short sentences.
    "tiny": dict(num_train=12, num_dev=4, num_test=4, num_glosses=8, num_signers=2,
                 min_glosses=2, max_glosses=3, frames_per_gloss=6.0, frame_size=64),
    # For `make demo`: every stage end to end in minutes on a laptop CPU.
    "demo": dict(num_train=200, num_dev=40, num_test=40, num_glosses=14, num_signers=4,
                 min_glosses=2, max_glosses=4),
    # The corpus the README's benchmarks and accuracy bars are measured on.
    "default": {},
}


def preset(name: str, **overrides: Any) -> SynthConfig:
    """The named preset with field overrides (e.g. ``preset("tiny", seed=3)``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown synthsign preset {name!r}; known: {sorted(PRESETS)}")
    return SynthConfig(**{**PRESETS[name], **overrides})
