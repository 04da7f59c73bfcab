"""Distillation losses against independent computations (loops, numpy, torch.distributions, brute force)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from distill.losses import (
    FeatureProjector,
    ctc_alignment_segments,
    ctc_viterbi,
    feature_mse,
    hierarchical_kd,
    kd_kl,
    resample_time,
    smkd_self_distill,
)
from models.base import ModelOutput
from models.lrinet import LRINetConfig, stop_gradient_frames
from models.train import ctc_loss_levels


def _ref_kd(s: torch.Tensor, t: torch.Tensor, lengths, temp: float, mode: str, thr=0.9, w_blank=0.1) -> float:
    """Per-frame loop with torch.distributions."""
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(int(lengths[b])):
            p_t = torch.softmax(t[b, i].double() / temp, -1)
            p_s = torch.softmax(s[b, i].double() / temp, -1)
            w = 1.0
            if mode == "drop":
                p_t, p_s = p_t[1:] / p_t[1:].sum(), p_s[1:] / p_s[1:].sum()
            if mode == "weight" and torch.softmax(t[b, i].double(), -1)[0] > thr:
                w = w_blank
            total += w * float(kl_divergence(Categorical(probs=p_t), Categorical(probs=p_s)))
            count += 1
    return total / count * temp**2


@pytest.mark.parametrize("mode", ["keep", "drop", "weight"])
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_kl_matches_distributions(mode: str, temp: float) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 6, 5, generator=g)
    t = torch.randn(3, 6, 5, generator=g) * 3
    t[0, :3, 0] += 8.0  # confidently blank frames, so "weight" has something to down-weight
    lengths = torch.tensor([6, 4, 1])
    got = kd_kl(s, t, lengths, temp, mode)
    assert got.item() == pytest.approx(_ref_kd(s, t, lengths, temp, mode), rel=1e-5, abs=1e-7)


def test_kd_kl_blank_modes_differ_and_weight_lowers_blank_frames() -> None:
    s = torch.zeros(1, 2, 4)
    t = torch.tensor([[[9.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]]])  # frame 0 blank-dominated
    lengths = torch.tensor([2])
    keep, drop, weight = (kd_kl(s, t, lengths, 1.0, m).item() for m in ("keep", "drop", "weight"))
    assert weight < keep and drop != keep
    frame1_only = kd_kl(s[:, 1:], t[:, 1:], torch.tensor([1]), 1.0, "keep").item()
    frame0_only = kd_kl(s[:, :1], t[:, :1], torch.tensor([1]), 1.0, "keep").item()
    assert weight == pytest.approx((0.1 * frame0_only + frame1_only) / 2, rel=1e-6)


def test_kd_kl_ignores_padding_and_scales_with_temperature() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    lengths = torch.tensor([5, 2])
    base = kd_kl(s, t, lengths, 2.0)
    s2, t2 = s.clone(), t.clone()
    s2[1, 2:] = 100.0
    t2[1, 2:] = -50.0
    assert kd_kl(s2, t2, lengths, 2.0).item() == pytest.approx(base.item(), rel=1e-6)
    # T^2 scaling: the loss at temperature T equals T^2 x the KL of the softened distributions
    soft = kd_kl(s / 3.0, t / 3.0, lengths, 1.0)
    assert kd_kl(s, t, lengths, 3.0).item() == pytest.approx(9.0 * soft.item(), rel=1e-5)
    assert kd_kl(t, t, lengths, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_kl_teacher_gets_no_gradient_and_bad_args() -> None:
    s = torch.randn(1, 3, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, requires_grad=True)
    kd_kl(s, t, torch.tensor([3]), 2.0).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="blank_mode 'bogus'"):
        kd_kl(s, t, torch.tensor([3]), 1.0, "bogus")
    with pytest.raises(ValueError, match="resample"):
        kd_kl(s, t[:, :2], torch.tensor([2]), 1.0)


def test_feature_mse_masked_and_projected() -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 5, generator=g)
    lengths = torch.tensor([4, 2])
    proj = FeatureProjector(3, 5)
    got = feature_mse(s, t, lengths, proj)
    ps, tn = proj(s).detach().numpy(), t.numpy()
    errs = [((ps[b, i] - tn[b, i]) ** 2).mean() for b in range(2) for i in range(int(lengths[b]))]
    assert got.item() == pytest.approx(float(np.mean(errs)), rel=1e-5)
    t2 = t.clone()
    t2[1, 2:] = 1e3  # padding of the teacher never counts
    assert feature_mse(s, t2, lengths, proj).item() == pytest.approx(got.item(), rel=1e-6)
    with pytest.raises(ValueError, match="FeatureProjector"):
        feature_mse(s, t, lengths)


def test_resample_time_matches_numpy_interp() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 3, generator=g)
    src, dst = torch.tensor([9, 5]), torch.tensor([4, 7])
    out = resample_time(x, src, dst, 7)
    for b in range(2):
        ls, ld = int(src[b]), int(dst[b])
        pos = np.clip((np.arange(ld) + 0.5) * ls / ld - 0.5, 0, ls - 1)
        for d in range(3):
            ref = np.interp(pos, np.arange(ls), x[b, :ls, d].numpy())
            np.testing.assert_allclose(out[b, :ld, d].numpy(), ref, rtol=1e-5, atol=1e-6)
        assert torch.all(out[b, ld:] == 0)
    same = resample_time(x, src, src, 9)
    torch.testing.assert_close(same[0], x[0])


def _student(frame: torch.Tensor, temporal: torch.Tensor, logits: torch.Tensor, out_lengths: torch.Tensor) -> ModelOutput:
    return ModelOutput(logits={"main": logits}, out_lengths=out_lengths, features={"frame": frame, "temporal": temporal})


def test_hierarchical_kd_levels_projectors_and_time_alignment() -> None:
    g = torch.Generator().manual_seed(4)
    b, t, v = 2, 16, 6
    lengths = torch.tensor([16, 12])
    out_lengths = lengths // 4
    student = _student(torch.randn(b, t, 8, generator=g), torch.randn(b, t // 4, 4, generator=g), torch.randn(b, t // 4, v, generator=g), out_lengths)
    teacher = {
        "frame": torch.randn(b, t, 10, generator=g),  # wider than the student: projector needed
        "temporal": torch.randn(b, t, 4, generator=g),  # teacher at frame rate, student at T // 4
        "logits": torch.randn(b, t // 4, v, generator=g),
        "lengths": lengths,
        "out_lengths": out_lengths,
    }
    projectors = torch.nn.ModuleDict({"frame": FeatureProjector(8, 10)})
    weights = {"frame": 2.0, "temporal": 0.5, "posterior": 3.0}
    total, parts = hierarchical_kd(student, teacher, lengths, weights, projectors, temperature=2.0)
    assert set(parts) == {"frame", "temporal", "posterior"}
    assert total.item() == pytest.approx(sum(weights[k] * parts[k].item() for k in parts), rel=1e-6)
    assert parts["frame"].item() == pytest.approx(feature_mse(student.features["frame"], teacher["frame"], lengths, projectors["frame"]).item())
    assert parts["posterior"].item() == pytest.approx(kd_kl(student.main, teacher["logits"], out_lengths, 2.0).item(), rel=1e-6)
    resampled = resample_time(teacher["temporal"], lengths, out_lengths, t // 4)
    ref = feature_mse(student.features["temporal"], resampled, out_lengths)
    assert parts["temporal"].item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="FeatureProjector"):
        hierarchical_kd(student, teacher, lengths, {"frame": 1.0}, None)


def test_hierarchical_kd_linear_teacher_is_matched_exactly_after_resampling() -> None:
    """A teacher feature linear in time, seen by a student at T/4 steps: resampling is exact."""
    lengths = torch.tensor([20, 12])
    out_lengths = lengths // 4
    teach = torch.zeros(2, 20, 3)
    stud = torch.zeros(2, 5, 3)
    for b in range(2):
        lt, ls = int(lengths[b]), int(out_lengths[b])
        teach[b, :lt] = torch.linspace(-1, 1, 3) * ((torch.arange(lt)[:, None] + 0.5) / lt)  # f(centre of frame)
        stud[b, :ls] = torch.linspace(-1, 1, 3) * ((torch.arange(ls)[:, None] + 0.5) / ls)
    student = _student(torch.zeros(2, 20, 3), stud, torch.zeros(2, 5, 4), out_lengths)
    _, parts = hierarchical_kd(student, {"temporal": teach}, lengths, {"temporal": 1.0})
    assert parts["temporal"].item() == pytest.approx(0.0, abs=1e-10)
    wrong = _student(torch.zeros(2, 20, 3), stud.flip(1), torch.zeros(2, 5, 4), out_lengths)
    assert hierarchical_kd(wrong, {"temporal": teach}, lengths, {"temporal": 1.0})[1]["temporal"].item() > 1e-3


def _brute_ctc_nll(log_probs: np.ndarray, target: list[int]) -> float:
    t, v = log_probs.shape
    total = 0.0
    for path in itertools.product(range(v), repeat=t):
        collapsed = [k for k, _ in itertools.groupby(path) if k != 0]
        if collapsed == target:
            total += math.exp(sum(log_probs[i, k] for i, k in enumerate(path)))
    return -math.log(total) if total > 0 else math.inf


def test_trainer_ctc_levels_match_brute_force_and_zero_infinity() -> None:
    """The multi-level CTC the trainer uses (``models.train.ctc_loss_levels``) against a brute-force sum over paths."""
    g = torch.Generator().manual_seed(5)
    logits = {"main": torch.randn(2, 5, 3, generator=g), "conv_main": torch.randn(2, 5, 3, generator=g)}
    out_lengths = torch.tensor([5, 4])
    targets = torch.tensor([[1, 2], [2, 0]])
    target_lengths = torch.tensor([2, 1])
    total, parts = ctc_loss_levels(ModelOutput(logits, out_lengths), targets, target_lengths,
                                   {"main": 1.0, "conv_main": 0.5})
    for level in ("main", "conv_main"):
        lp = torch.log_softmax(logits[level].double(), -1).numpy()
        ref = np.mean([_brute_ctc_nll(lp[0, :5], [1, 2]) / 2, _brute_ctc_nll(lp[1, :4], [2]) / 1])
        assert parts[level].item() == pytest.approx(ref, rel=1e-4)
    assert total.item() == pytest.approx(parts["main"].item() + 0.5 * parts["conv_main"].item(), rel=1e-6)
    # a target that cannot fit in 2 steps gives 0, not inf
    _, bad = ctc_loss_levels(ModelOutput({"main": logits["main"][:1, :2]}, torch.tensor([2])), torch.tensor([[1, 1]]),
                             torch.tensor([2]), {"main": 1.0})
    assert math.isfinite(bad["main"].item())
    # a weighted level the model does not output contributes nothing (the trainer refuses weights matching none)
    _, none = ctc_loss_levels(ModelOutput(logits, out_lengths), targets, target_lengths, {"stage9": 1.0})
    assert none == {}


def test_smkd_self_distill_stops_gradient_on_context() -> None:
    g = torch.Generator().manual_seed(6)
    conv = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    ctx = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    lengths = torch.tensor([4, 3])
    loss = smkd_self_distill(conv, ctx, lengths)
    assert loss.item() == pytest.approx(_ref_kd(conv.detach(), ctx.detach(), lengths, 8.0, "keep"), rel=1e-5)
    loss.backward()
    assert ctx.grad is None
    assert conv.grad is not None and conv.grad[0].abs().sum() > 0
    assert torch.all(conv.grad[1, 3:] == 0)  # padded step gets no gradient


def test_lrinet_stochastic_stop_gradient_per_frame() -> None:
    """CRKD's stochastic gradient stopping as LRINet applies it: one draw per (clip, frame)."""
    def grad_of(p: float, training: bool, seed: int = 0) -> torch.Tensor:
        x = torch.ones(3, 4, 2, requires_grad=True)  # [B, T, D]
        torch.manual_seed(seed)
        y = stop_gradient_frames(x, p, training)
        assert torch.equal(y, x.detach())  # value unchanged
        (2 * y.sum() + x.sum()).backward()  # second term: a path that is never stopped
        return x.grad

    assert torch.all(grad_of(1.0, True) == 1)  # stopped: only the direct path's gradient
    assert torch.all(grad_of(0.0, True) == 3)
    assert torch.all(grad_of(1.0, False) == 3)  # evaluation never stops
    grad = grad_of(0.5, True, seed=7)
    torch.manual_seed(7)
    expect_stop = torch.rand(3, 4) < 0.5  # the same draw, per clip and frame
    assert torch.all(grad[expect_stop] == 1) and torch.all(grad[~expect_stop] == 3)
    assert 0 < int(expect_stop.sum()) < 12
    with pytest.raises(ValueError, match="grad_stop_p must be in"):
        LRINetConfig(grad_stop_p=1.5)


