"""The per-video feature cache: ``<cache>/<dataset>/<split>/<id>.npz`` plus ``meta.json``.

Array names are the contract between preprocess and models:
  rgb             uint8   [T, H, W, 3]
  keypoints       float16 [T, K, 3]   (x, y in [0, 1] of the frame; z or visibility)
  keypoints_mask  bool    [T, K]      (False where the point was not detected)
  flow            int8|float16 [T, 2, h, w]  (flow[t] is from frame t to t+1; the last is zero)
Every file also holds ``config_hash`` (str) so a changed extractor configuration makes it stale.
Files are written to a temp file and renamed, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from preprocess.configs import MissingEntryError
from preprocess.files import atomic_write_text

CACHE_FORMAT_VERSION = 1
ARRAY_NAMES = ("rgb", "keypoints", "keypoints_mask", "flow")


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable short hash of an extractor configuration (plus the cache format version)."""
    blob = json.dumps({"format": CACHE_FORMAT_VERSION, **config}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def dataset_dir(cache_root: str | os.PathLike, dataset: str) -> Path:
    return Path(cache_root) / dataset


def utt_path(cache_root: str | os.PathLike, dataset: str, split: str, utt_id: str) -> Path:
    return dataset_dir(cache_root, dataset) / split / f"{utt_id}.npz"


def write_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], chash: str) -> None:
    """Write arrays atomically as an uncompressed ``.npz`` (loading speed beats disk here).

    Zip members get a fixed timestamp so the same arrays always give the same bytes: a run that
    was killed and resumed leaves files identical to an uninterrupted run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, arr in {"config_hash": np.array(chash), **arrays}.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def is_valid(path: str | os.PathLike, chash: str) -> bool:
    """True when ``path`` is a complete cache file written with configuration ``chash``.

    Reads only the zip directory and the tiny hash member, so checking a finished cache is
    far cheaper than rebuilding it.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return "config_hash" in z.files and str(z["config_hash"]) == chash
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError):
        return False


def load_utt(path: str | os.PathLike, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Load the named arrays (all when ``names`` is None) of one cache file."""
    with np.load(path, allow_pickle=False) as z:
        keys = [k for k in z.files if k != "config_hash"] if names is None else list(names)
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise MissingEntryError(
                f"{path}: cache file has no {missing} (it holds {sorted(z.files)}); "
                "rebuild the cache with those streams enabled (`make features`)"
            )
        return {k: z[k] for k in keys}


def write_meta(cache_root: str | os.PathLike, dataset: str, meta: Mapping[str, Any]) -> None:
    atomic_write_text(dataset_dir(cache_root, dataset) / "meta.json",
                      json.dumps({"cache_format": CACHE_FORMAT_VERSION, **meta}, indent=2, default=str))


def read_meta(cache_root: str | os.PathLike, dataset: str) -> dict[str, Any]:
    path = dataset_dir(cache_root, dataset) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no cache meta; run `make features DATASET={dataset}` first")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("cache_format") != CACHE_FORMAT_VERSION:
        raise ValueError(
            f"{path}: cache format {meta.get('cache_format')} but this code reads {CACHE_FORMAT_VERSION}; "
            f"rebuild it with `make features DATASET={dataset}`"
        )
    return meta
