"""Distillation losses: posterior KD, feature MSE, hierarchical KD, SMKD, CTC forced alignment.

The multi-level CTC they are added to is the trainer's (``models.train.ctc_loss_levels``);
CRKD's stochastic gradient stopping lives in the model that applies it (``models.lrinet``).

All are pure functions of tensors (plus the learned ``FeatureProjector``). Conventions:
- logits are [B, T, V] (batch first), class 0 is the CTC blank unless ``blank`` says otherwise;
- ``lengths`` [B] are the valid steps of the tensors passed (frames for frame-level features,
  ``ModelOutput.out_lengths`` for temporal features and logits); steps beyond them never count;
- the teacher side never receives gradients (it is detached): teachers are frozen or cached,
  and SMKD's contextual teacher must not be pulled towards its student.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import ModelOutput

BLANK_MODES = ("keep", "drop", "weight")


def _valid_mask(lengths: Tensor, steps: int) -> Tensor:
    """[B, steps] bool, True on the first lengths[b] steps."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.to(torch.long).unsqueeze(1)


def kd_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    lengths: Tensor,
    temperature: float = 1.0,
    blank_mode: str = "keep",
    blank: int = 0,
    blank_threshold: float = 0.9,
    blank_weight: float = 0.1,
) -> Tensor:
    """KL(teacher || student) on frame posteriors softened by ``temperature``, times T^2.

    Averaged over valid frames only (the sum of per-frame KLs divided by the number of valid
    frames in the batch). The T^2 factor keeps gradient magnitudes comparable across
    temperatures (Hinton et al.). The blank class dominates CTC posteriors (most frames are
    blank), so a plain KL mostly teaches "blank here"; ``blank_mode`` chooses what to do:

    - "keep": full distributions over all V classes.
    - "drop": both distributions renormalised over the V-1 non-blank classes (softmax of the
      non-blank logits), so only the ranking among glosses is distilled.
    - "weight": full distributions, but a frame where the teacher's blank probability (at
      temperature 1, its actual belief) exceeds ``blank_threshold`` counts ``blank_weight``
      instead of 1. The divisor stays the number of valid frames, so the blank frames'
      share of the loss really shrinks.

    Args:
        student_logits: [B, T, V].
        teacher_logits: [B, T, V] (or log-probabilities; only differences matter). Detached.
        lengths: [B] valid frames of both.
        temperature: softening temperature (> 0).
        blank_mode: "keep" | "drop" | "weight".
        blank: index of the blank class.
        blank_threshold: teacher blank probability above which "weight" down-weights a frame.
        blank_weight: weight of such a frame in "weight" mode.

    Returns:
        scalar loss.
    """
    if blank_mode not in BLANK_MODES:
        raise ValueError(f"unknown blank_mode {blank_mode!r}; choose one of {BLANK_MODES}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "resample the teacher in time first (distill.losses.resample_time)"
        )
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    s, t = student_logits, teacher_logits
    if blank_mode == "drop":
        s = torch.cat([s[..., :blank], s[..., blank + 1 :]], dim=-1)  # [B, T, V-1]
        t = torch.cat([t[..., :blank], t[..., blank + 1 :]], dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # [B, T]
    valid = _valid_mask(lengths, kl.shape[1]).to(kl.dtype)  # [B, T]
    weight = valid
    if blank_mode == "weight":
        p_blank = F.softmax(teacher_logits, dim=-1)[..., blank]  # [B, T] at temperature 1
        weight = valid * torch.where(p_blank > blank_threshold, blank_weight, 1.0).to(kl.dtype)
    return (kl * weight).sum() / valid.sum().clamp(min=1) * temperature**2


class FeatureProjector(nn.Module):
    """Learned linear map from a student width to a teacher width (FitNets-style hint layer)."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        if student_dim < 1 or teacher_dim < 1:
            raise ValueError(f"feature widths must be >= 1, got student {student_dim}, teacher {teacher_dim}")
        self.proj = nn.Linear(student_dim, teacher_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: [B, T, Ds]. Returns [B, T, Dt]."""
        return self.proj(x)


def gloss_occupancy_kl(student_logits: Tensor, teacher_logits: Tensor, lengths: Tensor, blank: int = 0) -> Tensor:
    """KL(teacher || student) between the clips' gloss occupancies: alignment-free distillation.

    A clip's occupancy is the sum over its valid frames of the non-blank posteriors, normalised
    over the glosses: which glosses the model hears in the clip and how much, whatever the frame
    on which each one fires. CTC models of different widths or architectures put their spikes on
    different frames, so a frame-level KL between them also teaches timing the student cannot
    share; this term teaches only the content. Averaged over the batch's clips.

    Args:
        student_logits: [B, T, V] (logits or log-probabilities).
        teacher_logits: [B, T, V], detached.
        lengths: [B] valid frames of both.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; resample the teacher in time first")
    valid = _valid_mask(lengths.to(student_logits.device), student_logits.shape[1])[..., None]  # [B, T, 1]

    def occupancy(logits: Tensor) -> Tensor:  # [B, V-1]
        p = logits.float().softmax(-1) * valid
        mass = torch.cat([p[..., :blank], p[..., blank + 1:]], dim=-1).sum(1)
        return mass / mass.sum(-1, keepdim=True).clamp(min=1e-8)

    t, q = occupancy(teacher_logits.detach()), occupancy(student_logits)
    kl = (t * (t.clamp(min=1e-8).log() - q.clamp(min=1e-8).log())).sum(-1)  # [B]
    return kl.mean()


def feature_mse(student: Tensor, teacher: Tensor, lengths: Tensor, proj: nn.Module | None = None) -> Tensor:
    """Mean squared error between (projected) student and teacher features over valid steps.

    The mean runs over valid steps and feature dimensions: sum of squared errors on the first
    lengths[b] steps of every row, divided by (number of valid steps x Dt).

    Args:
        student: [B, T, Ds].
        teacher: [B, T, Dt], detached.
        lengths: [B] valid steps.
        proj: maps Ds -> Dt (e.g. ``FeatureProjector``); required when Ds != Dt.

    Returns:
        scalar loss.
    """
    if proj is not None:
        student = proj(student)
    if student.shape != teacher.shape:
        hint = "" if proj is not None else "; give a FeatureProjector(ds, dt)"
        raise ValueError(f"student features {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ{hint}")
    teacher = teacher.detach().to(student.dtype)
    valid = _valid_mask(lengths, student.shape[1]).to(student.dtype).unsqueeze(-1)  # [B, T, 1]
    se = ((student - teacher) ** 2 * valid).sum()
    return se / (valid.sum() * student.shape[-1]).clamp(min=1)


def resample_time(x: Tensor, src_lengths: Tensor, dst_lengths: Tensor, dst_steps: int) -> Tensor:
    """Linear interpolation in time, per sequence, of the valid part onto a new number of steps.

    Step i of a destination of length L_d sits at source position (i + 0.5) * L_s / L_d - 0.5
    (centres of equal-width bins, as ``F.interpolate(align_corners=False)``), clamped to
    [0, L_s - 1]; when L_s == L_d the sequence is returned unchanged. Steps beyond dst_lengths
    are zero.

    Args:
        x: [B, S, D] source (valid on the first src_lengths[b] steps).
        src_lengths: [B] valid source steps (>= 1).
        dst_lengths: [B] valid destination steps.
        dst_steps: padded destination length (>= max dst_lengths).

    Returns:
        [B, dst_steps, D].
    """
    b = x.shape[0]
    src = src_lengths.to(x.device, torch.float64).clamp(min=1).unsqueeze(1)  # [B, 1]
    dst = dst_lengths.to(x.device, torch.float64).clamp(min=1).unsqueeze(1)  # [B, 1]
    i = torch.arange(dst_steps, device=x.device, dtype=torch.float64).unsqueeze(0)  # [1, Td]
    pos = ((i + 0.5) * src / dst - 0.5).clamp(min=0).minimum(src - 1)  # [B, Td]
    i0 = pos.floor().long()
    i1 = (i0 + 1).minimum((src - 1).long())
    w = (pos - i0).to(x.dtype).unsqueeze(-1)  # [B, Td, 1]
    idx0 = i0.unsqueeze(-1).expand(b, dst_steps, x.shape[2])  # [B, Td, D]
    idx1 = i1.unsqueeze(-1).expand(b, dst_steps, x.shape[2])
    out = (1 - w) * x.gather(1, idx0) + w * x.gather(1, idx1)  # [B, Td, D]
    return out * _valid_mask(dst_lengths.to(x.device), dst_steps).unsqueeze(-1).to(x.dtype)


def _lengths_for(steps: int, options: Sequence[Tensor | None]) -> Tensor | None:
    """The first of ``options`` whose longest sequence fills exactly ``steps`` (a padded batch's T)."""
    for lengths in options:
        if lengths is not None and lengths.numel() and int(lengths.max()) == steps:
            return lengths
    return None


def hierarchical_kd(
    student_out: ModelOutput,
    teacher: dict[str, Tensor],
    lengths: Tensor,
    weights: dict[str, float],
    projectors: nn.ModuleDict | None = None,
    temperature: float = 1.0,
    blank_mode: str = "keep",
) -> tuple[Tensor, dict[str, Tensor]]:
    """SignKD hierarchical distillation: feature MSE at several levels + KL on posteriors.

    Levels are the keys of ``weights`` (a zero weight skips the level):
    - "posterior": ``kd_kl(student_out.logits["main"], teacher["logits"])`` at ``temperature``.
    - "occupancy": ``gloss_occupancy_kl`` of the same posteriors (alignment-free).
    - any other name, e.g. "frame", "temporal", "context": ``feature_mse`` between
      ``student_out.features[name]`` and ``teacher[name]``, through ``projectors[name]`` when
      present (required when the widths differ).

    Time alignment: the teacher is resampled onto the student's time axis (``resample_time``,
    linear interpolation per sequence; posteriors are interpolated as logits, before the
    temperature) whenever their step counts differ, so a teacher with T steps can teach a
    student with T' (or the other way round). Valid student steps: ``student_out.out_lengths``
    for a level with as many steps as the logits, else ``lengths`` (frame-rate levels). Valid
    teacher steps: ``teacher["out_lengths"]`` or ``teacher["lengths"]``, whichever fills the
    teacher tensor's padded length, else the student's valid steps scaled by T_t / T_s.

    Args:
        student_out: the student's ModelOutput (logits [B, T', V], features [B, T or T', Ds]).
        teacher: cached teacher tensors: level name -> [B, Tt, Dt], "logits" [B, Tt', V],
            optional "lengths" / "out_lengths" [B].
        lengths: [B] valid input frames of the student.
        weights: level name -> loss weight.
        projectors: level name -> module mapping Ds -> Dt.
        temperature: for the posterior level.
        blank_mode: for the posterior level (see ``kd_kl``).

    Returns:
        (total, parts): the weighted sum and each level's unweighted loss.
    """
    parts: dict[str, Tensor] = {}
    main = student_out.logits["main"]
    total = main.new_zeros((), dtype=torch.float32)
    frames = lengths.to(main.device)
    for level, weight in weights.items():
        if weight == 0:
            continue
        if level in ("posterior", "occupancy"):
            s, t_key = main, "logits"
        else:
            if level not in student_out.features:
                raise ValueError(f"hierarchical_kd level {level!r}: the student has no such feature (has {sorted(student_out.features)})")
            s, t_key = student_out.features[level], level
        if t_key not in teacher:
            raise ValueError(f"hierarchical_kd level {level!r}: the teacher cache has no {t_key!r} (has {sorted(teacher)})")
        t = teacher[t_key].to(s.device)
        s_len = student_out.out_lengths.to(s.device) if s.shape[1] == main.shape[1] else frames
        if t.shape[1] != s.shape[1]:
            t_len = _lengths_for(t.shape[1], [teacher.get("out_lengths"), teacher.get("lengths")])
            if t_len is None:  # not cached: the same fraction of the padded length as the student
                t_len = (s_len * t.shape[1]) // s.shape[1]
            t = resample_time(t.float(), t_len.to(s.device).clamp(min=1), s_len, s.shape[1]).to(s.dtype)
        if level == "posterior":
            loss = kd_kl(s, t, s_len, temperature, blank_mode)
        elif level == "occupancy":
            loss = gloss_occupancy_kl(s, t, s_len)
        else:
            proj = projectors[level] if projectors is not None and level in projectors else None
            loss = feature_mse(s, t, s_len, proj)
        parts[level] = loss
        total = total + weight * loss
    return total, parts


def smkd_self_distill(conv_logits: Tensor, context_logits: Tensor, lengths: Tensor, temperature: float = 8.0) -> Tensor:
    """SMKD self-mutual distillation: the contextual (BiLSTM) posteriors teach the visual (conv) ones.

    With the classifier shared between the two levels, this aligns the visual module's
    features with the contextual module's decisions. The contextual side is the teacher and
    is detached (gradient stopped), so it is not pulled towards the weaker visual output.

    Args:
        conv_logits: [B, T', V] visual-module logits ("conv_main"); receives the gradient.
        context_logits: [B, T', V] contextual-module logits ("main"); gradient stopped.
        lengths: [B] valid output steps.
        temperature: SMKD uses 8.

    Returns:
        scalar loss (T^2-scaled KL, see ``kd_kl``).
    """
    return kd_kl(conv_logits, context_logits.detach(), lengths, temperature, "keep")


def ctc_viterbi(log_probs: np.ndarray | Tensor, targets: Sequence[int], blank: int = 0) -> tuple[list[int], float]:
    """Most probable CTC path that collapses to ``targets`` (forced alignment).

    Dynamic programming over the blank-interleaved label sequence (2S+1 states): a state is
    reached from itself, from the previous state, or from two back when that skips a blank
    between two different labels; the path must end in the last label or the final blank.

    Args:
        log_probs: [T, V] per-frame log-probabilities.
        targets: S label ids (no blanks).
        blank: blank index.

    Returns:
        (path, score): the label (or blank) of each of the T frames and its log-probability.

    Raises:
        ValueError: when no path of T frames can emit the targets.
    """
    lp = np.asarray(log_probs.detach().cpu().double() if isinstance(log_probs, Tensor) else log_probs, dtype=np.float64)
    tgt = [int(g) for g in targets]
    if any(g == blank for g in tgt):
        raise ValueError(f"targets contain the blank index {blank}: {tgt}")
    n_frames = lp.shape[0]
    need = len(tgt) + sum(1 for a, b in zip(tgt, tgt[1:]) if a == b)
    if n_frames < need or n_frames == 0:
        raise ValueError(f"{n_frames} frames cannot emit {len(tgt)} glosses under CTC (needs >= {max(need, 1)})")
    ext = [blank]
    for g in tgt:
        ext += [g, blank]
    n_states = len(ext)
    labels = np.asarray(ext)
    emit = lp[:, labels]  # [T, 2S+1] log-probability of each state's label per frame
    # a skip over a blank is allowed into a label state that differs from the label two back
    can_skip = np.zeros(n_states, dtype=bool)
    can_skip[2:] = (labels[2:] != blank) & (labels[2:] != labels[:-2])
    score = np.full((n_frames, n_states), -np.inf)
    back = np.zeros((n_frames, n_states), dtype=np.int64)
    score[0, : min(2, n_states)] = emit[0, : min(2, n_states)]
    for t in range(1, n_frames):
        prev = score[t - 1]
        step = np.concatenate([[-np.inf], prev[:-1]])
        skip = np.where(can_skip, np.concatenate([[-np.inf, -np.inf], prev[:-2]])[:n_states], -np.inf)
        cand = np.stack([prev, step, skip])  # [3, 2S+1]: stay, advance one, skip a blank
        choice = cand.argmax(axis=0)  # ties prefer staying, then advancing by one
        score[t] = cand[choice, np.arange(n_states)] + emit[t]
        back[t] = np.arange(n_states) - choice
    ends = [n_states - 1] + ([n_states - 2] if n_states > 1 else [])
    s = max(ends, key=lambda e: score[-1, e])
    total = float(score[-1, s])
    states = [s]
    for t in range(n_frames - 1, 0, -1):
        s = int(back[t, s])
        states.append(s)
    states.reverse()
    return [ext[s] for s in states], total


def ctc_alignment_segments(
    log_probs: np.ndarray | Tensor, targets: Sequence[int], blank: int = 0, absorb_blanks: bool = False
) -> list[tuple[int, int, int]]:
    """Cut a sentence into per-gloss segments with CTC forced alignment (SMKD gloss segmentation).

    Args:
        log_probs: [T, V] per-frame log-probabilities of a trained model (one utterance).
        targets: S gloss ids of the utterance.
        blank: blank index.
        absorb_blanks: False: a segment covers exactly the frames aligned to its gloss.
            True: blank frames are shared out too (leading ones to the first gloss, trailing
            ones to the last, each inner run split at its middle), so segments tile [0, T).

    Returns:
        S tuples (start, end, gloss) with end exclusive, in target order; frame indices are
        those of ``log_probs`` (multiply by the model's time reduction for input frames).
    """
    path, _ = ctc_viterbi(log_probs, targets, blank)
    segments: list[list[int]] = []
    prev = blank
    for t, label in enumerate(path):
        if label != blank and (label != prev or not segments or segments[-1][1] != t):
            segments.append([t, t + 1, label])
        elif label != blank:
            segments[-1][1] = t + 1
        prev = label
    if len(segments) != len(targets):  # repeated labels are separated by a blank, so this cannot happen
        raise RuntimeError(f"alignment produced {len(segments)} segments for {len(targets)} targets")
    if absorb_blanks and segments:
        segments[0][0] = 0
        segments[-1][1] = len(path)
        for left, right in zip(segments, segments[1:]):
            mid = (left[1] + right[0] + 1) // 2
            left[1], right[0] = mid, mid
    return [(a, b, g) for a, b, g in segments]


__all__ = [
    "BLANK_MODES",
    "FeatureProjector",
    "ctc_alignment_segments",
    "ctc_viterbi",
    "feature_mse",
    "hierarchical_kd",
    "kd_kl",
    "resample_time",
    "smkd_self_distill",
]

