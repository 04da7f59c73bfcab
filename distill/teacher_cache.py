"""Teacher-output cache: a frozen teacher runs once over a split; distillation epochs only read files.

Layout: ``<out>/teacher_outputs/<split>/<id>.npz`` (written atomically with
``preprocess.cache.write_npz_atomic``) and ``<out>/teacher_outputs/<split>/index.json``. Each npz
holds ``logits``: float16 [T', V] log-posteriors of the teacher's "main" level (T' = T // 4),
``correct``: whether the teacher's greedy decoding of the clip equals its transcript (so a
recipe can skip the clips the teacher gets wrong, ``kd.only_correct``), and one float16 array
per requested feature, [T, D] for frame-rate features ("frame", ...) or
[T', D] for step-rate ones ("temporal", "context", ...); the rate of each is measured on a
probe clip and kept in the index. A feature wider than ``reduce_dim`` (when > 0) is stored
through a fixed Gaussian random projection ``D -> reduce_dim`` (entries N(0, 1/reduce_dim),
seeded by the feature name): random projections preserve squared distances within a small
factor (Johnson-Lindenstrauss) and, unlike PCA, need no second pass over the data, so the
student's projector simply targets the reduced width. synthsign's teachers are narrow
(<= 224), so the recipes store them whole. Arrays once read stay in memory (float16, up to
1 GB by default), so only the first distillation epoch touches these files.

Out of fold (``out_of_fold``): for an ensemble whose members trained on different folds of the
data, each clip's posteriors are the mean over only the members that never trained on it (the
index records which), so the student sees on every clip what a model guesses on unseen data.

Staleness: the index and every npz carry a fingerprint of the teacher (sha256 of its model
config, vocabulary, input spec and every weight tensor, so a checkpoint re-saved with the same
weights is not "changed") and of the cache config (dataset, split, the cache's config_hash,
the teacher's crop, the features and their reduction). A cache that no longer matches is
refused with one line (:class:`StaleTeacherCache`) unless the caller asks for a rebuild; an
interrupted build resumes, skipping files already written with the same fingerprint.

Augmentation: the teacher sees every clip once, un-augmented (its own center crop, no
rescale, no flip). :class:`StudentDataset` keeps the student's augmented view aligned:
- temporal rescale (``models.data``) and the landmark time warp (KD-MSLRT) move frames, so
  every student frame j gets its source position ``pos[j]`` in the original clip (the
  rescale's frame indices, composed with the warp's fractional positions). Frame-rate teacher
  arrays are read at ``pos[j]``; step-rate arrays (posteriors as log-probabilities, temporal
  features) are read where student step i's window centre ``4i + 1.5`` falls in the teacher's
  steps, ``(pos(4i + 1.5) - 1.5) / 4``, both with linear interpolation (the
  ``distill.losses.resample_time`` idea with explicit positions). Without augmentation this is
  the identity.
- crops (RGB, flow), the affine map, point dropout and time masking do not move frames:
  the teacher's outputs for the clean clip stay the targets (the student learns to see
  through the corruption).
- flips (``augment.flip_prob``, the landmark left/right swap) change what some glosses mean
  (synthsign and real sign languages have glosses that differ only in direction or hand), so
  the clean clip's posteriors would be wrong targets: distillation refuses flips
  (``distill.recipes`` checks it) rather than silently teaching mirrored labels.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from distill.recipes import TransferConfig
from models.base import TIME_REDUCTION, InputSpec, ModelOutput
from models.checkpoint import Checkpoint, check_compatible
from models.ensemble import Ensemble, checkpoint_paths, load_ensemble, mean_posterior
from models.data import AugmentConfig, BucketBatchSampler, CacheDataset, collate
from evaluate.core.decode import decode_outputs
from models.students import LandmarkAugment, LandmarkAugmentConfig
from preprocess import cache as cache_lib
from preprocess.configs import UserError
from preprocess.files import atomic_write_text
from preprocess.manifest import read_manifest

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the npz/index layout changes: older caches then count as stale
PROBE_FRAMES = 32  # probe clip length for time reductions and feature rates
REBUILD_HINT = "rerun with --rebuild-teacher-cache to rebuild it"


class StaleTeacherCache(UserError):
    """The teacher-output cache does not match the teacher or the data; the message says why."""


# ------------------------------------------------------------------------------ fingerprints


def teacher_fingerprint(ckpt: Checkpoint) -> str:
    """sha256 (first 16 hex digits) of a checkpoint's model: config, vocabulary, spec and weights
    (of every member, in order, for an ensemble)."""
    if ckpt.members:
        return hashlib.sha256("+".join(teacher_fingerprint(m) for m in ckpt.members).encode()).hexdigest()[:16]
    h = hashlib.sha256()
    # the saved entries as written (so existing caches keep their fingerprint)
    meta = {k: ckpt.raw.get(k) for k in ("model_config", "student_config", "input_spec", "vocab", "crop_size", "streams")}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(ckpt.weights):
        t = ckpt.weights[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, whatever the dtype
    return h.hexdigest()[:16]


def data_fingerprint(meta: Mapping[str, Any], dataset: str, split: str, crop_size: int,
                     features: Sequence[str], reduce_dim: int, out_of_fold: bool = False) -> str:
    """What the cached outputs depend on besides the teacher: the cache config and our settings."""
    d = {"format": FORMAT, "dataset": dataset, "split": split, "config_hash": meta.get("config_hash"),
         "crop_size": int(crop_size), "features": sorted(features), "reduce_dim": int(reduce_dim)}
    if out_of_fold:  # absent otherwise, so caches written before the option keep their fingerprint
        d["out_of_fold"] = True
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- probe inputs


def probe_inputs(spec: InputSpec, streams: Sequence[str], frames: int = PROBE_FRAMES) -> dict[str, Tensor]:
    """A random one-clip batch of ``frames`` frames with the inputs ``streams`` read (shapes from ``spec``)."""
    g = torch.Generator().manual_seed(0)
    inputs: dict[str, Tensor] = {}
    if "rgb" in streams:
        inputs["rgb"] = torch.rand(1, frames, 3, spec.rgb_size, spec.rgb_size, generator=g)
    if "keypoints" in streams:
        inputs["keypoints"] = 0.25 + 0.5 * torch.rand(1, frames, spec.num_keypoints, 3, generator=g)
        inputs["keypoints_mask"] = torch.ones(1, frames, spec.num_keypoints, dtype=torch.bool)
    if "flow" in streams:
        inputs["flow"] = torch.randn(1, frames, 2, spec.flow_size, spec.flow_size, generator=g)
    return inputs


@torch.no_grad()
def probe(model: nn.Module, spec: InputSpec, streams: Sequence[str], frames: int = PROBE_FRAMES):
    """The model's output on a probe clip (eval mode; the model's mode is restored)."""
    was = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in probe_inputs(spec, streams, frames).items()}
        return model(inputs, torch.tensor([frames], device=device))
    finally:
        model.train(was)


def feature_rates(out, frames: int, features: Sequence[str], who: str) -> dict[str, str]:
    """"frame" or "step" for each feature, from its time length on a probe of ``frames`` frames."""
    rates: dict[str, str] = {}
    steps = out.main.shape[1]
    for name in features:
        if name not in out.features:
            raise ValueError(f"{who} has no feature {name!r} (it has {sorted(out.features)}); "
                             "fix teacher.features / kd.feature_map in the recipe")
        t = out.features[name].shape[1]
        if t == frames:
            rates[name] = "frame"
        elif t == steps:
            rates[name] = "step"
        else:
            raise ValueError(f"{who}: feature {name!r} has {t} steps on a {frames}-frame probe, neither "
                             f"frames ({frames}) nor output steps ({steps}); it cannot be aligned")
    return rates


# ------------------------------------------------------------------------------- the cache


def projection(name: str, dim: int, reduce_dim: int) -> np.ndarray:
    """Fixed Gaussian random projection [dim, reduce_dim] for feature ``name`` (same name, same matrix)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return (rng.standard_normal((dim, reduce_dim)) / np.sqrt(reduce_dim)).astype(np.float32)


