"""Corpus writing: plan every utterance, render it, and write the corpus folder atomically."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preprocess import layouts
from preprocess.synthsign.camera import render_video
from preprocess.synthsign.config import FORMAT_VERSION, SPLIT_NAMES, SynthConfig
from preprocess.synthsign.detector import detect
from preprocess.synthsign.lexicon import Gloss, Grammar, build_lexicon, minimal_pairs
from preprocess.synthsign.motion import plan_utterance
from preprocess.synthsign.signer import Signer, make_signer
from preprocess.synthsign.skeleton import skeleton


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Compressed npz with fixed zip timestamps: the same arrays always give the same bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)


@dataclass(frozen=True)
class _Item:
    id: str
    split: str
    signer: int
    glosses: tuple[str, ...]


def plan_corpus(cfg: SynthConfig) -> list[_Item]:
    """Every utterance's id, split, signer and sentence (cheap; no rendering)."""
    lexicon = build_lexicon(cfg.seed, cfg.num_glosses)
    grammar = Grammar(lexicon, cfg.seed)
    seen_signers = cfg.num_signers - cfg.heldout_signers
    sw = np.random.default_rng([cfg.seed, 14]).uniform(0.6, 1.4, size=cfg.num_signers)
    items: list[_Item] = []
    train_vocab: set[str] = set()
    counts = (cfg.num_train, cfg.num_dev, cfg.num_test)
    for si, (split, count) in enumerate(zip(SPLIT_NAMES, counts)):
        rng = np.random.default_rng([cfg.seed, 15, si])
        pool = np.arange(seen_signers) if split == "train" or not cfg.heldout_signers else \
            np.arange(seen_signers, cfg.num_signers)
        p = sw[pool] / sw[pool].sum()
        for i in range(count):
            words = grammar.sentence(rng, cfg.min_glosses, cfg.max_glosses)
            if split != "train":  # dev/test never need a gloss the train split lacks
                for _ in range(300):
                    if set(words) <= train_vocab:
                        break
                    words = grammar.sentence(rng, cfg.min_glosses, cfg.max_glosses)
            else:
                train_vocab.update(words)
            signer = int(pool[int(rng.choice(len(pool), p=p))])
            items.append(_Item(f"{split}_{i + 1:04d}", split, signer, tuple(words)))
    return items


def _render_item(item: _Item, split_index: int, index: int, cfg: SynthConfig, signers: list[Signer],
                 by_name: dict[str, Gloss], root: Path) -> dict[str, Any]:
    rng = np.random.default_rng([cfg.seed, 16, split_index, index])
    signer = signers[item.signer]
    state, spans = plan_utterance([by_name[w] for w in item.glosses], signer, cfg, rng)
    kp_clean = skeleton(state, signer, rng, cfg.difficulty)
    kp, mask = detect(kp_clean, cfg, np.random.default_rng([cfg.seed, 17, split_index, index]))
    write_npz(root / "keypoints" / f"{item.id}.npz", {"keypoints": kp, "mask": mask})
    render_video(root / "videos" / f"{item.id}.mp4", kp_clean, signer, cfg,
                 np.random.default_rng([cfg.seed, 18, split_index, index]))
    return {"id": item.id, "num_frames": len(kp), "spans": [[g, s, e] for g, s, e in spans],
            "hand_seen": [float(mask[:, layouts.RIGHT_HAND[0]].mean()), float(mask[:, layouts.LEFT_HAND[0]].mean())]}


def _config_record(cfg: SynthConfig) -> dict[str, Any]:
    return {"generator": "synthsign", "format_version": FORMAT_VERSION, "config": cfg.to_dict()}


def is_complete(out: str | os.PathLike, cfg: SynthConfig) -> bool:
    """True when ``out`` holds a finished corpus generated with exactly ``cfg``."""
    out = Path(out)
    try:
        meta = json.loads((out / "synthsign.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    record = _config_record(cfg)
    return (out / ".done").is_file() and all(meta.get(k) == v for k, v in record.items())


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("synthsign {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), transient=False)


def generate(cfg: SynthConfig, out: str | os.PathLike, progress: bool = True) -> Path:
    """Generate the corpus into ``out`` (idempotent) and return its path.

    A folder already holding a finished corpus of the same config is returned untouched. A
    synthsign folder of another config (or an unfinished one) is replaced: the new corpus is
    written into a temporary sibling folder and swapped in only once complete, so an
    interrupted run never leaves a half-written corpus under ``out``. A non-empty folder that
    is not a synthsign corpus is refused rather than deleted.
    """
    out = Path(out)
    if is_complete(out, cfg):
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "synthsign.json").exists())):
        raise FileExistsError(f"{out}: exists and is not a synthsign corpus; pass another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the corpus is an ordinary folder
        _write_corpus(cfg, tmp, progress)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "corpus")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_corpus(cfg: SynthConfig, root: Path, progress: bool) -> None:
    started = time.perf_counter()
    (root / "videos").mkdir()
    (root / "keypoints").mkdir()
    lexicon = build_lexicon(cfg.seed, cfg.num_glosses)
    by_name = {g.name: g for g in lexicon}
    signers = [make_signer(cfg.seed, i) for i in range(cfg.num_signers)]
    items = plan_corpus(cfg)
    split_index = {s: i for i, s in enumerate(SPLIT_NAMES)}
    results = []
    bar = _progress(progress)
    task = bar.add_task("rendering", total=len(items)) if bar else None
    if bar:
        bar.start()
    try:
        for item in items:
            index = int(item.id.rsplit("_", 1)[1]) - 1
            results.append(_render_item(item, split_index[item.split], index, cfg, signers, by_name, root))
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()
    # num_frames spares the reader opening every keypoint file to count frames (fast re-runs)
    frames_of = {r["id"]: r["num_frames"] for r in results}
    rows = ["id|split|signer|glosses|video|fps|num_frames"]
    rows += [f"{it.id}|{it.split}|{signers[it.signer].name}|{' '.join(it.glosses)}|videos/{it.id}.mp4|{cfg.fps}|"
             f"{frames_of[it.id]}" for it in items]
    (root / "corpus.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "alignments.jsonl").write_text(
        "".join(json.dumps({"id": r["id"], "num_frames": r["num_frames"], "spans": r["spans"]}) + "\n"
                for r in results), encoding="utf-8")
    frames = np.array([r["num_frames"] for r in results])
    seen = np.array([r["hand_seen"] for r in results])
    weights = frames / frames.sum()
    meta = {
        **_config_record(cfg),
        "layout": layouts.HOLISTIC_543,
        "dominant_hand": "right",
        "lexicon": [asdict(g) for g in lexicon],
        "minimal_pairs": [[a.name, b.name, kind] for a, b, kind in minimal_pairs(lexicon)],
        "signers": [asdict(s) for s in signers],
        "stats": {
            "utterances": {s: sum(it.split == s for it in items) for s in SPLIT_NAMES},
            "frames_total": int(frames.sum()),
            "frames_mean": round(float(frames.mean()), 2),
            "frames_min": int(frames.min()),
            "frames_max": int(frames.max()),
            "right_hand_detected": round(float(weights @ seen[:, 0]), 4),
            "left_hand_detected": round(float(weights @ seen[:, 1]), 4),
            "seconds": round(time.perf_counter() - started, 1),
        },
    }
    (root / "synthsign.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (root / ".done").write_text(f"{len(items)} utterances\n", encoding="utf-8")
