"""`make student`: train a student with a distillation recipe, or its CTC-only twin (`--no-kd`).

    python -m distill.train --recipe kdmslrt [--teacher CKPT] [--cache DIR] [--out DIR]
                            [--no-kd] [--resume] [--epochs N] [--rebuild-teacher-cache] [--train-teacher]

Steps: (1) refuse bad input before anything trains: a student that cannot read the cache, a
teacher whose vocabulary or extractor settings differ from the cache's, a teacher whose time
reduction differs from the student's (measured on a probe clip), a stale teacher-output
cache; (2) run the frozen teacher once over the training split into
``<out>/teacher_outputs/train`` (``distill.teacher_cache``); (3) train the student with the
``models.train`` loop through ``TrainHooks``: CTC over the recipe's levels plus the recipe's
distillation loss, stage by stage (SMKD: sentences -> per-gloss segments -> fine-tuning);
(4) decode dev and test with ``best.pt`` (and, for KD-MSLRT, train the text corrector on the
training transcripts and score its output too) into ``<out>/results.json``.

Teacher: ``--teacher``, else ``exp/teachers/<teacher.name>/best.pt``, else
``exp/kd_teachers/<teacher.name>/best.pt``; ``--train-teacher`` trains the latter from the
recipe's ``teacher.config`` when neither exists. Output: ``--out``, else
``exp/students/<recipe>`` (``exp/students/<recipe>_ctc`` with ``--no-kd``). With stages, each
stage has its own folder and the last stage's ``best.pt`` is copied to ``<out>/best.pt``.
Checkpoints hold the student config (``kind`` ...), the recipe and the teacher fingerprint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from distill.losses import FeatureProjector, ctc_alignment_segments, hierarchical_kd, kd_kl, smkd_self_distill
from distill.recipes import Recipe, StageConfig, load_recipe, recipe_dict, student_config
from distill.teacher_cache import (StudentDataset, TeacherCache, prepare_teacher_cache, probe, student_collate,
                                   teacher_fingerprint)
from models.ensemble import checkpoint_paths, load_ensemble
from models.base import TIME_REDUCTION, InputSpec, ModelOutput
from models.checkpoint import Checkpoint, check_compatible, load_checkpoint, load_model, remove_stale_temps
from models.data import BucketBatchSampler, CacheDataset, collate, input_spec
from models.decoding import decode_dataset
from models.students import build_student
from models.runtime import world_size
from models.train import RunConfig, TrainHooks, TrainingStopped, load_config, read_metrics, train
from preprocess import cache as cache_lib
from preprocess.commandline import add_cache, add_device, add_out, command, prog
from preprocess.configs import UserError
from preprocess.device import resolve_device
from preprocess.files import atomic_write_text
from preprocess.vocab import Vocabulary

log = logging.getLogger("distill.train")  # not __name__: that is "__main__" under python -m


# --------------------------------------------------------------------------------- student


def build_recipe_student(student: dict[str, Any], vocab_size: int, spec: InputSpec) -> nn.Module:
    """The recipe's student (its dict is a ``StudentConfig``), for a cache whose inputs ``spec`` describes."""
    return build_student(student_config(student), vocab_size, spec)


# --------------------------------------------------------------------------------- teacher


def default_teacher(name: str) -> Path:
    """exp/teachers/<name>/best.pt (the lead's `make teacher`), else exp/kd_teachers/<name>/best.pt."""
    primary = Path("exp") / "teachers" / name / "best.pt"
    return primary if primary.is_file() else Path("exp") / "kd_teachers" / name / "best.pt"


def resolve_teacher(recipe: Recipe, teacher: str | None, cache: str, train_teacher: bool, device: str) -> Path:
    """The teacher checkpoint to use, trained first when asked to and missing."""
    assert recipe.teacher is not None
    path = Path(teacher) if teacher else default_teacher(recipe.teacher.name)
    if path.is_file():
        return path
    if teacher or not train_teacher:
        hint = (f"train it with `python -m models.train --config {recipe.teacher.config} --cache {cache} "
                f"--out {path.parent}`, pass --train-teacher, or pass --teacher" if recipe.teacher.config else "pass --teacher")
        raise FileNotFoundError(f"{path}: teacher checkpoint not found; {hint}")
    if not recipe.teacher.config:
        raise ValueError(f"{path}: teacher missing and the recipe gives no teacher.config to train it from")
    log.info("training the missing teacher %s into %s", recipe.teacher.name, path.parent)
    train(load_config(recipe.teacher.config, cache=cache), path.parent, device=device)
    return path


