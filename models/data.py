"""Training data from the feature cache: datasets, augmentation, padding and length buckets.

Everything reads ``<cache>/<dataset>/{manifest.jsonl, vocab.json, meta.json}`` and the
per-utterance ``<split>/<id>.npz`` files (``preprocess.cache``). Augmentation draws from a
generator seeded by ``(seed, epoch, index)``, so an item looks the same whatever the worker
count and a resumed run replays exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from models.base import STREAMS, TIME_REDUCTION, InputSpec
from preprocess import cache as cache_lib
from preprocess.configs import from_dict
from preprocess.flow import dequantize_flow
from preprocess.layouts import mirror_permutation
from preprocess.manifest import Utterance, read_manifest
from preprocess.vocab import Vocabulary

log = logging.getLogger(__name__)


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
        return from_dict(AugmentConfig, d, section="augment")


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


def mmap_utt(path: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of one cache file as read-only memory maps (no bytes read yet).

    The cache is written uncompressed (``ZIP_STORED``), so each ``.npy`` member is a plain byte
    range of the file: slicing a map (crop, time subsampling) reads only the frames and pixels
    kept, straight from the page cache, with no zip-member copy in between. A compressed member
    falls back to ``preprocess.cache.load_utt``.
    """
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        for name in names:
            try:
                info = zf.getinfo(f"{name}.npy")
            except KeyError:
                return cache_lib.load_utt(path, tuple(names))  # its one-line error names the missing array
            if info.compress_type != zipfile.ZIP_STORED:
                return cache_lib.load_utt(path, tuple(names))
            raw.seek(info.header_offset)
            local = raw.read(30)  # zip local file header: name and extra lengths at bytes 26..30
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            raw.seek(start)
            version = np.lib.format.read_magic(raw)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(raw)
            if fortran or dtype.hasobject:
                return cache_lib.load_utt(path, tuple(names))
            offset = raw.tell()
            if int(np.prod(shape)) == 0:
                out[name] = np.zeros(shape, dtype)
            else:
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return out


class CacheDataset(Dataset):
    """One split of a cached dataset; items are dicts of tensors plus encoded targets.

    Item: ``{"inputs": {name: Tensor}, "targets": LongTensor [L], "id": str}`` where
    ``rgb`` is uint8 [T, 3, H, W] (a channel-last view: :func:`collate` pads it into a
    contiguous batch, the one copy; float [0, 1] there or, for training, only on the GPU via
    :func:`to_device`), ``keypoints`` float32 [T, K, 3], ``keypoints_mask`` bool [T, K] and
    ``flow`` float32 [T, 2, h, w] in pixels.

    Files are read through memory maps (:func:`mmap_utt`). The epoch is kept in shared memory,
    so :meth:`set_epoch` reaches persistent DataLoader workers too (``epoch_shared``).
    """

    epoch_shared = True  # set_epoch is seen by forked/spawned workers: persistent workers are safe

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
        self._epoch = multiprocessing.RawValue("q", 0)  # shared with DataLoader workers
        self.augment, self.seed = augment, seed
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

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before building the epoch's iterator)."""
        self._epoch.value = int(epoch)

    def spec(self) -> InputSpec:
        """The InputSpec of the streams this dataset loads (after its crop)."""
        return input_spec(self.meta, self.crop_size, self.streams)

    def __getitem__(self, i: int) -> dict[str, Any]:
        u = self.utts[i]
        path = cache_lib.utt_path(self.root.parent, self.dataset, self.split, u.id)
        arr = mmap_utt(path, self.names)
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
            need = TIME_REDUCTION * len(self.targets[i])  # keep CTC feasible (models shorten time)
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
            rgb = _crop(arr["rgb"], window, axes=(1, 2))[idx]  # [T', c, c, 3] uint8: reads only the crop
            if flip:
                rgb = rgb[:, :, ::-1]
            # [T', c, c, 3] -> [T', 3, c, c] as a view: collate's padding copy does the transpose
            out["rgb"] = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)
        if "flow" in arr:
            flow = dequantize_flow(_crop(arr["flow"], window, axes=(2, 3))[idx], self.flow_scale)  # [T', 2, c, c] px
            flow *= step  # motion per output step grows when frames are skipped
            if flip:
                flow = flow[..., ::-1].copy()
                flow[:, 0] *= -1.0  # x displacement changes sign in a mirror
            out["flow"] = torch.from_numpy(np.ascontiguousarray(flow))
        if "keypoints" in arr:
            raw_kp = arr["keypoints"][idx]  # [T', K, 3] float16, read once
            kp = np.nan_to_num(raw_kp.astype(np.float32))  # [T', K, 3]
            mask = arr["keypoints_mask"][idx].astype(bool) & ~np.isnan(raw_kp).any(-1)
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


