"""Gloss vocabulary: built from the training split, index 0 is the CTC blank.

It is saved beside the cache and inside every checkpoint and exported model, so a model can
always be checked against the data it is asked to read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from preprocess.configs import MissingEntryError
from preprocess.files import write_text_if_changed

BLANK = "<blank>"


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]  # tokens[0] is always the CTC blank

    def __post_init__(self) -> None:
        if not self.tokens or self.tokens[0] != BLANK:
            raise ValueError(f"vocabulary must start with {BLANK!r}, got {self.tokens[:1]}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")

    @staticmethod
    def build(sentences: Iterable[Sequence[str]]) -> "Vocabulary":
        glosses = sorted({g for s in sentences for g in s})
        return Vocabulary((BLANK, *glosses))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, glosses: Sequence[str], where: str = "") -> list[int]:
        idx = self.index
        missing = [g for g in glosses if g not in idx]
        if missing:
            raise MissingEntryError(
                f"{where or 'sentence'}: glosses not in the vocabulary: {missing[:5]} "
                "(the vocabulary is built from the training split; rebuild it or drop the utterance)"
            )
        return [idx[g] for g in glosses]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids if i != 0]

    def save(self, path: str | Path) -> None:
        write_text_if_changed(path, json.dumps({"tokens": list(self.tokens)}, ensure_ascii=False, indent=0))

    @staticmethod
    def load(path: str | Path) -> "Vocabulary":
        with open(path, encoding="utf-8") as f:
            return Vocabulary(tuple(json.load(f)["tokens"]))