def _brute_viterbi(lp: np.ndarray, target: list[int]) -> tuple[list[int], float]:
    best, arg = -math.inf, None
    for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        if [k for k, _ in itertools.groupby(path) if k != 0] == target:
            score = sum(lp[i, k] for i, k in enumerate(path))
            if score > best:
                best, arg = score, list(path)
    return arg, best


def _runs(path: list[int]) -> list[tuple[int, int, int]]:
    """Independent segmentation of a path: maximal runs of one non-blank label."""
    out, t = [], 0
    for label, grp in itertools.groupby(path):
        n = len(list(grp))
        if label != 0:
            out.append((t, t + n, label))
        t += n
    return out


@pytest.mark.parametrize("target", [[1, 2], [1, 1], [2], [2, 1, 2]])
def test_ctc_viterbi_matches_brute_force(target: list[int]) -> None:
    rng = np.random.default_rng(len(target) * 10 + target[0])
    for _ in range(3):
        logits = rng.normal(size=(6, 3)) * 2
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        path, score = ctc_viterbi(lp, target)
        ref_path, ref_score = _brute_viterbi(lp, target)
        assert score == pytest.approx(ref_score, abs=1e-9)
        assert path == ref_path
        assert ctc_alignment_segments(lp, target) == _runs(ref_path)