class TeacherCache:
    """Read side of one split's teacher outputs (``index.json`` + one npz per utterance)."""

    def __init__(self, split_dir: str | os.PathLike, memory_mb: float = 1024) -> None:
        self.dir = Path(split_dir)
        # Arrays read once stay in memory (float16) up to memory_mb, so later epochs skip the disk.
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self._memory_left = memory_mb * 2**20
        self.index_path = self.dir / "index.json"
        if not self.index_path.is_file():
            raise FileNotFoundError(f"{self.index_path}: no teacher-output cache here; it is built by distill.train")
        self.index: dict[str, Any] = json.loads(self.index_path.read_text(encoding="utf-8"))
        self.fingerprint = f"{self.index['teacher_fingerprint']}-{self.index['data_fingerprint']}"

    @property
    def rates(self) -> dict[str, str]:
        """Array name -> "frame" | "step" ("logits" is step-rate)."""
        return {"logits": "step", **{k: v["rate"] for k, v in self.index["features"].items()}}

    @property
    def dims(self) -> dict[str, int]:
        """Stored width of every feature (after any reduction)."""
        return {k: int(v["dim"]) for k, v in self.index["features"].items()}

    def load(self, uid: str) -> dict[str, np.ndarray]:
        """float32 arrays of one utterance; a missing or foreign file is a stale cache."""
        arrays = self._memory.get(uid)
        if arrays is None:
            arrays = self._read(uid)
            size = sum(a.nbytes for a in arrays.values())
            if size <= self._memory_left:
                self._memory[uid] = arrays
                self._memory_left -= size
        return {k: v.astype(np.float32) for k, v in arrays.items()}

    def correct(self, uid: str) -> bool:
        """Whether the teacher decodes this clip correctly (greedy, against its transcript)."""
        return bool(self.load(uid)["correct"])

    def _read(self, uid: str) -> dict[str, np.ndarray]:
        path = self.dir / f"{uid}.npz"
        names = ("logits", "correct", *self.index["features"])
        try:  # one open per item: the hash check and the reads share it
            with np.load(path, allow_pickle=False) as z:
                if ("config_hash" in z.files and str(z["config_hash"]) == self.fingerprint
                        and all(n in z.files for n in names)):
                    return {n: z[n] for n in names}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            pass
        raise StaleTeacherCache(f"{path}: missing, unreadable or written for another teacher/cache; {REBUILD_HINT}")

    def check(self, teacher_fp: str, data_fp: str, teacher_path: str, utts: Mapping[str, int]) -> None:
        """Raise StaleTeacherCache (one line) unless the cache matches this teacher, data and split."""
        idx = self.index
        where = f"{self.index_path}: stale teacher-output cache"
        if idx.get("format") != FORMAT:
            raise StaleTeacherCache(f"{where} (format {idx.get('format')}, now {FORMAT}); {REBUILD_HINT}")
        if idx["teacher_fingerprint"] != teacher_fp:
            raise StaleTeacherCache(
                f"{where}: the teacher changed since it was written (fingerprint {idx['teacher_fingerprint']} of "
                f"{idx['teacher_path']}, now {teacher_fp} of {teacher_path}); {REBUILD_HINT}")
        if idx["data_fingerprint"] != data_fp:
            raise StaleTeacherCache(
                f"{where}: the feature cache or the recipe's teacher features changed since it was written "
                f"(written for {idx['data']}); {REBUILD_HINT}")
        missing = [u for u, t in utts.items() if idx["utts"].get(u) != t]
        if missing:
            raise StaleTeacherCache(f"{where}: {len(missing)} utterance(s) missing or with another frame count "
                                    f"(e.g. {missing[0]}); {REBUILD_HINT}")