def check_time_reduction(teacher: nn.Module, teacher_spec: InputSpec, teacher_streams: Sequence[str],
                         student: nn.Module, spec: InputSpec, streams: Sequence[str], teacher_name: str,
                         frames: int = 32) -> None:
    """Refuse a teacher whose posteriors do not have the student's steps on the same clip length."""
    t_steps = probe(teacher, teacher_spec, teacher_streams, frames).main.shape[1]
    s_steps = probe(student, spec, streams, frames).main.shape[1]
    if t_steps != s_steps:
        raise ValueError(
            f"time reduction mismatch: teacher {teacher_name} turns {frames} frames into {t_steps} steps but the "
            f"student into {s_steps} (x{frames / max(t_steps, 1):g} vs x{frames / max(s_steps, 1):g}); "
            f"distil from a teacher with the student's reduction (models.base.TIME_REDUCTION = {TIME_REDUCTION})")


def check_online_teacher(recipe: Recipe, teacher: nn.Module, tckpt: Checkpoint, spec: InputSpec,
                         streams: Sequence[str], name: str) -> nn.Module:
    """The teacher, frozen, once it is known to read exactly the student's inputs (it runs on them)."""
    tstreams = tckpt.streams
    if not set(tstreams) <= set(streams) or tckpt.spec != spec:
        raise UserError(f"teacher {name} reads {list(tstreams)} ({asdict(tckpt.spec)}) but the student "
                        f"{list(streams)} ({asdict(spec)}); an online teacher (teacher.online) must read the "
                        "student's inputs: cache its outputs instead (teacher.online: false)")
    if recipe.kd.only_correct:
        raise UserError("kd.only_correct needs the cached teacher outputs; set teacher.online: false")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def warn_if_teacher_weaker(teachers: Sequence[Path], out_dir: Path) -> str | None:
    """One warning line when the teacher's dev WER is worse than the student's CTC-only twin's.

    The teacher's figure is the best dev WER in its ``metrics.jsonl`` (the best member's, for an
    ensemble); the twin's is ``<out>_ctc/results.json`` as ``--no-kd`` writes it. Distilling from a
    weaker teacher usually makes the student worse, which should never happen silently.
    """
    dev = [r["dev_wer"] for t in teachers for r in read_metrics(t.parent / "metrics.jsonl") if "dev_wer" in r]
    twin = out_dir.parent / f"{out_dir.name}_ctc" / "results.json"
    if not dev or not twin.is_file():
        return None
    twin_wer = json.loads(twin.read_text(encoding="utf-8")).get("splits", {}).get("dev", {}).get("wer")
    if twin_wer is None or min(dev) <= twin_wer:
        return None
    msg = (f"the teacher's dev WER ({min(dev):.2f}%) is worse than the CTC-only twin's ({twin_wer:.2f}%, {twin}): "
           "distillation will likely make the student worse; train a stronger teacher (or an ensemble: --teacher a b c)")
    log.warning("%s", msg)
    return msg


# ---------------------------------------------------------------------------------- losses


def make_projectors(recipe: Recipe, student_out: ModelOutput, teacher_dims: dict[str, int]) -> nn.ModuleDict:
    """A learned linear map for every distilled feature whose student and teacher widths differ."""
    projectors = nn.ModuleDict()
    for name, w in recipe.kd.features.items():
        if w <= 0:
            continue
        if name not in student_out.features:
            raise ValueError(f"kd.features: the {recipe.kind} student has no feature {name!r} "
                             f"(it has {sorted(student_out.features)})")
        ds, dt = student_out.features[name].shape[-1], teacher_dims[recipe.kd.teacher_feature(name)]
        if ds != dt:
            projectors[name] = FeatureProjector(ds, dt)
    return projectors