def collate(batch: list[dict[str, Any]], rgb_float: bool = True
            ) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, list[str]]:
    """Pad a list of items along time.

    Returns ``(inputs, lengths [B], targets [sum L], target_lengths [B], ids)`` with inputs
    padded to [B, T_max, ...] (zeros after each length; ``keypoints_mask`` False there) and
    ``rgb`` converted to float in [0, 1], or left uint8 with ``rgb_float=False`` (a quarter of
    the bytes to pin and copy; :func:`to_device` converts it on the device).
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
        inputs[name] = padded.float().div_(255.0) if name == "rgb" and rgb_float else padded
    targets = torch.cat([b["targets"] for b in batch])
    target_lengths = torch.tensor([len(b["targets"]) for b in batch], dtype=torch.long)
    return inputs, lengths, targets, target_lengths, [b["id"] for b in batch]


def collate_uint8(batch: list[dict[str, Any]]) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor, list[str]]:
    """:func:`collate` keeping ``rgb`` uint8 (picklable for worker processes, unlike a lambda)."""
    return collate(batch, rgb_float=False)


def to_device(inputs: dict[str, Tensor], device: torch.device | str, non_blocking: bool = True) -> dict[str, Tensor]:
    """Move a batch's inputs to ``device``; uint8 ``rgb`` becomes float [0, 1] there, after the copy."""
    out = {}
    for k, v in inputs.items():
        v = v.to(device, non_blocking=non_blocking)
        out[k] = v.float().div_(255.0) if k == "rgb" and v.dtype == torch.uint8 else v
    return out


def make_loader(dataset: Dataset, batch_sampler: Sampler, collate_fn: Any, num_workers: int,
                device: torch.device | str = "cpu", prefetch_factor: int = 4) -> DataLoader:
    """The DataLoader every trainer uses: pinned memory when feeding a GPU, workers kept across
    epochs when the dataset's epoch reaches them (``epoch_shared``), ``prefetch_factor`` batches
    queued per worker."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
        kwargs["persistent_workers"] = bool(getattr(dataset, "epoch_shared", False))
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=torch.device(device).type == "cuda", **kwargs)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length (little padding), reshuffled each epoch, sharded over ranks.

    Items are sorted by length (ties broken at random), cut into buckets of
    ``bucket_batches`` batches that are shuffled inside, cut into batches, and the batch
    order is shuffled. Every rank gets the same number of batches (the last ones wrap
    around to the start), so DDP ranks never wait on each other at the end of an epoch.

    ``max_frames`` (a frame budget; 0: none) also closes a batch before its padded size
    ``len(batch) * longest`` would pass the budget, so memory per step stays bounded while
    short clips still share big batches. A clip longer than the budget gets a batch alone. The
    batch count then depends a little on the shuffle; ``len()`` is that of the current epoch.
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
        max_frames: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_frames < 0:
            raise ValueError(f"max_frames (the frame budget) must be >= 0, got {max_frames}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        if len(lengths) == 0:
            raise ValueError("BucketBatchSampler got no items (empty split?)")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.num_replicas, self.rank, self.bucket_batches = num_replicas, rank, bucket_batches
        self.max_frames = int(max_frames)
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None  # (epoch, batches) under a frame budget

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_batches(self) -> int:
        if self.max_frames:
            return len(self._batches())
        return math.ceil(len(self.lengths) / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self._num_batches() / self.num_replicas)

    def _cut(self, order: np.ndarray) -> list[list[int]]:
        """Consecutive batches of ``order``: at most batch_size items and, with a budget,
        at most max_frames padded frames."""
        bs = self.batch_size
        if not self.max_frames:
            return [order[s : s + bs].tolist() for s in range(0, len(order), bs)]
        batches, cur, longest = [], [], 0
        for i in order.tolist():
            n = int(self.lengths[i])
            if cur and (len(cur) == bs or (len(cur) + 1) * max(longest, n) > self.max_frames):
                batches.append(cur)
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, n)
        if cur:
            batches.append(cur)
        return batches

    def _batches(self) -> list[list[int]]:
        """Every batch of the current epoch (all ranks), in order."""
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        n, bs = len(self.lengths), self.batch_size
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = np.lexsort((rng.random(n), self.lengths))  # by length, random among equals
            bucket = bs * self.bucket_batches
            for s in range(0, n, bucket):
                order[s : s + bucket] = rng.permutation(order[s : s + bucket])
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches = self._cut(order)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        self._cached = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(self._batches())
        total = len(self) * self.num_replicas
        batches += batches[: total - len(batches)]  # wrap around so every rank has len(self)
        return iter(batches[self.rank :: self.num_replicas])
