"""Training data from the feature cache: datasets, augmentation, padding and length buckets.

Everything reads ``<cache>/<dataset>/{manifest.jsonl, vocab.json, meta.json}`` and the
per-utterance ``<split>/<id>.npz`` files (``preprocess.cache``). Augmentation draws from a
generator seeded by ``(seed, epoch, index)``, so an item looks the same whatever the worker
count and a resumed run replays exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from models.base import InputSpec
from preprocess import cache as cache_lib
from preprocess.flow import dequantize_flow
from preprocess.layouts import mirror_permutation
from preprocess.manifest import Utterance, read_manifest
from preprocess.vocab import Vocabulary

log = logging.getLogger(__name__)

STREAMS = ("rgb", "keypoints", "flow")  # model-facing streams; keypoints also bring keypoints_mask


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation; evaluation uses a center crop of the same size and nothing else."""

    crop_size: int = 0  # side of the square crop in cached-RGB pixels (0: no crop)
    flip_prob: float = 0.5  # probability of a horizontal flip (mirrors keypoints and flow too)
    time_scale: float = 0.2  # temporal rescaling factor drawn from [1 - s, 1 + s]

    def __post_init__(self) -> None:
        if self.crop_size < 0:
            raise ValueError(f"augment.crop_size must be >= 0, got {self.crop_size}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"augment.flip_prob must be in [0, 1], got {self.flip_prob}")
        if not 0.0 <= self.time_scale < 1.0:
            raise ValueError(f"augment.time_scale must be in [0, 1), got {self.time_scale}")

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> "AugmentConfig":
        d = dict(d or {})
        known = {"crop_size", "flip_prob", "time_scale"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown augment option(s) {unknown}; known: {sorted(known)}")
        return AugmentConfig(**d)


def meta_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The extractor facts models depend on, flattened from meta.json.

    Reads the top-level keys written by ``make features`` (``rgb_size``, ``keypoint_layout``,
    ``num_keypoints``, ``flow: {method, size, dtype, scale}``, ``config_hash``, ``streams``)
    and, when present, a ``config`` mapping with the flat names (``flow_size``, ``flow_scale``,
    ``flow_method``), which wins. The result always uses the flat names.
    """
    out = {k: v for k, v in meta.items() if k != "config" and not isinstance(v, dict)}
    flow = meta.get("flow")
    if isinstance(flow, dict):
        out.update({f"flow_{k}": v for k, v in flow.items() if k in ("method", "size", "dtype", "scale", "clip")})
    out.update(dict(meta.get("config") or {}))
    return out


def input_spec(meta: dict[str, Any], crop_size: int = 0, streams: Sequence[str] | None = None) -> InputSpec:
    """What a model trained on this cache sees: sizes after the (center) crop, if any.

    With ``streams`` given, streams the model does not read are reported absent (size 0), so
    a landmark model's spec never asks a deployer for RGB.
    """
    cfg = meta_config(meta)
    rgb, flow = int(cfg.get("rgb_size") or 0), int(cfg.get("flow_size") or 0)
    if crop_size and rgb:
        flow = max(1, round(flow * crop_size / rgb)) if flow else 0
        rgb = crop_size
    keep = set(STREAMS if streams is None else streams)
    return InputSpec(
        num_keypoints=int(cfg.get("num_keypoints") or 0) if "keypoints" in keep else 0,
        keypoint_layout=str(cfg.get("keypoint_layout") or "") if "keypoints" in keep else "",
        rgb_size=rgb if "rgb" in keep else 0,
        flow_size=flow if "flow" in keep else 0,
    )


def cache_arrays(streams: Sequence[str]) -> tuple[str, ...]:
    """Cache array names backing model streams (``keypoints`` brings its mask)."""
    bad = [s for s in streams if s not in STREAMS]
    if bad or not streams:
        raise ValueError(f"streams must be a non-empty subset of {STREAMS}, got {list(streams)}")
    names: list[str] = []
    for s in STREAMS:
        if s in streams:
            names += ["keypoints", "keypoints_mask"] if s == "keypoints" else [s]
    return tuple(names)


def _scan(path: Path, first: str, chash: str | None) -> int | None:
    """Frames in a cache file (from the array header only), or None when missing/invalid/stale."""
    try:
        with zipfile.ZipFile(path) as zf:
            if chash is not None:
                with zf.open("config_hash.npy") as f:
                    if str(np.lib.format.read_array(f, allow_pickle=False)) != chash:
                        return None
            with zf.open(f"{first}.npy") as f:
                version = np.lib.format.read_magic(f)  # header only: the data is never read
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(f)
        return int(shape[0]) if shape else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None


class CacheDataset(Dataset):
    """One split of a cached dataset; items are dicts of tensors plus encoded targets.

    Item: ``{"inputs": {name: Tensor}, "targets": LongTensor [L], "id": str}`` where
    ``rgb`` is uint8 [T, 3, H, W] (turned into float [0, 1] by :func:`collate`, which keeps
    memory low while items wait in worker queues), ``keypoints`` float32 [T, K, 3],
    ``keypoints_mask`` bool [T, K] and ``flow`` float32 [T, 2, h, w] in pixels.
    """

    def __init__(
        self,
        cache_root: str | os.PathLike,
        dataset: str,
        split: str,
        streams: Sequence[str],
        augment: AugmentConfig | None = None,
        crop_size: int | None = None,  # center crop when not augmenting (default: augment's)
        seed: int = 0,
        require_targets: bool = True,  # False: glosses missing from the vocabulary only warn
    ) -> None:
        self.root = cache_lib.dataset_dir(cache_root, dataset)
        self.dataset, self.split, self.streams = dataset, split, tuple(streams)
        self.names = cache_arrays(self.streams)
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.crop_size = augment.crop_size if (crop_size is None and augment) else int(crop_size or 0)
        self.meta = cache_lib.read_meta(cache_root, dataset)
        self.config = meta_config(self.meta)
        self.layout = str(self.config.get("keypoint_layout") or "")
        self.flow_scale = float(self.config.get("flow_scale") or 1.0)
        stored = self.config.get("streams")  # arrays the cache holds (absent in older metas)
        lacking = [n for n in self.names if stored is not None and n not in stored]
        if lacking:
            raise ValueError(
                f"{self.root / 'meta.json'}: the cache has no {lacking} (it holds {stored}) but streams "
                f"{list(self.streams)} need them; rebuild it with those streams (`make features DATASET={dataset}`) "
                "or train a model on the streams it has"
            )
        vocab_path = self.root / "vocab.json"
        if not vocab_path.is_file():
            raise FileNotFoundError(f"{vocab_path}: no vocabulary; run `make features DATASET={dataset}` first")
        self.vocab = Vocabulary.load(vocab_path)
        rgb_size = int(self.config.get("rgb_size") or 0)
        if self.crop_size and rgb_size and self.crop_size > rgb_size:
            raise ValueError(
                f"crop_size {self.crop_size} is larger than the cached RGB size {rgb_size} of "
                f"{self.root}; set data.augment.crop_size <= {rgb_size}"
            )

        utts = read_manifest(self.root / "manifest.jsonl", split=split)
        chash = self.meta.get("config_hash")
        self.utts: list[Utterance] = []
        self.lengths: list[int] = []
        skipped: list[str] = []
        for u in utts:
            frames = _scan(cache_lib.utt_path(cache_root, dataset, split, u.id), self.names[0], chash)
            if frames is None or frames == 0:
                skipped.append(u.id)
                continue
            self.utts.append(u)
            self.lengths.append(frames)
        if skipped:
            log.warning(
                "%s/%s: %d of %d utterances have no valid cache file and are skipped (e.g. %s); "
                "re-run `make features DATASET=%s` to build them",
                self.root, split, len(skipped), len(utts), ", ".join(skipped[:3]), dataset,
            )
        index = self.vocab.index
        self.targets: list[list[int]] = []
        oov: list[tuple[str, list[str]]] = []  # (utterance, glosses missing from the vocabulary)
        for u in self.utts:
            missing = sorted({g for g in u.glosses if g not in index})
            if missing:
                oov.append((u.id, missing))
            self.targets.append([index[g] for g in u.glosses if g in index])
        if oov:
            (first, missing), n = oov[0], len(oov)
            msg = (f"{self.root}/manifest.jsonl: utterance {first!r} ({split}"
                   f"{f', and {n - 1} more' if n > 1 else ''}) has glosses missing from {vocab_path}: "
                   f"{missing[:5]}; rebuild the vocabulary from the training split "
                   f"(`make features DATASET={dataset}`) or drop the utterance")
            if require_targets:
                raise ValueError(msg)
            log.warning("%s (their targets skip those glosses; WER still counts them)", msg)

    def __len__(self) -> int:
        return len(self.utts)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before building the epoch's iterator)."""
        self.epoch = epoch

    def spec(self) -> InputSpec:
        """The InputSpec of the streams this dataset loads (after its crop)."""
        return input_spec(self.meta, self.crop_size, self.streams)

    def __getitem__(self, i: int) -> dict[str, Any]:
        u = self.utts[i]
        path = cache_lib.utt_path(self.root.parent, self.dataset, self.split, u.id)
        arr = cache_lib.load_utt(path, self.names)
        frames = {k: len(v) for k, v in arr.items()}
        if len(set(frames.values())) != 1:
            raise ValueError(f"{path}: streams have different frame counts {frames}; rebuild it with `make features`")
        T = len(arr[self.names[0]])
        aug = self.augment
        train = aug is not None
        # Draw every random number in a fixed order so the stream set never changes the draws.
        rng = np.random.default_rng([self.seed, self.epoch, i])
        scale, u_y, u_x, flip_draw = rng.uniform(-1, 1), rng.random(), rng.random(), rng.random()

        # Temporal rescaling: one index vector shared by every stream.
        idx = np.arange(T)
        if train and aug.time_scale > 0 and T > 1:
            new_t = max(1, round(T * (1.0 + aug.time_scale * scale)))
            need = 4 * len(self.targets[i])  # keep CTC feasible (time is reduced 4x by models)
            if new_t < need:
                new_t = min(need, max(T, new_t))  # never stretch beyond the unscaled length for it
            idx = np.round(np.linspace(0, T - 1, new_t)).astype(np.int64)
        step = (T - 1) / (len(idx) - 1) if len(idx) > 1 else 1.0  # source frames per output frame
        flip = train and flip_draw < aug.flip_prob
        ry, rx = (u_y, u_x) if train else (0.5, 0.5)
        # One crop window in relative coordinates, applied to rgb, flow and (with them) keypoints.
        ref = arr["rgb"].shape[1] if "rgb" in arr else int(self.config.get("rgb_size") or 0)
        window = None  # (top, left, side) as fractions of the frame
        if self.crop_size and ref and ("rgb" in arr or "flow" in arr):
            side = self.crop_size / ref
            window = (round(ry * (ref - self.crop_size)) / ref, round(rx * (ref - self.crop_size)) / ref, side)

        out: dict[str, Tensor] = {}
        if "rgb" in arr:
            rgb = arr["rgb"][idx]  # [T', H, W, 3] uint8
            rgb = _crop(rgb, window, axes=(1, 2))
            if flip:
                rgb = rgb[:, :, ::-1]
            out["rgb"] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).contiguous()
        if "flow" in arr:
            flow = dequantize_flow(arr["flow"][idx], self.flow_scale)  # [T', 2, h, w] float32 pixels
            flow *= step  # motion per output step grows when frames are skipped
            flow = _crop(flow, window, axes=(2, 3))
            if flip:
                flow = flow[..., ::-1].copy()
                flow[:, 0] *= -1.0  # x displacement changes sign in a mirror
            out["flow"] = torch.from_numpy(np.ascontiguousarray(flow))
        if "keypoints" in arr:
            kp = np.nan_to_num(arr["keypoints"][idx].astype(np.float32))  # [T', K, 3]
            mask = arr["keypoints_mask"][idx].astype(bool) & ~np.isnan(arr["keypoints"][idx]).any(-1)
            if window is not None:
                # Landmarks follow the crop only beside image streams: a landmark-only model keeps
                # full-frame coordinates, as it will see them at deployment.
                top, left, side = window
                kp[..., 1] = (kp[..., 1] - top) / side
                kp[..., 0] = (kp[..., 0] - left) / side
            if flip:
                perm = mirror_permutation(self.layout, kp.shape[1])
                kp[..., 0] = 1.0 - kp[..., 0]
                kp, mask = kp[:, perm], mask[:, perm]
            kp[~mask] = 0.0
            out["keypoints"] = torch.from_numpy(np.ascontiguousarray(kp))
            out["keypoints_mask"] = torch.from_numpy(np.ascontiguousarray(mask))
        return {"inputs": out, "targets": torch.tensor(self.targets[i], dtype=torch.long), "id": u.id}


def _crop(x: np.ndarray, window: tuple[float, float, float] | None, axes: tuple[int, int]) -> np.ndarray:
    """Square crop ``(top, left, side)`` given as fractions of the frame, along ``axes``."""
    if window is None:
        return x
    top, left, side = window
    h, w = x.shape[axes[0]], x.shape[axes[1]]
    c = max(1, min(h, w, round(side * h)))
    y0, x0 = min(round(top * h), h - c), min(round(left * w), w - c)
    sl = [slice(None)] * x.ndim
    sl[axes[0]], sl[axes[1]] = slice(y0, y0 + c), slice(x0, x0 + c)
    return x[tuple(sl)]


def collate(batch: list[dict[str, Any]]) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, list[str]]:
    """Pad a list of items along time.

    Returns ``(inputs, lengths [B], targets [sum L], target_lengths [B], ids)`` with inputs
    padded to [B, T_max, ...] (zeros after each length; ``keypoints_mask`` False there) and
    ``rgb`` converted to float in [0, 1].
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    names = list(batch[0]["inputs"])
    lengths = torch.tensor([len(b["inputs"][names[0]]) for b in batch], dtype=torch.long)
    t_max = int(lengths.max())
    inputs: dict[str, Tensor] = {}
    for name in names:
        first = batch[0]["inputs"][name]
        padded = first.new_zeros((len(batch), t_max, *first.shape[1:]))  # [B, T_max, ...]
        for j, b in enumerate(batch):
            x = b["inputs"][name]
            padded[j, : len(x)] = x
        inputs[name] = padded.float().div_(255.0) if name == "rgb" else padded
    targets = torch.cat([b["targets"] for b in batch])
    target_lengths = torch.tensor([len(b["targets"]) for b in batch], dtype=torch.long)
    return inputs, lengths, targets, target_lengths, [b["id"] for b in batch]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length (little padding), reshuffled each epoch, sharded over ranks.

    Items are sorted by length (ties broken at random), cut into buckets of
    ``bucket_batches`` batches that are shuffled inside, cut into batches, and the batch
    order is shuffled. Every rank gets the same number of batches (the last ones wrap
    around to the start), so DDP ranks never wait on each other at the end of an epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        bucket_batches: int = 4,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        if len(lengths) == 0:
            raise ValueError("BucketBatchSampler got no items (empty split?)")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_replicas, self.rank, self.bucket_batches = num_replicas, rank, bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_batches(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self._num_batches() / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = np.lexsort((rng.random(n), self.lengths))  # by length, random among equals
            bucket = bs * self.bucket_batches
            for s in range(0, n, bucket):
                order[s : s + bucket] = rng.permutation(order[s : s + bucket])
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = [order[s : s + bs].tolist() for s in range(0, n, bs)]
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        total = len(self) * self.num_replicas
        batches += batches[: total - len(batches)]  # wrap around so every rank has len(self)
        return iter(batches[self.rank :: self.num_replicas])