def _open_if_complete(split_dir: Path) -> TeacherCache | None:
    try:
        return TeacherCache(split_dir)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as e:  # unreadable JSON / foreign index: rebuild only on request
        raise StaleTeacherCache(f"{split_dir / 'index.json'}: unreadable ({e}); {REBUILD_HINT}") from None


@torch.no_grad()
def prepare_teacher_cache(teacher: str | os.PathLike | Sequence[str | os.PathLike], cache_root: str | os.PathLike, dataset: str, split: str,
                          out_dir: str | os.PathLike, features: Sequence[str] = (), reduce_dim: int = 0,
                          rebuild: bool = False, batch_size: int = 8, device: str | torch.device = "cpu",
                          out_of_fold: bool = False) -> TeacherCache:
    """The teacher outputs of ``split``: reused when they match, built when absent, refused when stale.

    Args:
        teacher: teacher checkpoint (any ``models.checkpoint.load_model`` checkpoint), or several:
            their ``models.ensemble.Ensemble`` is the teacher.
        cache_root, dataset, split: the feature cache split to run over.
        out_dir: folder of the split's outputs, e.g. ``<run>/teacher_outputs/<split>``.
        features: teacher feature names to store besides the posteriors.
        reduce_dim: > 0: store wider features through a random projection to this width.
        rebuild: rebuild a stale cache instead of refusing it.
        out_of_fold: every clip's posteriors are the mean of only the members that never trained
            on it (see :func:`out_of_fold_members`).

    Raises:
        StaleTeacherCache: the cache exists but no longer matches, and ``rebuild`` is False.
        UserError: ``out_of_fold`` and some clip was trained on by every member.
    """
    if reduce_dim < 0:
        raise ValueError(f"teacher reduce_dim must be >= 0, got {reduce_dim}")
    out_dir = Path(out_dir)
    paths = checkpoint_paths(teacher)
    model, ckpt = load_ensemble(paths, device)
    for p, member in zip(paths, ckpt.members or [ckpt]):
        check_compatible(member, cache_root, dataset, ckpt_name=f"teacher {p}")
    teacher = ",".join(str(p) for p in paths)
    streams = ckpt.streams
    crop = int(ckpt.raw.get("crop_size") or 0)
    ds = CacheDataset(cache_root, dataset, split, streams, augment=None, crop_size=crop, require_targets=False)
    utts = {u.id: int(n) for u, n in zip(ds.utts, ds.lengths)}
    teacher_fp = teacher_fingerprint(ckpt)
    data_fp = data_fingerprint(ds.meta, dataset, split, crop, features, reduce_dim, out_of_fold)
    members = None
    if out_of_fold:
        if features:
            raise UserError(f"an out-of-fold teacher mixes its members clip by clip, which their features "
                            f"{list(features)} (one space per member) do not allow; drop teacher.features")
        members = out_of_fold_members(ckpt.members or [ckpt], paths, cache_root, list(utts))

    existing = _open_if_complete(out_dir)
    if existing is not None:
        try:
            existing.check(teacher_fp, data_fp, str(teacher), utts)
            return existing
        except StaleTeacherCache:
            if not rebuild:
                raise
            log.info("rebuilding the stale teacher-output cache %s", out_dir)
            existing.index_path.unlink()

    spec = ckpt.spec
    rates = feature_rates(probe(model, spec, streams), PROBE_FRAMES, features, f"teacher {teacher}")
    fingerprint = f"{teacher_fp}-{data_fp}"
    sampler = BucketBatchSampler(ds.lengths, batch_size, shuffle=False)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    dims: dict[str, dict[str, Any]] = {}
    projections: dict[str, np.ndarray] = {}
    done = 0
    targets = {u.id: t for u, t in zip(ds.utts, ds.targets)}
    for inputs, lengths, _, _, ids in loader:
        todo = [j for j, u in enumerate(ids) if not cache_lib.is_valid(out_dir / f"{u}.npz", fingerprint)]
        if not todo and dims:
            continue  # an interrupted build left these; dims are known from an earlier batch
        inputs, lengths = {k: v.to(device) for k, v in inputs.items()}, lengths.to(device)
        out = model(inputs, lengths) if members is None else _mix_members(model, inputs, lengths, ids, members)
        decoded = decode_outputs(out.main, out.out_lengths, ckpt.vocab)  # greedy
        feats = {name: out.features[name].float().cpu() for name in features}  # [B, T or T', D]
        for name, x in feats.items():
            if name not in dims:
                d = x.shape[-1]
                k = reduce_dim if 0 < reduce_dim < d else d
                if k < d:
                    projections[name] = projection(name, d, k)
                dims[name] = {"rate": rates[name], "dim": k, "source_dim": d,
                              "projection": "gaussian_random" if k < d else None}
        for j in todo:
            t, tp = int(lengths[j]), int(out.out_lengths[j])
            arrays = {"logits": decoded[j].log_probs[:tp].astype(np.float16),
                      "correct": np.array(decoded[j].ids == list(targets[ids[j]]))}
            for name, x in feats.items():
                a = x[j, : (t if rates[name] == "frame" else tp)].numpy()
                if name in projections:
                    a = a @ projections[name]
                arrays[name] = np.clip(a, -65000, 65000).astype(np.float16)
            cache_lib.write_npz_atomic(out_dir / f"{ids[j]}.npz", arrays, fingerprint)
            done += 1
    index = {
        "format": FORMAT, "teacher_path": str(teacher), "teacher_fingerprint": teacher_fp,
        "data_fingerprint": data_fp, "data": {"dataset": dataset, "split": split, "crop_size": crop,
                                              "config_hash": ds.meta.get("config_hash"), "reduce_dim": reduce_dim},
        "level": "main", "vocab_size": len(ckpt.vocab), "features": dims, "utts": utts,
        **({"out_of_fold": members} if members is not None else {}),
    }
    atomic_write_text(out_dir / "index.json", json.dumps(index, indent=1) + "\n")
    log.info("teacher outputs of %d %s utterances written to %s (%d reused)", done, split, out_dir, len(utts) - done)
    return TeacherCache(out_dir)


