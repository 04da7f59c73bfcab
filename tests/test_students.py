"""Students: LRINet (shapes, k formula, the paper's card), landmark/RGB students, ONNX, augmentations."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from models.augment import LandmarkAugment, LandmarkAugmentConfig
from models.base import InputSpec, out_length
from models.encoders import normalise_keypoints
from models.flops import count_macs, count_params, lrinet_card, main as flops_main
from models.lrinet import LRINet, LRINetConfig, first_kernel, tscm
from models.students import StudentConfig, build_student
from preprocess.layouts import HOLISTIC_543, LEFT_HAND, RIGHT_HAND

HOLISTIC = InputSpec(num_keypoints=543, keypoint_layout=HOLISTIC_543)
RGB_ONLY = InputSpec(rgb_size=32)


# ---- LRINet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size,k", [(56, 1), (72, 3), (88, 5), (104, 7)])
def test_first_kernel_formula(size: int, k: int) -> None:
    assert first_kernel(size) == k == size // 8 - 6


@pytest.mark.parametrize("size", [64, 48, 224])
def test_unsupported_size_raises(size: int) -> None:
    with pytest.raises(ValueError, match=f"input size {size} not supported"):
        LRINetConfig(input_size=size)


@pytest.mark.parametrize("size", [56, 72])
def test_lrinet_shapes_and_frame_map(size: int) -> None:
    torch.manual_seed(0)
    model = LRINet(11, LRINetConfig(input_size=size), keep_frame_map=True).eval()
    lengths = torch.tensor([6, 4])
    with torch.no_grad():
        out = model({"rgb": torch.rand(2, 6, 3, size, size)}, lengths)
    assert set(out.logits) == {"frame", "stage1", "stage2", "main"}
    for logits in out.logits.values():
        assert logits.shape == (2, 1, 11)
    assert torch.equal(out.out_lengths, out_length(lengths))
    assert out.features["frame_map"].shape == (2, 6, 2048, 7, 7)  # the teacher's 7 x 7 x 2048
    assert out.features["frame"].shape == (2, 6, 2048)
    assert torch.all(out.features["frame"][1, 4:] == 0)
    assert out.features["temporal"].shape == (2, 1, 2048)


def test_lrinet_padding_invariance() -> None:
    torch.manual_seed(1)
    model = LRINet(7, LRINetConfig(input_size=56)).eval()
    clip = torch.rand(1, 8, 3, 56, 56)
    with torch.no_grad():
        alone = model({"rgb": clip}, torch.tensor([8]))
        padded = torch.cat([torch.cat([clip, torch.rand(1, 4, 3, 56, 56)], 1), torch.rand(1, 12, 3, 56, 56)], 0)
        batch = model({"rgb": padded}, torch.tensor([8, 12]))
    for level in alone.logits:
        torch.testing.assert_close(batch.logits[level][0, :2], alone.logits[level][0], rtol=1e-4, atol=1e-4)


def test_tscm_shifts_and_superposes() -> None:
    x = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, 8, 1, 1).clone()  # frame t = t
    y = tscm(x, shift_div=4)[0, :, :, 0, 0]  # [T, C]
    assert torch.equal(y[:, :2], torch.tensor([[0.0] * 2, [1.0] * 2, [3.0] * 2]))  # t + (t - 1), zero before start
    assert torch.equal(y[:, 2:4], torch.tensor([[1.0] * 2, [3.0] * 2, [2.0] * 2]))  # t + (t + 1), zero after end
    assert torch.equal(y[:, 4:], x[0, :, 4:, 0, 0])


def test_lrinet_params_within_ten_percent_of_paper() -> None:
    with torch.device("meta"):
        p56 = count_params(LRINet(1296, LRINetConfig(input_size=56)))
        p72 = count_params(LRINet(1296, LRINetConfig(input_size=72)))
    assert abs(p72 / 1e6 - 10.5) / 10.5 < 0.10
    assert p72 - p56 == 128 * 128 * (3 * 3 - 1 * 1)  # only the k x k conv of the first bottleneck grows


def test_lrinet_macs_linear_in_time_and_card() -> None:
    def macs(t: int) -> int:
        with torch.device("meta"):
            model = LRINet(50, LRINetConfig(input_size=72))
            rgb, lengths = torch.empty(1, t, 3, 72, 72), torch.full((1,), t)
        return count_macs(model, {"rgb": rgb}, lengths)

    m8, m16, m32 = macs(8), macs(16), macs(32)
    assert m16 - m8 == (m32 - m16) // 2  # exactly linear in T (multiples of 4)
    assert abs(m32 / m16 - 2) < 0.01
    card = lrinet_card(72, 200)
    assert abs(card["params_delta_pct"]) < 10 and abs(card["macs_delta_pct"]) < 10
    assert card["gflops"] == pytest.approx(2 * card["gmacs"])


def test_flops_main_prints_card_and_rejects_bad_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert flops_main(["--frames", "16"]) == 0
    assert "multiply-accumulates" in capsys.readouterr().out
    assert flops_main(["--size", "60"]) == 2
    assert "input size 60 not supported" in capsys.readouterr().err


# ---- landmark and RGB students -------------------------------------------------------------


def _keypoints(t: int, b: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(b, t, 543, 3, generator=g)
    mask = torch.rand(b, t, 543, generator=g) > 0.1
    kp[~mask] = float("nan")  # missing points may be NaN in caches
    return kp, mask


def test_landmark_student_shapes_size_and_padding_invariance() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(), 1296, HOLISTIC).eval()
    assert count_params(model) <= 1_500_000
    kp, mask = _keypoints(21)
    kp2, mask2 = _keypoints(30, seed=1)
    with torch.no_grad():
        alone = model({"keypoints": kp, "keypoints_mask": mask}, torch.tensor([21]))
        pad = torch.full((1, 9, 543, 3), 0.3)
        batch = model(
            {"keypoints": torch.cat([torch.cat([kp, pad], 1), kp2]), "keypoints_mask": torch.cat([torch.cat([mask, torch.ones(1, 9, 543, dtype=torch.bool)], 1), mask2])},
            torch.tensor([21, 30]),
        )
    assert alone.main.shape == (1, 5, 1296) and batch.main.shape == (2, 7, 1296)
    assert set(batch.features) == {"frame", "temporal", "context"} and set(batch.logits) == {"main", "conv_main"}
    assert batch.features["frame"].shape == (2, 30, 128) and batch.features["context"].shape == (2, 7, 128)
    assert torch.equal(batch.out_lengths, torch.tensor([5, 7]))
    for level in ("main", "conv_main"):
        torch.testing.assert_close(batch.logits[level][0, :5], alone.logits[level][0], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(batch.main).all()


@pytest.mark.parametrize("subset", ["mediapipe_92", "all"])
def test_landmark_student_reads_only_its_points_and_matches_the_full_layout_path(subset: str) -> None:
    """Gathering the subset (+ shoulders) before the NaN check and normalisation changes nothing:
    frame features equal the full-layout computation (finite check and mask over all 543 points,
    then ``normalise_keypoints``), with and without a mask, and for a clip shorter than 4 frames."""
    torch.manual_seed(0)
    model = build_student(StudentConfig(keypoint_subset=subset, dim=32, layers=1, heads=2, ff_dim=64), 11, HOLISTIC).eval()
    for t, with_mask in ((21, True), (21, False), (3, True)):
        kp, mask = _keypoints(t, b=2, seed=t)
        kp[0, :, 12, 1] = float("inf")  # a right shoulder that is not finite: subset statistics on every frame
        inputs = {"keypoints": kp, "keypoints_mask": mask} if with_mask else {"keypoints": kp}
        lengths = torch.tensor([t, max(1, t - 5)])
        finite = torch.isfinite(kp).all(-1)  # over all 543 points, as before the gather
        full_mask = mask & finite if with_mask else finite
        pts = normalise_keypoints(kp, full_mask, model.indices, holistic=True)  # [B, T, K', 3]
        x = torch.cat([pts, full_mask.index_select(2, model.indices).unsqueeze(-1).float()], -1).flatten(2)
        with torch.no_grad():
            want = model.embed(x) * (torch.arange(t) < lengths[:, None]).unsqueeze(-1)
            got = model(inputs, lengths).features["frame"]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    outside = sorted(set(range(543)) - set(model.input.gather.tolist()))
    if outside:  # NaN, inf or garbage anywhere else is never read
        kp, mask = _keypoints(9, seed=4)
        junk = kp.clone()
        junk[:, :, outside] = float("inf")
        with torch.no_grad():
            a = model({"keypoints": kp, "keypoints_mask": mask}, torch.tensor([9])).main
            b = model({"keypoints": junk, "keypoints_mask": mask}, torch.tensor([9])).main
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_landmark_student_any_k_and_onnx_at_two_lengths() -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_student(StudentConfig(keypoint_subset="all", dim=64, ff_dim=128), 9, InputSpec(num_keypoints=17, keypoint_layout="custom_17"))

    class Export(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, kp: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.m({"keypoints": kp, "keypoints_mask": mask}, lengths)
            return out.main, out.out_lengths

    wrapper = Export().eval()
    buf = io.BytesIO()
    kp0 = torch.rand(1, 40, 17, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (kp0, torch.ones(1, 40, 17, dtype=torch.bool), torch.tensor([40])), buf, dynamo=False,
            input_names=["keypoints", "keypoints_mask", "lengths"], output_names=["logits", "out_lengths"],
            dynamic_axes={"keypoints": {0: "B", 1: "T"}, "keypoints_mask": {0: "B", 1: "T"}, "lengths": {0: "B"}, "logits": {0: "B", 1: "T4"}},
            opset_version=17,
        )
    wrapper.eval()  # export restores the wrapper's mode
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for t in (23, 61):
        g = torch.Generator().manual_seed(t)
        kp, mask, lengths = torch.rand(2, t, 17, 3, generator=g), torch.rand(2, t, 17, generator=g) > 0.2, torch.tensor([t, t - 6])
        with torch.no_grad():
            ref_logits, ref_len = wrapper(kp, mask, lengths)
        logits, out_len = session.run(None, {"keypoints": kp.numpy(), "keypoints_mask": mask.numpy(), "lengths": lengths.numpy()})
        assert logits.shape == (2, t // 4, 9)
        np.testing.assert_array_equal(out_len, ref_len.numpy())
        np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-4, atol=1e-4)


def test_rgb_student_shapes_and_padding_invariance() -> None:
    torch.manual_seed(0)
    model = build_student(StudentConfig(kind="rgb", rgb_channels=8, hidden=32), 6, RGB_ONLY).eval()
    clip = torch.rand(1, 9, 3, 32, 32)
    with torch.no_grad():
        alone = model({"rgb": clip}, torch.tensor([9]))
        batch = model({"rgb": torch.cat([torch.cat([clip, torch.rand(1, 3, 3, 32, 32)], 1), torch.rand(1, 12, 3, 32, 32)])}, torch.tensor([9, 12]))
    assert batch.main.shape == (2, 3, 6) and batch.logits["conv_main"].shape == (2, 3, 6)
    assert batch.features["frame"].shape == (2, 12, 64) and batch.features["context"].shape == (2, 3, 32)
    torch.testing.assert_close(batch.main[0, :2], alone.main[0], rtol=1e-4, atol=1e-5)


def test_build_student_refuses_missing_inputs_and_bad_configs() -> None:
    with pytest.raises(ValueError, match="needs keypoints"):
        build_student(StudentConfig(kind="landmark"), 5, RGB_ONLY)
    with pytest.raises(ValueError, match="needs RGB frames"):
        build_student(StudentConfig(kind="rgb"), 5, HOLISTIC)
    with pytest.raises(ValueError, match="needs layout"):
        build_student(StudentConfig(), 5, InputSpec(num_keypoints=17, keypoint_layout="custom_17"))
    with pytest.raises(ValueError, match="unknown student kind 'cnn'"):
        StudentConfig(kind="cnn")
    with pytest.raises(ValueError, match="not divisible by heads 3"):
        StudentConfig(dim=128, heads=3)
    with pytest.raises(ValueError, match="input size 60"):
        StudentConfig(kind="lrinet", input_size=60)
    with pytest.raises(ValueError, match="unknown student option"):
        StudentConfig.from_dict({"kind": "rgb", "width": 3})
    assert StudentConfig.from_dict(StudentConfig(kind="rgb").to_dict()) == StudentConfig(kind="rgb")
    lrinet = build_student(StudentConfig(kind="lrinet", input_size=56), 5, InputSpec(rgb_size=64))
    assert isinstance(lrinet, LRINet) and lrinet.cfg.input_size == 56
    narrow = build_student(StudentConfig(kind="lrinet", input_size=56, lrinet_width=0.0625, lrinet_stem_repeats=1),
                           5, InputSpec(rgb_size=64))
    assert narrow.cfg.width == 0.0625 and narrow.cfg.stem_repeats == 1
    assert count_params(narrow) < count_params(lrinet) / 50  # ~ width^2 fewer weights
    with pytest.raises(ValueError, match="apply to kind 'lrinet' only"):
        StudentConfig(kind="rgb", lrinet_width=0.5)
    with pytest.raises(ValueError, match="LRINet width must be in"):
        StudentConfig(kind="lrinet", lrinet_width=0.0)


# ---- augmentations ---------------------------------------------------------------------------


def _clip(t: int = 30, k: int = 543, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((t, k, 3)).astype(np.float16), rng.random((t, k)) > 0.1


def test_augment_keeps_shapes_types_and_is_reproducible() -> None:
    aug = LandmarkAugment(HOLISTIC_543, 543)
    kp, mask = _clip()
    a_kp, a_mask = aug(kp, mask, np.random.default_rng(3))
    assert a_kp.shape == kp.shape and a_kp.dtype == np.float16 and a_mask.shape == mask.shape and a_mask.dtype == bool
    b_kp, b_mask = aug(kp, mask, np.random.default_rng(3))
    np.testing.assert_array_equal(a_kp, b_kp)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert np.all(a_kp[~a_mask] == 0)
    t_kp, t_mask = aug(torch.from_numpy(kp.astype(np.float32)), torch.from_numpy(mask), np.random.default_rng(4))
    assert isinstance(t_kp, torch.Tensor) and t_kp.shape == kp.shape and t_kp.dtype == torch.float32 and t_mask.dtype == torch.bool
    with pytest.raises(ValueError, match="expects kp"):
        aug(kp[:, :10], mask[:, :10], np.random.default_rng(0))


def test_swap_is_an_involution_that_exchanges_hands() -> None:
    aug = LandmarkAugment(HOLISTIC_543, 543)
    kp, mask = _clip()
    kp = kp.astype(np.float32)
    s_kp, s_mask = aug.swap(kp, mask)
    left0, right0 = LEFT_HAND[0], RIGHT_HAND[0]
    np.testing.assert_allclose(s_kp[:, right0, 0], 1 - kp[:, left0, 0], atol=1e-6)  # left hand now labelled right
    np.testing.assert_array_equal(s_mask[:, right0], mask[:, left0])
    b_kp, b_mask = aug.swap(s_kp, s_mask)
    np.testing.assert_allclose(b_kp, kp, atol=1e-6)
    np.testing.assert_array_equal(b_mask, mask)


def test_time_mask_masks_exactly_the_requested_frames() -> None:
    kp, mask = _clip()
    kp = kp.astype(np.float32)
    m_kp, m_mask = LandmarkAugment.time_mask(kp, mask, start=5, width=4)
    assert not m_mask[5:9].any() and np.all(m_kp[5:9] == 0)
    np.testing.assert_array_equal(m_mask[:5], mask[:5])
    np.testing.assert_array_equal(m_mask[9:], mask[9:])
    np.testing.assert_array_equal(m_kp[9:], kp[9:])


def test_affine_time_warp_and_point_drop() -> None:
    kp, mask = _clip(t=10, k=4)
    kp = kp.astype(np.float32)
    rot90 = np.array([[0.0, -1.0], [1.0, 0.0]])
    pt = np.array([[[0.6, 0.5, 0.2]]], dtype=np.float32)
    r_kp, _ = LandmarkAugment.affine(pt, np.ones((1, 1), bool), rot90, np.zeros(2), z_scale=2.0)
    np.testing.assert_allclose(r_kp[0, 0], [0.5, 0.6, 0.4], atol=1e-6)
    same, same_mask = LandmarkAugment.time_warp(kp, mask, np.arange(10.0))
    np.testing.assert_array_equal(same, kp)
    np.testing.assert_array_equal(same_mask, mask)
    half, _ = LandmarkAugment.time_warp(kp, np.ones_like(mask), np.full(10, 2.5))
    np.testing.assert_allclose(half[0], (kp[2] + kp[3]) / 2, atol=1e-6)
    drop = np.zeros_like(mask)
    drop[3, 1] = True
    d_kp, d_mask = LandmarkAugment.drop_points(kp, np.ones_like(mask), drop)
    assert not d_mask[3, 1] and d_mask.sum() == mask.size - 1 and np.all(d_kp[3, 1] == 0)
    with pytest.raises(ValueError, match="time_warp must be in"):
        LandmarkAugmentConfig(time_warp=0.7)


@pytest.mark.parametrize("shape, size", [((2, 3, 64, 64), 56), ((1, 3, 64, 80), 72), ((3, 1, 40, 40), 56), ((1, 3, 210, 260), 72)])
def test_exportable_resize_equals_torch_antialiased_bilinear(shape, size) -> None:
    from models.lrinet import resize_antialiased

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(size))
    want = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(resize_antialiased(x, size), want, atol=1e-5)
