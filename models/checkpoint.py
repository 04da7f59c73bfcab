"""Checkpoints that rebuild their own model and refuse data they were not trained for.

A checkpoint is a plain dict saved with ``torch.save``: ``model_config`` (ModelConfig dict),
``input_spec`` (InputSpec dict), ``vocab`` (tokens), ``cache`` (dataset, extractor config and
its hash), ``streams``, ``crop_size``, ``model`` (state dict), and for training also
``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step``, ``rng``, ``best_wer``. It
holds only tensors and plain Python values, so it loads with ``weights_only=True``.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models.base import InputSpec
from models.data import meta_config
from preprocess import cache as cache_lib
from preprocess.configs import write_error
from preprocess.vocab import Vocabulary

CHECKPOINT_FORMAT = 1

# Extractor settings each stream depends on: a model is only refused for what it reads.
STREAM_KEYS = {
    "keypoints": ("keypoint_layout", "num_keypoints"),
    "rgb": ("rgb_size",),
    "flow": ("flow_size", "flow_scale", "flow_method"),
}


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Save ``state`` via a temp file in the same folder + rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and _is_write_failure(e)):
            raise write_error(path, e, "checkpoint (the previous one is intact; rerun with --resume)") from e
        raise


def _is_write_failure(e: RuntimeError) -> bool:
    """torch.save reports a failed write as a RuntimeError from its zip writer."""
    text = str(e)
    return "inline_container" in text or "file write failed" in text or "unexpected pos" in text


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files of checkpoint writes that a killed run left in ``folder``.

    ``save_checkpoint`` writes ``.<name>.<random>.tmp`` beside the target; one found at the
    start of a run belongs to a process that no longer exists.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.pt.*tmp"):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict; a missing or corrupt file gives one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; train one with `make teacher` first")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a truncated/foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); "
                         "retrain or restore it") from None
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a signdistill checkpoint (no model_config/model entries)")
    return ckpt


def spec_to_dict(spec: InputSpec) -> dict[str, Any]:
    return asdict(spec)


def is_student(ckpt: Mapping[str, Any]) -> bool:
    """Students (``models.students.StudentConfig``) are told apart by the ``kind`` in their config."""
    return "student_config" in ckpt or "kind" in ckpt["model_config"]


def checkpoint_streams(ckpt: Mapping[str, Any]) -> list[str]:
    """Model streams a checkpoint reads (saved by the trainers; inferred for older files)."""
    if ckpt.get("streams"):
        return list(ckpt["streams"])
    if is_student(ckpt):
        kind = dict(ckpt.get("student_config") or ckpt["model_config"]).get("kind", "landmark")
        return ["keypoints"] if kind == "landmark" else ["rgb"]
    return list(ckpt["model_config"].get("streams") or ["keypoints"])


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a teacher or student from its own saved config, input spec and vocabulary size; eval mode."""
    ckpt = load_checkpoint(path, "cpu")
    spec = InputSpec(**ckpt["input_spec"])
    # The saved state dict holds every weight: ImageNet initialisation is neither needed nor
    # wanted (its file may not exist where the model is evaluated), nor its random-init warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if is_student(ckpt):
            from models.students import StudentConfig, build_student

            cfg = StudentConfig.from_dict(dict(ckpt.get("student_config") or ckpt["model_config"]))
            model = build_student(cfg, len(ckpt["vocab"]), spec)
        else:
            from models.build import ModelConfig, build_model  # lazy: building pulls torchvision

            cfg = replace(ModelConfig.from_dict(ckpt["model_config"]), rgb_pretrained=None)
            model = build_model(cfg, len(ckpt["vocab"]), spec)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, ckpt


def check_compatible(ckpt: Mapping[str, Any], cache_root: str | os.PathLike, dataset: str,
                     ckpt_name: str = "the checkpoint") -> None:
    """Refuse a cache whose vocabulary or extractor configuration differs from the checkpoint's.

    Raises ValueError with one line naming both sides (``ckpt_name``, usually its path) and the fix.
    """
    ddir = cache_lib.dataset_dir(cache_root, dataset)
    vocab_path = ddir / "vocab.json"
    if not vocab_path.is_file():
        raise FileNotFoundError(f"{vocab_path}: no vocabulary; run `make features DATASET={dataset}` first")
    cache_vocab = Vocabulary.load(vocab_path).tokens
    ck_vocab = tuple(ckpt["vocab"])
    if cache_vocab != ck_vocab:
        diff = next((i for i, (a, b) in enumerate(zip(ck_vocab, cache_vocab)) if a != b),
                    min(len(ck_vocab), len(cache_vocab)))
        a = ck_vocab[diff] if diff < len(ck_vocab) else "<end>"
        b = cache_vocab[diff] if diff < len(cache_vocab) else "<end>"
        raise ValueError(
            f"vocabulary mismatch: {ckpt_name} has {len(ck_vocab)} tokens but {vocab_path} has "
            f"{len(cache_vocab)} (first difference at index {diff}: {a!r} vs {b!r}); evaluate on the "
            "cache the model was trained on, or retrain the model on this cache"
        )
    meta = cache_lib.read_meta(cache_root, dataset)
    have = meta_config(meta)
    want = dict(ckpt.get("cache", {}).get("config", {}))
    streams = checkpoint_streams(ckpt)
    diffs = [
        f"{k}={want[k]!r} vs {have.get(k)!r}"
        for s in streams for k in STREAM_KEYS.get(s, ())
        if k in want and want[k] != have.get(k)
    ]
    if diffs:
        raise ValueError(
            f"extractor mismatch: {ckpt_name} was trained on a cache with different settings than "
            f"{ddir / 'meta.json'} ({'; '.join(diffs)}, checkpoint vs cache); rebuild the cache with "
            "the checkpoint's settings (`make features`) or use a checkpoint trained on this cache"
        )