def trained_on(ckpt: Checkpoint, cache_root: str | os.PathLike) -> set[str]:
    """Ids of the clips a checkpoint was trained or selected on: its dataset's training and dev splits."""
    if not ckpt.dataset:
        raise UserError(f"{ckpt.path}: the checkpoint does not name its dataset, so what it trained on is unknown")
    dc = ckpt.raw.get("data_config") or {}
    splits = {dc.get("train_split", "train"), dc.get("dev_split", "dev")}
    manifest = cache_lib.dataset_dir(cache_root, ckpt.dataset) / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: the manifest of {ckpt.path}'s dataset is missing; "
                                "an out-of-fold teacher needs it to know which clips each member saw")
    return {u.id for u in read_manifest(manifest) if u.split in splits}


def out_of_fold_members(members: Sequence[Checkpoint], paths: Sequence[Path], cache_root: str | os.PathLike,
                        ids: Sequence[str]) -> dict[str, list[int]]:
    """For every clip, the members (indices) that never trained on it.

    An out-of-fold teacher is an ensemble of models trained on different parts of the data
    (e.g. the folds of ``evaluate.cv --cross-fit``): on its own training clips a model says little
    more than the labels, but on a clip it never saw it shows what it would really guess there,
    which is what a student trained on that clip can learn from.

    Raises:
        UserError: some clip was trained on by every member.
    """
    seen = [trained_on(m, cache_root) for m in members]
    chosen = {u: [i for i, s in enumerate(seen) if u not in s] for u in ids}
    covered = [u for u, c in chosen.items() if not c]
    if covered:
        raise UserError(f"out-of-fold teacher: every member ({', '.join(map(str, paths))}) trained on {len(covered)} "
                        f"of the {len(ids)} clips (e.g. {covered[0]}); train members on folds that leave each clip "
                        "out (evaluate.cv --cross-fit), or set teacher.out_of_fold: false")
    return chosen


