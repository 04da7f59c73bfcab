"""Checkpoints that rebuild their own model and refuse data they were not trained for.

A checkpoint is a plain dict saved with ``torch.save``: ``model_config`` (ModelConfig dict, or
a student's StudentConfig dict, then also saved as ``student_config``), ``input_spec``
(InputSpec dict), ``vocab`` (tokens), ``cache`` (dataset, extractor config and its hash),
``streams``, ``crop_size``, ``model`` (state dict), and for training also ``train_config``,
``data_config``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step``, ``rng`` and
``best``; students add ``recipe``, ``teacher``, ``distilled``, ``stage`` and ``extra_modules``.
It holds only tensors and plain Python values, so it loads with ``weights_only=True``.

:func:`load_checkpoint` is the one loader: it returns a :class:`Checkpoint`, where "student or
teacher", "which streams" and "which input tensors" are decided once, and ``build()`` rebuilds
the model; the training state (optimizer, RNG, ...) stays in ``Checkpoint.raw``.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models.base import InputSpec
from models.data import CacheDataset, cache_arrays, meta_config
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


def model_streams(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Streams a model built from ``config`` reads: a ``models.build.ModelConfig`` dict names them
    (``streams``), a ``models.students.StudentConfig`` dict has a ``kind`` (landmark students read
    keypoints, the others RGB)."""
    if "streams" in config:
        return tuple(config["streams"])
    if "kind" in config:
        return ("keypoints",) if config["kind"] == "landmark" else ("rgb",)
    raise ValueError(f"model config has neither 'streams' nor 'kind' (keys: {sorted(config)}); "
                     "pass input_names explicitly")