def segment_cross_entropy(logits: Tensor, out_lengths: Tensor, glosses: Tensor) -> Tensor:
    """Every valid step of a single-gloss clip predicts that gloss (frame-level pseudo-labels).

    Args:
        logits: [B, T', V] e.g. the visual module's "conv_main" level.
        out_lengths: [B] valid steps.
        glosses: [B] the gloss of each clip.

    Returns:
        scalar: cross-entropy averaged over valid steps.
    """
    b, t, _ = logits.shape
    ce = F.cross_entropy(logits.float().transpose(1, 2), glosses[:, None].expand(b, t), reduction="none")  # [B, T']
    valid = (torch.arange(t, device=logits.device)[None] < out_lengths[:, None]).float()
    return (ce * valid).sum() / valid.sum().clamp(min=1)


def online_teacher_outputs(teacher: nn.Module, recipe: Recipe, inputs: dict[str, Tensor], lengths: Tensor
                           ) -> dict[str, Tensor]:
    """The teacher's outputs on the student's own (augmented) batch, laid out as the cached ones:
    main-level log-probabilities plus the distilled features."""
    with torch.no_grad():
        out = teacher(inputs, lengths)
    arrays = {"logits": out.main.float().log_softmax(-1)}  # [B, T', V]
    arrays.update({name: out.features[name].float() for name in recipe.teacher.features})
    return arrays


def make_extra_loss(recipe: Recipe, use_kd: bool, use_smkd: bool, projectors: nn.ModuleDict | None,
                    segment_ce: float = 0.0, online: nn.Module | None = None,
                    student: Callable[[], nn.Module] | None = None,
                    ) -> Callable[[ModelOutput, Sequence[Any], int], tuple[Tensor, dict[str, Tensor]]] | None:
    """The loss added to CTC: hierarchical KD from the cached (or, with ``online``, the live)
    teacher, SMKD, and/or the segment cross-entropy (single-gloss batches only); None for CTC only.
    With ``recipe.transfer``, ``online`` and ``student`` (the model being trained), also the KL of
    the student to the teacher on the batch's transfer views (``batch[6]``)."""
    kd, sm = recipe.kd, recipe.smkd
    weights = {"posterior": kd.posterior, "occupancy": kd.occupancy, **kd.features} if use_kd else {}
    if not weights and not use_smkd and segment_ce <= 0:
        return None

    def extra_loss(out: ModelOutput, batch: Sequence[Any], epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        total = out.main.new_zeros((), dtype=torch.float32)
        parts: dict[str, Tensor] = {}
        if weights:
            device = out.main.device
            cached = (batch[5] if online is None else
                      online_teacher_outputs(online, recipe, {k: v.to(device) for k, v in batch[0].items()},
                                             batch[1].to(device)))
            teacher = {"logits": cached["logits"].to(device)}
            teacher.update({name: cached[kd.teacher_feature(name)].to(device) for name in kd.features})
            student_out, frames = out, batch[1].to(device)
            if kd.only_correct:  # keep the clips the teacher gets right (rows of the batch)
                keep = cached["correct"].to(device)
                student_out = ModelOutput({k: v[keep] for k, v in out.logits.items()}, out.out_lengths[keep],
                                      {k: v[keep] for k, v in out.features.items()})
                teacher, frames = {k: v[keep] for k, v in teacher.items()}, frames[keep]
            if len(frames):
                loss, p = hierarchical_kd(student_out, teacher, frames, weights, projectors, kd.temperature,
                                          kd.blank_mode)
                total = total + loss
                parts.update({f"kd_{k}": v.detach() for k, v in p.items()})
            if recipe.transfer is not None and online is not None and student is not None and len(batch) > 6 and batch[6]:
                views, lengths = {k: v.to(device) for k, v in batch[6].items()}, batch[1].to(device)
                seen = student()(views, lengths)
                taught = online_teacher_outputs(online, recipe, views, lengths)["logits"]
                loss = kd_kl(seen.main, taught, seen.out_lengths, kd.temperature, kd.blank_mode)
                total = total + recipe.transfer.weight * loss
                parts["kd_transfer"] = loss.detach()
        if use_smkd:
            loss = smkd_self_distill(out.logits["conv_main"], out.logits["main"], out.out_lengths, sm.temperature)
            total = total + sm.weight * loss
            parts["smkd"] = loss.detach()
        if segment_ce > 0:  # segment batches: targets are one gloss per clip
            loss = segment_cross_entropy(out.logits["conv_main"], out.out_lengths, batch[2].to(out.main.device))
            total = total + segment_ce * loss
            parts["segment_ce"] = loss.detach()
        return total, parts

    return extra_loss


# ---------------------------------------------------------------------- gloss segmentation


@torch.no_grad()
def gloss_segments(model: nn.Module, ds: CacheDataset, batch_size: int = 8) -> dict[str, list[list[int]]]:
    """SMKD gloss segmentation: per utterance, ``[start, end, gloss]`` input-frame spans from the
    CTC forced alignment of the model's main posteriors (blanks shared out, so spans tile the clip).

    Utterances whose alignment is impossible (too few steps for their glosses) are left out.
    """
    model.eval()
    device = next(model.parameters()).device
    targets = {u.id: t for u, t in zip(ds.utts, ds.targets)}
    loader = DataLoader(ds, batch_sampler=BucketBatchSampler(ds.lengths, batch_size, shuffle=False), collate_fn=collate)
    segments: dict[str, list[list[int]]] = {}
    for inputs, lengths, _, _, ids in loader:
        out = model({k: v.to(device) for k, v in inputs.items()}, lengths.to(device))
        logp = out.main.float().log_softmax(-1).cpu()  # [B, T', V]
        for j, uid in enumerate(ids):
            tp, t = int(out.out_lengths[j]), int(lengths[j])
            try:
                segs = ctc_alignment_segments(logp[j, :tp], targets[uid], absorb_blanks=True)
            except ValueError:
                continue
            spans = [[a * TIME_REDUCTION, b * TIME_REDUCTION, g] for a, b, g in segs]
            spans[-1][1] = t  # frames past the last full step belong to the last gloss
            segments[uid] = spans
    return segments


class MixedDataset(Dataset):
    """Several training sets as one (e.g. sentences and their gloss segments); lengths concatenated."""

    def __init__(self, *parts: Dataset) -> None:
        self.parts = parts
        self.lengths = [n for p in parts for n in p.lengths]
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k][i - int(self.starts[k])]