def _mix_members(model: nn.Module, inputs: Mapping[str, Tensor], lengths: Tensor, ids: Sequence[str],
                 members: Mapping[str, Sequence[int]]):
    """Main-level posteriors of a batch, each clip's the mean over the members listed for it."""
    nets = list(model.members) if isinstance(model, Ensemble) else [model]
    outs = [m(inputs, lengths) for m in nets]
    use = torch.zeros(len(nets), len(ids), dtype=torch.bool)  # [M, B]
    for j, u in enumerate(ids):
        use[list(members[u]), j] = True
    return ModelOutput(logits={"main": mean_posterior([o.main for o in outs], use)}, out_lengths=outs[0].out_lengths,
                       features={})


# ------------------------------------------------------------------------ time alignment


def rescale_index(num_frames: int, num_targets: int, augment: AugmentConfig | None, seed: int, epoch: int,
                  item: int) -> np.ndarray:
    """Source frame of every frame of item ``item`` after ``models.data``'s temporal rescale.

    A replica of the draw in ``CacheDataset.__getitem__`` (its generator is seeded by
    ``(seed, epoch, item)`` and the time scale is its first draw); :class:`StudentDataset`
    checks the resulting length on every item, and tests compare it with the dataset's output.
    """
    rng = np.random.default_rng([seed, epoch, item])
    scale = rng.uniform(-1, 1)
    idx = np.arange(num_frames)
    if augment is not None and augment.time_scale > 0 and num_frames > 1:
        new_t = max(1, round(num_frames * (1.0 + augment.time_scale * scale)))
        need = TIME_REDUCTION * num_targets
        if new_t < need:
            new_t = min(need, max(num_frames, new_t))
        idx = np.round(np.linspace(0, num_frames - 1, new_t)).astype(np.int64)
    return idx