def model_input_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Input tensors a model built from ``config`` reads, in export order (keypoints bring their mask)."""
    return cache_arrays(model_streams(config))


@dataclass(frozen=True, eq=False)  # eq/repr would compare or print every weight tensor
class Checkpoint:
    """A loaded checkpoint: what its model is, what it reads, and how to rebuild it.

    Build one with :func:`load_checkpoint` (a file) or :meth:`from_dict` (a saved dict).
    """

    raw: dict[str, Any] = field(repr=False)  # the saved dict: weights, training state, recipe, teacher, ...
    path: Path | None  # the file it was read from
    vocab: tuple[str, ...]  # id -> gloss, blank first
    spec: InputSpec  # the inputs it was built for
    kind: str  # "student" (models.students) or "teacher" (models.build)
    config: dict[str, Any]  # its StudentConfig or ModelConfig dict
    streams: tuple[str, ...]  # cache streams it is fed (saved by the trainers; inferred for older files)
    members: tuple["Checkpoint", ...] = field(default=(), repr=False)  # an ensemble's members, in order

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], path: str | os.PathLike | None = None) -> "Checkpoint":
        raw = dict(raw)
        student = "student_config" in raw or "kind" in raw["model_config"]
        config = dict(raw.get("student_config") or raw["model_config"]) if student else dict(raw["model_config"])
        if raw.get("streams"):
            streams = tuple(raw["streams"])
        elif student:
            streams = model_streams({"kind": config.get("kind", "landmark")})
        else:
            streams = tuple(config.get("streams") or ["keypoints"])
        return cls(raw, Path(path) if path is not None else None, tuple(raw["vocab"]), InputSpec(**raw["input_spec"]),
                   "student" if student else "teacher", config, streams)

    @property
    def is_student(self) -> bool:
        return self.kind == "student"

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's input tensors, in export order."""
        return model_input_names(self.config)

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The model's state dict."""
        return self.raw["model"]

    @property
    def dataset(self) -> str | None:
        """The dataset it was trained on."""
        return (self.raw.get("cache") or {}).get("dataset")

    @property
    def cache_config(self) -> dict[str, Any]:
        """The extractor settings of the cache it was trained on."""
        return dict((self.raw.get("cache") or {}).get("config") or {})

    @property
    def train_config(self) -> dict[str, Any]:
        return dict(self.raw.get("train_config") or {})

    @property
    def rules(self) -> str:
        """The WER rules it was trained (and is scored) with."""
        return self.train_config.get("rules") or "none"

    @property
    def epoch(self) -> int | None:
        return self.raw.get("epoch")

    @property
    def best(self) -> float | None:
        """The metric (dev WER, else training loss) that selected it."""
        return self.raw.get("best")

    @property
    def crop_size(self) -> int:
        """The evaluation centre crop (0: none); older files did not save it: a spec smaller than the
        cache's RGB size then means a crop."""
        crop = self.raw.get("crop_size")
        if crop is None:
            cached = int(self.cache_config.get("rgb_size") or 0)
            crop = self.spec.rgb_size if 0 < self.spec.rgb_size < cached else 0
        return int(crop)

    def model_config(self) -> Any:
        """Its ``StudentConfig`` or ``ModelConfig`` (ImageNet initialisation off: the weights are all saved)."""
        if self.is_student:
            from models.students import StudentConfig

            return StudentConfig.from_dict(self.config)
        from models.build import ModelConfig  # lazy: building pulls torchvision

        return replace(ModelConfig.from_dict(self.config), rgb_pretrained=None)

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model, rebuilt from its own config, spec and vocabulary size, with its weights; eval mode."""
        # The saved state dict holds every weight: ImageNet initialisation is neither needed nor
        # wanted (its file may not exist where the model is evaluated), nor its random-init warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if self.is_student:
                from models.students import build_student

                model = build_student(self.model_config(), len(self.vocab), self.spec)
            else:
                from models.build import build_model

                model = build_model(self.model_config(), len(self.vocab), self.spec)
        model.load_state_dict(self.weights)
        return model.to(device).eval()

    def dataset_split(self, cache: str | os.PathLike, split: str, dataset: str | None = None,
                      name: str | None = None) -> CacheDataset:
        """The cached ``split`` as this model reads it (its streams and evaluation crop), after checking
        the cache matches it. ``dataset`` defaults to the one it was trained on."""
        name = name or str(self.path or "the checkpoint")
        dataset = dataset or self.dataset
        if not dataset:
            raise ValueError(f"{name}: the checkpoint does not name its dataset; pass --dataset")
        check_compatible(self, cache, dataset, ckpt_name=name)
        return CacheDataset(cache, dataset, split, self.streams, augment=None, crop_size=self.crop_size,
                            require_targets=False)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint file (``weights_only``); a missing or corrupt file gives one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; train one with `make teacher` first")
    try:
        raw = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a truncated/foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); "
                         "retrain or restore it") from None
    if not isinstance(raw, dict) or "model_config" not in raw or "model" not in raw:
        raise ValueError(f"{path}: not a signdistill checkpoint (no model_config/model entries)")
    return Checkpoint.from_dict(raw, path)


def spec_to_dict(spec: InputSpec) -> dict[str, Any]:
    return asdict(spec)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """A teacher or student rebuilt from its checkpoint (eval mode), and the checkpoint."""
    ckpt = load_checkpoint(path, "cpu")
    return ckpt.build(device), ckpt


def check_compatible(ckpt: Checkpoint, cache_root: str | os.PathLike, dataset: str,
                     ckpt_name: str = "the checkpoint") -> None:
    """Refuse a cache whose vocabulary or extractor configuration differs from the checkpoint's.

    Raises ValueError with one line naming both sides (``ckpt_name``, usually its path) and the fix.
    """
    ddir = cache_lib.dataset_dir(cache_root, dataset)
    vocab_path = ddir / "vocab.json"
    if not vocab_path.is_file():
        raise FileNotFoundError(f"{vocab_path}: no vocabulary; run `make features DATASET={dataset}` first")
    cache_vocab = Vocabulary.load(vocab_path).tokens
    ck_vocab = ckpt.vocab
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
    want = ckpt.cache_config
    diffs = [
        f"{k}={want[k]!r} vs {have.get(k)!r}"
        for s in ckpt.streams for k in STREAM_KEYS.get(s, ())
        if k in want and want[k] != have.get(k)
    ]
    if diffs:
        raise ValueError(
            f"extractor mismatch: {ckpt_name} was trained on a cache with different settings than "
            f"{ddir / 'meta.json'} ({'; '.join(diffs)}, checkpoint vs cache); rebuild the cache with "
            "the checkpoint's settings (`make features`) or use a checkpoint trained on this cache"
        )