def test_alignment_segments_absorb_blanks_and_errors() -> None:
    lp = np.log(np.full((8, 3), 1e-3))
    for t, k in enumerate([0, 1, 1, 0, 0, 0, 2, 0]):
        lp[t, k] = 0.0
    assert ctc_alignment_segments(lp, [1, 2]) == [(1, 3, 1), (6, 7, 2)]
    assert ctc_alignment_segments(lp, [1, 2], absorb_blanks=True) == [(0, 5, 1), (5, 8, 2)]
    with pytest.raises(ValueError, match="cannot emit"):
        ctc_viterbi(lp[:2], [1, 1])
    with pytest.raises(ValueError, match="blank"):
        ctc_viterbi(lp, [0, 1])


def test_gloss_occupancy_kl_ignores_timing_and_sees_content():
    from distill.losses import gloss_occupancy_kl

    torch.manual_seed(0)
    t = torch.randn(2, 12, 5) * 3
    t[:, ::2, 0] += 6  # blank on every other step
    lengths = torch.tensor([12, 9])
    assert gloss_occupancy_kl(t, t, lengths).item() == pytest.approx(0.0, abs=1e-6)
    shifted = t.clone()
    shifted[1, :9] = t[1, :9].roll(3, dims=0)  # the same frames, fired elsewhere in the clip
    shifted[0] = t[0].flip(0)
    assert gloss_occupancy_kl(shifted, t, lengths).item() == pytest.approx(0.0, abs=1e-5)
    # an independent computation: normalised sums of the non-blank probabilities, then KL
    s = torch.randn(2, 12, 5, requires_grad=True)
    loss = gloss_occupancy_kl(s, t, lengths)
    expect = []
    for b, n in enumerate(lengths.tolist()):
        pt, ps = t[b, :n].softmax(-1)[:, 1:].sum(0), s[b, :n].softmax(-1)[:, 1:].sum(0)
        pt, ps = pt / pt.sum(), ps / ps.sum()
        expect.append((pt * (pt / ps).log()).sum())
    assert loss.item() == pytest.approx(torch.stack(expect).mean().item(), rel=1e-5)
    loss.backward()
    assert s.grad[1, 9:].abs().sum() == 0 and s.grad[0].abs().sum() > 0  # padding gets no gradient
    with pytest.raises(ValueError, match="resample the teacher"):
        gloss_occupancy_kl(s[:, :6], t, lengths)