class SegmentDataset(Dataset):
    """Per-gloss clips of a training split: each item is one span of one (augmented) utterance
    with that single gloss as its target (SMKD's gloss-segmentation stage)."""

    def __init__(self, base: CacheDataset | StudentDataset, ids: Sequence[str], segments: dict[str, list[list[int]]]) -> None:
        self.base = base
        self.items = [(i, s, e, g) for i, uid in enumerate(ids) for s, e, g in segments.get(uid, [])]
        if not self.items:
            raise ValueError("gloss segmentation produced no segments; train the first stage longer")
        self.lengths = [e - s for _, s, e, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i, s, e, g = self.items[j]
        item = self.base[i]
        return {"inputs": {k: v[s:e] for k, v in item["inputs"].items()},
                "targets": torch.tensor([g], dtype=torch.long), "id": f"{item['id']}#{j}"}


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def decode_split(model: nn.Module, ckpt: Checkpoint, cache: str, dataset: str, split: str,
                 beam: int) -> dict[str, list[str]] | None:
    """Hypotheses of a split (None when the split has no cached utterance)."""
    ds = ckpt.dataset_split(cache, split, dataset)
    if len(ds) == 0:
        return None
    return decode_dataset(model, ds, ckpt.vocab, beam=beam)


def evaluate_run(recipe: Recipe, best: Path, out_dir: Path, kd: bool) -> dict[str, Any]:
    """Dev/test WER of ``best`` (+ the text corrector's, when the recipe has one) -> results dict."""
    from evaluate.core.formats import write_text
    from evaluate.core.wer import score
    from preprocess.manifest import read_manifest

    dc = recipe.data
    model, ckpt = load_model(best)
    rules = recipe.train.rules
    manifest = read_manifest(cache_lib.dataset_dir(dc.cache, dc.dataset) / "manifest.jsonl")
    refs = {u.id: list(u.glosses) for u in manifest}
    results: dict[str, Any] = {
        "recipe": recipe.name, "method": recipe.method, "mode": "kd" if kd else "ctc", "student": recipe.kind,
        "checkpoint": str(best), "epoch": ckpt.epoch, "params": sum(p.numel() for p in model.parameters()),
        "size_bytes": sum(v.numel() * v.element_size() for v in ckpt.weights.values()),
        "teacher": ckpt.raw.get("teacher"), "beam": recipe.eval_beam, "splits": {},
    }
    hyps: dict[str, dict[str, list[str]]] = {}
    for split in ("dev", "test"):
        h = decode_split(model, ckpt, dc.cache, dc.dataset, split, recipe.eval_beam)
        if h is None:
            continue
        hyps[split] = h
        write_text(out_dir / "eval" / f"{split}.hyp.txt", h)
        results["splits"][split] = score(h, {u: refs[u] for u in h}, rules).to_dict()
        log.info("%s %s: WER %.2f%%", recipe.name, split, results["splits"][split]["wer"])

    if recipe.correction is not None and hyps:
        from distill.correction import CorrectionConfig, confusions_from_hypotheses, correct, train_corrector

        vocab = Vocabulary(ckpt.vocab)
        settings = dict(recipe.correction)
        confusions = None
        if settings.pop("confusions", False):  # practise on the substitutions this student makes
            train_hyps = decode_split(model, ckpt, dc.cache, dc.dataset, dc.train_split, beam=1) or {}
            confusions = confusions_from_hypotheses(refs, train_hyps)
        sents = [u.glosses for u in manifest if u.split == dc.train_split]
        corrector = train_corrector(sents, vocab, CorrectionConfig.from_dict(settings), out_dir / "corrector.pt",
                                    progress=False, confusions=confusions)
        for split, h in hyps.items():
            fixed = correct(corrector, h, unknown="keep")
            write_text(out_dir / "eval" / f"{split}.corrected.txt", fixed)
            r = score(fixed, {u: refs[u] for u in fixed}, rules).to_dict()
            results["splits"][split]["corrected"] = r
            log.info("%s %s: WER %.2f%% after text correction", recipe.name, split, r["wer"])
    return results


# ----------------------------------------------------------------------------------- run


def _json_safe(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


@dataclass
class _Teacher:
    """What distillation needs from the teacher, prepared once before the stages."""

    info: dict[str, Any] | None = None  # saved in every checkpoint: path, fingerprint, online
    cache: TeacherCache | None = None  # its cached outputs on the training split (teacher.online: False)
    online: nn.Module | None = None  # the frozen teacher itself, run inside the training loop (teacher.online)
    projectors: nn.ModuleDict | None = None  # student -> teacher feature maps, trained beside the student
    cache_s: float = 0.0  # seconds spent building the output cache


def _probe_student(recipe: Recipe) -> tuple[InputSpec, nn.Module, ModelOutput]:
    """The inputs the student reads from the cache, a probe instance of it and its output on a probe
    clip; refuses a student that cannot read this cache, or a cache without a vocabulary."""
    dc = recipe.data
    vocab_path = cache_lib.dataset_dir(dc.cache, dc.dataset) / "vocab.json"
    meta = cache_lib.read_meta(dc.cache, dc.dataset)
    if not vocab_path.is_file():
        raise FileNotFoundError(f"{vocab_path}: no vocabulary; run `make features DATASET={dc.dataset}` first")
    spec = input_spec(meta, dc.augment.crop_size, recipe.streams)
    try:
        student = build_recipe_student(recipe.student, len(Vocabulary.load(vocab_path)), spec)
    except ValueError as e:
        raise ValueError(f"recipe {recipe.name}: {e}") from None
    return spec, student, probe(student, spec, recipe.streams)


def _prepare_teacher(recipe: Recipe, teacher: str | Sequence[str] | None, out_dir: Path, spec: InputSpec,
                     probe_student: nn.Module, student_out: ModelOutput, train_teacher: bool,
                     rebuild_teacher_cache: bool, device: str) -> _Teacher:
    """Resolve and check the teacher (vocabulary, extractor settings, time reduction), then cache its
    outputs on the training split, or keep it to run online; and the feature projectors."""
    dc, streams = recipe.data, recipe.streams
    given = [None] if teacher is None else [str(p) for p in checkpoint_paths(teacher)]  # several: an ensemble
    tpath = [resolve_teacher(recipe, p, dc.cache, train_teacher, device) for p in given]
    tmodel, tckpt = load_ensemble(tpath)
    for p, member in zip(tpath, tckpt.members or [tckpt]):
        check_compatible(member, dc.cache, dc.dataset, ckpt_name=f"teacher {p}")
    tname = ",".join(map(str, tpath))
    check_time_reduction(tmodel, tckpt.spec, tckpt.streams, probe_student, spec, streams, tname)
    out = _Teacher(info={"path": tname, "fingerprint": teacher_fingerprint(tckpt), "online": recipe.teacher.online,
                         "out_of_fold": recipe.teacher.out_of_fold})
    warn_if_teacher_weaker(tpath, out_dir)
    if recipe.transfer is not None and world_size() > 1:
        raise UserError("transfer views run the student a second time, outside the DDP wrapper: "
                        "train a recipe with a transfer section in one process")
    if recipe.teacher.online:
        tmodel = check_online_teacher(recipe, tmodel, tckpt, spec, streams, tname)
        teacher_dims = {n: int(f.shape[-1]) for n, f in  # probed on the CPU, before the move to the device
                        probe(tmodel, spec, streams).features.items() if n in recipe.teacher.features}
        out.online = tmodel.to(device)
    else:
        del tmodel
        t0 = time.time()
        out.cache = prepare_teacher_cache(tpath, dc.cache, dc.dataset, dc.train_split,
                                          out_dir / "teacher_outputs" / dc.train_split, recipe.teacher.features,
                                          recipe.teacher.reduce_dim, rebuild=rebuild_teacher_cache,
                                          out_of_fold=recipe.teacher.out_of_fold)
        out.cache_s = time.time() - t0
        teacher_dims = out.cache.dims
    torch.manual_seed(recipe.train.seed + 1)  # projectors: their own seed, the student's init is untouched
    out.projectors = make_projectors(recipe, student_out, teacher_dims)
    return out


def _stage_data(recipe: Recipe, stage: StageConfig, teacher: TeacherCache | None, segments: dict[str, list[list[int]]] | None,
                transfer: bool = False) -> Callable[[CacheDataset], Dataset]:
    """How a stage wraps the training split: sentences (+ cached teacher outputs, + transfer views),
    gloss segments, or both."""
    dc, lm_aug = recipe.data, recipe.landmark_augment
    if stage.data == "segments":
        def wrap(ds: CacheDataset) -> Dataset:
            return SegmentDataset(StudentDataset(ds, None, lm_aug), [u.id for u in ds.utts], segments)
    elif stage.data == "sentences+segments":
        def wrap(ds: CacheDataset) -> Dataset:
            clean = CacheDataset(dc.cache, dc.dataset, dc.train_split, ds.streams,  # spans: no rescale
                                 replace(dc.augment, time_scale=0.0), seed=ds.seed)
            return MixedDataset(StudentDataset(ds, None, lm_aug),
                                SegmentDataset(StudentDataset(clean, None, lm_aug), [u.id for u in ds.utts], segments))
    else:
        views = recipe.transfer if transfer else None

        def wrap(ds: CacheDataset) -> Dataset:
            return StudentDataset(ds, teacher, lm_aug, views)
    return wrap


def _stage_hooks(recipe: Recipe, stage: StageConfig, kd: bool, use_kd: bool, use_smkd: bool, teacher: _Teacher,
                 init: Path | None, segments: dict[str, list[list[int]]] | None, extra: dict[str, Any]) -> TrainHooks:
    """The ``models.train`` hooks of one stage: the student (from the previous stage's best), its
    training data, the loss added to CTC and what its checkpoints carry."""
    student_dict = dict(recipe.student)
    distill_here = stage.distill and stage.data != "segments"  # KD/SMKD on sentences (+ their segments)
    kd_here = use_kd and stage.distill and stage.data == "sentences"

    built: dict[str, nn.Module] = {}  # the student as built, for the transfer views' forward pass

    def factory(n: int, s: InputSpec) -> nn.Module:
        model = built["model"] = build_recipe_student(student_dict, n, s)
        if init is not None:
            state = load_checkpoint(init)
            model.load_state_dict(state.weights)
            if teacher.projectors is not None and "extra_modules" in state.raw:
                teacher.projectors.load_state_dict(state.raw["extra_modules"])
        return model

    return TrainHooks(
        build_model=factory, model_config=student_dict,
        extra_loss=make_extra_loss(recipe, kd_here, use_smkd and distill_here, teacher.projectors,
                                   stage.segment_ce if kd else 0.0, teacher.online if kd_here else None,
                                   student=lambda: built["model"]),
        extra_modules=teacher.projectors if kd_here else None,
        train_data=_stage_data(recipe, stage, teacher.cache if kd_here else None, segments,
                               transfer=kd_here and teacher.online is not None),
        collate=student_collate,
        checkpoint_extra={**extra, "stage": stage.name},
    )


def _stage_config(recipe: Recipe, stage: StageConfig) -> RunConfig:
    """A stage's training run: its epochs, learning rate and CTC levels; segments keep clean frame timing."""
    tc = replace(recipe.train, epochs=stage.epochs, lr=stage.lr or recipe.train.lr,
                 level_weights=stage.level_weights or recipe.train.level_weights)
    dc = recipe.data
    if stage.data == "segments":  # spans are in clean frames: no temporal rescale here
        dc = replace(dc, augment=replace(dc.augment, time_scale=0.0))
    return RunConfig(dc, student_config(dict(recipe.student)), tc)


def _publish_best(stage_best: Path, out_dir: Path) -> Path:
    """``<out>/best.pt``: the last stage's best checkpoint, copied atomically when stages have their own folders."""
    best = out_dir / "best.pt"
    if stage_best != best:
        tmp = out_dir / ".best.pt.tmp"
        shutil.copyfile(stage_best, tmp)
        os.replace(tmp, best)
    return best


def run_recipe(recipe: Recipe, out_dir: str | os.PathLike, teacher: str | Sequence[str] | None = None, kd: bool = True,
               resume: bool = False, rebuild_teacher_cache: bool = False, train_teacher: bool = False,
               device: str = "cpu") -> dict[str, Any]:
    """Check inputs, cache the teacher, train every stage, evaluate; returns the results dict."""
    out_dir = Path(out_dir)
    remove_stale_temps(out_dir)  # the best.pt copy of a killed run (stage folders clean their own)
    spec, probe_student, student_out = _probe_student(recipe)
    use_kd = kd and recipe.teacher is not None and recipe.kd.active
    prepared = _Teacher()
    if use_kd:
        prepared = _prepare_teacher(recipe, teacher, out_dir, spec, probe_student, student_out, train_teacher,
                                    rebuild_teacher_cache, device)
    del probe_student

    stages = recipe.stage_list(kd)
    use_smkd = kd and recipe.smkd.weight > 0
    extra = {"student_config": dict(recipe.student), "recipe": _json_safe(recipe_dict(recipe)),
             "teacher": prepared.info, "distilled": bool(use_kd or use_smkd)}
    prev_best: Path | None = None
    for k, stage in enumerate(stages):
        run = _stage_config(recipe, stage)
        segments = None
        if stage.data in ("segments", "sentences+segments"):
            segments = _segments(prev_best, recipe, run.data, out_dir / "segments.json")
        hooks = _stage_hooks(recipe, stage, kd, use_kd, use_smkd, prepared, prev_best, segments, extra)
        log.info("%s: stage %d/%d %r (%s, %d epochs, %s)", recipe.name, k + 1, len(stages), stage.name, stage.data,
                 stage.epochs, "distillation" if hooks.extra_loss else "CTC only")
        summary = train(run, out_dir if len(stages) == 1 else out_dir / stage.name, resume=resume, device=device,
                        hooks=hooks)
        prev_best = Path(summary["best_path"] or summary["last"])

    results = evaluate_run(recipe, _publish_best(prev_best, out_dir), out_dir, kd)
    results["teacher_cache_s"] = round(prepared.cache_s, 2)
    results["epoch_time_s"] = _epoch_times(out_dir, stages)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1) + "\n")
    return results


