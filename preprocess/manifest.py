"""The one manifest format every dataset reader produces (JSONL, one utterance a line).

Readers differ per corpus; everything downstream (feature extraction, training, scoring)
only ever sees :class:`Utterance` records, so adding a corpus never touches the models.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from preprocess.configs import UserError
from preprocess.files import write_text_if_changed

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Utterance:
    id: str  # unique within the dataset; also the cache file stem
    split: str  # "train" | "dev" | "test"
    signer: str  # signer id as the release spells it ("" when unknown)
    glosses: list[str]  # gloss sequence, the CTC target (may be empty for unlabelled video)
    source: str | None  # video file or frame folder; None for keypoint-only corpora
    num_frames: int  # frames in the source (0 when unknown before decoding)
    keypoints: str | None = None  # pre-extracted keypoint file (.npy/.npz/.pose), if any
    fps: float = 25.0  # frame rate of the source
    extra: dict = field(default_factory=dict)  # corpus-specific fields (e.g. translation)
    width: int = 0  # frame width of the source in pixels (0 when unknown)
    height: int = 0  # frame height of the source in pixels (0 when unknown)

    def to_json(self) -> str:
        d = asdict(self)
        if not (self.width or self.height):  # unknown size: manifests of corpora without it stay as they were
            del d["width"], d["height"]
        return json.dumps(d, ensure_ascii=False)

    @staticmethod
    def from_dict(d: dict) -> "Utterance":
        return Utterance(
            id=d["id"], split=d["split"], signer=d.get("signer", ""),
            glosses=list(d.get("glosses", [])), source=d.get("source"),
            num_frames=int(d.get("num_frames", 0)), keypoints=d.get("keypoints"),
            fps=float(d.get("fps", 25.0)), extra=dict(d.get("extra", {})),
            width=int(d.get("width", 0)), height=int(d.get("height", 0)),
        )


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> None:
    utts = list(utts)
    ids = [u.id for u in utts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise UserError(f"duplicate utterance ids {dup}: ids must be unique within a dataset; "
                        "fix the corpus annotation (the manifest was not written)")
    write_text_if_changed(path, "".join(u.to_json() + "\n" for u in utts))


def read_manifest(path: str | os.PathLike, split: str | None = None) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run `make features` first")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                u = Utterance.from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path}:{n}: malformed manifest line ({e})") from None
            if split is None or u.split == split:
                out.append(u)
    return out