def _lerp(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [S, D] at fractional positions ``pos`` [N] (clamped), linearly interpolated."""
    pos = np.clip(pos, 0, len(x) - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, len(x) - 1)
    w = (pos - i0)[:, None].astype(np.float32)  # [N, 1]
    return (1 - w) * x[i0] + w * x[i1]


def align_to_student(arrays: Mapping[str, np.ndarray], rates: Mapping[str, str], pos: np.ndarray) -> dict[str, np.ndarray]:
    """Teacher arrays of one clip on the student's time axis.

    Args:
        arrays: name -> [T, D] (frame rate) or [T // 4, D] (step rate) for the clean clip.
        rates: name -> "frame" | "step".
        pos: [T_s] source position (in clean frames, fractional allowed) of every student frame.

    Returns:
        name -> [T_s, D] (frame rate) or [max(1, T_s // 4), D] (step rate).
    """
    t_s = len(pos)
    frames = np.arange(t_s, dtype=np.float64)
    centres = np.arange(max(1, t_s // TIME_REDUCTION)) * TIME_REDUCTION + (TIME_REDUCTION - 1) / 2  # student step centres
    step_pos = (np.interp(centres, frames, pos) - (TIME_REDUCTION - 1) / 2) / TIME_REDUCTION  # in teacher steps
    return {name: _lerp(a, pos if rates[name] == "frame" else step_pos) for name, a in arrays.items()}


def warp_landmarks(kp: np.ndarray, mask: np.ndarray, cfg: LandmarkAugmentConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """KD-MSLRT's random time warp (``LandmarkAugment``'s distribution), also returning its source positions.

    Returns:
        (kp, mask, source) where ``source`` [T] is the fractional input frame of every output
        frame, or None when no warp was drawn.
    """
    t = kp.shape[0]
    if t <= 2 or rng.random() >= cfg.time_warp_prob:
        return kp, mask, None
    knot = rng.uniform(0.25, 0.75) * (t - 1)
    moved = float(np.clip(knot + rng.uniform(-cfg.time_warp, cfg.time_warp) * t, 1, t - 2))
    source = np.interp(np.arange(t, dtype=np.float64), [0, moved, t - 1], [0, knot, t - 1])
    kp, mask = LandmarkAugment.time_warp(kp, mask, source)
    return kp, mask, source


class StudentDataset(Dataset):
    """A student's training items: the cache split's (cropped, rescaled) items, optional KD-MSLRT
    landmark augmentations and optional teacher outputs aligned to the augmented time axis.

    Items gain ``"teacher": {name: float32 Tensor}`` (see :func:`align_to_student`). The
    landmark augmentation draws from a generator seeded by ``(seed, epoch, index, 1)``, so
    resumed runs replay it. The time warp runs first (it commutes with the per-frame affine
    map), so its source positions are known; the other steps come from ``LandmarkAugment``.
    With ``transfer``, items also gain ``"transfer"``: the KD-only view (spliced, then augmented).
    """

    def __init__(self, base: CacheDataset, teacher: TeacherCache | None = None,
                 landmark_augment: LandmarkAugmentConfig | None = None,
                 transfer: TransferConfig | None = None) -> None:
        self.base, self.teacher = base, teacher
        self.lengths = base.lengths
        self.epoch = 0
        self.lm_cfg = landmark_augment
        self.tr_cfg = transfer.augment if transfer is not None else None
        self.tr_splice = transfer.splice if transfer is not None else 0.0

        def augment(cfg: LandmarkAugmentConfig | None) -> LandmarkAugment | None:
            """The per-frame steps of ``cfg``; its time warp runs apart (warp_landmarks), to know its positions."""
            if cfg is None:
                return None
            if "keypoints" not in base.streams:
                raise ValueError("landmark augmentations need the keypoints stream; drop them for rgb students")
            k = int(base.config.get("num_keypoints") or 0)
            return LandmarkAugment(base.layout, k, replace(cfg, time_warp_prob=0.0))

        self.lm_aug, self.tr_aug = augment(landmark_augment), augment(self.tr_cfg)

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        x = item["inputs"]
        if "time_index" in item:  # a models.data that reports its rescale
            pos = np.asarray(item.pop("time_index"), dtype=np.float64)
        else:
            pos = rescale_index(self.base.lengths[i], len(self.base.targets[i]), self.base.augment, self.base.seed,
                                self.epoch, i).astype(np.float64)
        t = len(next(iter(x.values())))
        if len(pos) != t:
            raise RuntimeError(f"teacher alignment: item {i} has {t} frames but the replicated rescale gives "
                               f"{len(pos)}; models.data changed its temporal rescale, update rescale_index")
        if self.tr_aug is not None:  # its own draw, from the clip as the data section gives it
            rng = np.random.default_rng([self.base.seed, self.epoch, i, 2])
            kp, mask = x["keypoints"].numpy().copy(), x["keypoints_mask"].numpy().copy()
            if self.tr_splice > 0 and len(self) > 1 and t > 1 and rng.random() < self.tr_splice:
                other = self.base[int(i + 1 + rng.integers(len(self) - 1)) % len(self)]["inputs"]  # any other clip
                cut = int(rng.integers(t // 4, 3 * t // 4 + 1))
                start = int(rng.integers(0, max(1, len(other["keypoints"]) - (t - cut) + 1)))
                kp, mask = LandmarkAugment.splice(kp, mask, other["keypoints"].numpy(),
                                                  other["keypoints_mask"].numpy(), cut, start)
            kp, mask, _ = warp_landmarks(kp, mask, self.tr_cfg, rng)
            kp, mask = self.tr_aug(kp, mask, rng)
            item["transfer"] = {"keypoints": torch.from_numpy(kp), "keypoints_mask": torch.from_numpy(mask)}
        if self.lm_aug is not None and self.base.augment is not None:
            rng = np.random.default_rng([self.base.seed, self.epoch, i, 1])
            kp, mask, source = warp_landmarks(x["keypoints"].numpy(), x["keypoints_mask"].numpy(), self.lm_cfg, rng)
            if source is not None:
                pos = np.interp(source, np.arange(t, dtype=np.float64), pos)
            kp, mask = self.lm_aug(kp, mask, rng)
            x["keypoints"], x["keypoints_mask"] = torch.from_numpy(kp), torch.from_numpy(mask)
        if self.teacher is not None:
            arrays = self.teacher.load(item["id"])
            item["teacher_correct"] = bool(arrays.pop("correct"))
            item["teacher"] = {k: torch.from_numpy(v) for k, v in align_to_student(arrays, self.teacher.rates, pos).items()}
        return item


def student_collate(batch: list[dict[str, Any]]):
    """``models.data.collate`` plus a sixth element: padded teacher arrays (empty without a teacher),
    and a seventh: the padded transfer views' inputs (empty without them).

    Frame-rate arrays are padded to the batch's T, step-rate ones to max(1, T // 4) steps,
    exactly the student's output length, so the losses need no resampling.
    """
    inputs, lengths, targets, target_lengths, ids = collate(batch)
    teacher: dict[str, Tensor] = {}
    if "teacher" in batch[0]:
        t_max = int(lengths.max())
        for name in batch[0]["teacher"]:
            rows = [b["teacher"][name] for b in batch]
            steps = t_max if all(len(r) == n for r, n in zip(rows, lengths.tolist())) else max(1, t_max // TIME_REDUCTION)
            padded = rows[0].new_zeros((len(rows), steps, rows[0].shape[-1]))  # [B, T or T', D]
            for j, r in enumerate(rows):
                padded[j, : len(r)] = r
            teacher[name] = padded
        teacher["out_lengths"] = (lengths // TIME_REDUCTION).clamp(min=1)
        teacher["lengths"] = lengths
        teacher["correct"] = torch.tensor([b["teacher_correct"] for b in batch])  # [B] bool
    transfer = collate([{**b, "inputs": b["transfer"]} for b in batch])[0] if "transfer" in batch[0] else {}
    return inputs, lengths, targets, target_lengths, ids, teacher, transfer