def _segments(stage_best: Path | None, recipe: Recipe, dc, path: Path) -> dict[str, list[list[int]]]:
    """Gloss segments from the previous stage's best model, computed once per run (segments.json)."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    assert stage_best is not None
    model, ckpt = load_model(stage_best)
    ds = CacheDataset(dc.cache, dc.dataset, dc.train_split, recipe.streams, augment=None,
                      crop_size=dc.augment.crop_size)
    segments = gloss_segments(model, ds, recipe.train.batch_size)
    n = sum(len(v) for v in segments.values())
    log.info("gloss segmentation: %d segments from %d of %d utterances", n, len(segments), len(ds))
    atomic_write_text(path, json.dumps(segments) + "\n")
    return segments


def _epoch_times(out_dir: Path, stages: Sequence[StageConfig]) -> dict[str, float]:
    """Mean training seconds per epoch of every stage (metrics.jsonl)."""
    times: dict[str, float] = {}
    for stage in stages:
        rows = read_metrics((out_dir if len(stages) == 1 else out_dir / stage.name) / "metrics.jsonl")
        if rows:
            times[stage.name] = round(float(np.mean([r["train_time_s"] for r in rows])), 3)
    return times


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("distill.train"), description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", required=True, help="recipe name (configs/recipes/<name>.yaml) or a YAML path")
    p.add_argument("--teacher", nargs="+", help="teacher checkpoint (default exp/teachers/<name>/best.pt, else "
                   "exp/kd_teachers/...); several checkpoints: their ensemble (mean posterior) teaches")
    add_cache(p, "feature cache root (overrides data.cache)")
    p.add_argument("--dataset", help="dataset under the cache root (overrides data.dataset): one recipe, any corpus")
    add_out(p, "output folder (default exp/students/<recipe>[_<dataset>], + _ctc with --no-kd)")
    p.add_argument("--no-kd", action="store_true", help="train the same student with CTC alone (the ablation twin)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last.pt files")
    p.add_argument("--epochs", type=int, help="override the epochs (of every stage, when the recipe has stages)")
    p.add_argument("--rebuild-teacher-cache", action="store_true", help="rebuild a stale teacher-output cache")
    p.add_argument("--train-teacher", action="store_true", help="train the recipe's teacher when no checkpoint exists")
    add_device(p, "training device")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        device = str(resolve_device(args.device))
        recipe = load_recipe(args.recipe, cache=args.cache, epochs=args.epochs)
        name = recipe.name
        if args.dataset and args.dataset != recipe.data.dataset:
            recipe = replace(recipe, data=replace(recipe.data, dataset=args.dataset))
            if recipe.teacher is not None:  # the teacher `models.train --dataset` trained on that corpus
                recipe = replace(recipe, teacher=replace(recipe.teacher, name=f"{recipe.teacher.name}_{args.dataset}"))
            name = f"{name}_{args.dataset}"
        out = Path(args.out) if args.out else Path("exp") / "students" / (name + ("_ctc" if args.no_kd else ""))
        results = run_recipe(recipe, out, teacher=args.teacher, kd=not args.no_kd, resume=args.resume,
                             rebuild_teacher_cache=args.rebuild_teacher_cache, train_teacher=args.train_teacher,
                             device=device)
    except TrainingStopped:
        return 1  # already logged to stderr and train.log
    wers = ", ".join(f"{s} WER {r['wer']:.2f}%" + (f" ({r['corrected']['wer']:.2f}% corrected)" if "corrected" in r else "")
                     for s, r in results["splits"].items())
    print(f"{recipe.name} ({results['mode']}): {wers}; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
