"""Model contract tests: shapes, padding invariance, fusion maths, masks, configs, weights, ONNX, gradients."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torchvision
import yaml

from models import encoders
from models.base import InputSpec, out_length
from models.build import ExportWrapper, ModelConfig, build_model, count_parameters
from models.encoders import RGBEncoder, normalise_keypoints
from preprocess.layouts import HOLISTIC_543, SUBSETS

V = 7  # vocabulary size (blank included)
SPEC = InputSpec(num_keypoints=543, keypoint_layout=HOLISTIC_543, rgb_size=16, flow_size=8)
CUSTOM_SPEC = InputSpec(num_keypoints=20, keypoint_layout="custom_20")
TINY = dict(
    rgb_backbone="tiny", tiny_channels=2, flow_channels=2, keypoint_dim=8, hidden=8, keypoint_subset="mediapipe_92"
)
KP_ONLY = dict(streams=("keypoints",), keypoint_subset="mediapipe_92")
CONFIGS = {
    "keypoints": ModelConfig(streams=("keypoints",), **TINY),
    "rgb": ModelConfig(streams=("rgb",), **TINY),
    "flow": ModelConfig(streams=("flow",), **TINY),
    "early": ModelConfig(streams=("rgb", "keypoints", "flow"), fusion="early", **TINY),
    "late": ModelConfig(streams=("rgb", "keypoints", "flow"), fusion="late", **TINY),
    "attention": ModelConfig(streams=("rgb", "keypoints", "flow"), fusion="attention", **TINY),
}


def make_inputs(lengths: list[int], t: int | None = None, k: int = 543, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random padded batch; everything beyond a sequence's length is garbage (must not matter)."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), t or max(lengths)
    return {
        "rgb": torch.rand(b, t, 3, 16, 16, generator=g),
        "keypoints": torch.rand(b, t, k, 3, generator=g),
        "keypoints_mask": torch.rand(b, t, k, generator=g) > 0.2,
        "flow": 3 * torch.randn(b, t, 2, 8, 8, generator=g),
    }


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(CONFIGS[name], V, SPEC)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_shapes_levels_and_features(name):
    cfg = CONFIGS[name]
    lengths = torch.tensor([13, 9, 4])
    out = build(name)(make_inputs(lengths.tolist()), lengths)
    fused = cfg.fusion != "none"
    per_stream = set(cfg.streams) | {f"conv_{s}" for s in cfg.streams}
    levels = {"main", "conv_main"} | (per_stream if fused else set())
    assert set(out.logits) == levels
    for level, x in out.logits.items():
        assert x.shape == (3, 13 // 4, V), level
    assert out.out_lengths.tolist() == out_length(lengths).tolist() == [3, 2, 1]
    f = out.features
    frame_dims = {"rgb": 8 * 2, "keypoints": 8, "flow": 4 * 2}
    for s in cfg.streams:
        assert f[f"frame_{s}"].shape == (3, 13, frame_dims[s])
        assert f[f"temporal_{s}"].shape == f[f"context_{s}"].shape == (3, 3, 8)
    assert f["frame"].shape == (3, 13, sum(frame_dims[s] for s in cfg.streams))
    assert f["temporal"].shape == f["context"].shape == (3, 3, 8)
    if cfg.fusion == "attention":
        assert torch.allclose(f["attention"].sum(-1), torch.ones(3, 3))
    # padded output steps carry no features
    assert f["temporal"][2, 1:].abs().max() == 0 and f["context"][1, 2:].abs().max() == 0


def test_clip_shorter_than_time_reduction_gives_one_step():
    model = build("keypoints").eval()
    out = model(make_inputs([2]), torch.tensor([2]))
    assert out.main.shape == (1, 1, V) and out.out_lengths.tolist() == [1]
    assert out.features["frame"].shape[1] == 2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padding_invariance(name):
    """A clip alone and the same clip padded in a batch with a longer one give the same outputs."""
    model = build(name).eval()
    long_len, short_len = 23, 10
    batch = make_inputs([long_len, short_len], seed=1)
    alone = {k: v[1:2, :short_len] for k, v in batch.items()}
    with torch.no_grad():
        out_b = model(batch, torch.tensor([long_len, short_len]))
        out_a = model(alone, torch.tensor([short_len]))
    n = out_a.out_lengths.item()
    assert n == out_b.out_lengths[1].item() == short_len // 4
    for level in out_a.logits:
        torch.testing.assert_close(out_b.logits[level][1, :n], out_a.logits[level][0, :n], atol=1e-5, rtol=1e-5)
    for key in ("temporal", "context"):
        torch.testing.assert_close(out_b.features[key][1, :n], out_a.features[key][0, :n], atol=1e-5, rtol=1e-5)
    frame_b, frame_a = out_b.features["frame"][1, :short_len], out_a.features["frame"][0]
    torch.testing.assert_close(frame_b, frame_a, atol=1e-5, rtol=1e-5)


def test_late_fusion_main_is_log_mean_of_stream_posteriors():
    out = build("late").eval()(make_inputs([12, 8]), torch.tensor([12, 8]))
    for main, prefix in (("main", ""), ("conv_main", "conv_")):
        logits = [out.logits[prefix + s].detach().double().numpy() for s in ("rgb", "keypoints", "flow")]
        probs = [np.exp(x - x.max(-1, keepdims=True)) for x in logits]
        probs = [p / p.sum(-1, keepdims=True) for p in probs]
        expected = np.log((probs[0] + probs[1] + probs[2]) / 3)
        np.testing.assert_allclose(out.logits[main].detach().numpy(), expected, atol=1e-5)


def test_early_and_attention_fusion_use_every_stream():
    """Changing one stream changes the fused main level but not another stream's own level."""
    for name in ("early", "attention"):
        model = build(name).eval()
        lengths = torch.tensor([12])
        x = make_inputs([12])
        y = dict(x, flow=x["flow"] + 5.0)
        with torch.no_grad():
            a, b = model(x, lengths), model(y, lengths)
        assert not torch.allclose(a.main, b.main)
        torch.testing.assert_close(a.logits["keypoints"], b.logits["keypoints"])
        torch.testing.assert_close(a.logits["rgb"], b.logits["rgb"])


@pytest.mark.parametrize("spec,subset", [(SPEC, "mediapipe_92"), (SPEC, "all"), (CUSTOM_SPEC, "all")])
def test_masked_points_do_not_affect_output(spec, subset):
    torch.manual_seed(0)
    cfg = ModelConfig(streams=("keypoints",), keypoint_subset=subset, keypoint_dim=8, hidden=8)
    model = build_model(cfg, V, spec).eval()
    x = make_inputs([12], k=spec.num_keypoints)
    mask = x["keypoints_mask"]
    mask[0, :4, 11] = False  # a left shoulder missing: holistic frames fall back to point statistics
    garbage = x["keypoints"].clone()
    garbage[~mask] = torch.tensor([float("nan"), 7.0, -3.0])
    lengths = torch.tensor([12])
    with torch.no_grad():
        ref = model({"keypoints": x["keypoints"], "keypoints_mask": mask}, lengths).main
        got = model({"keypoints": garbage, "keypoints_mask": mask}, lengths).main
        moved = x["keypoints"].clone()
        idx = SUBSETS["mediapipe_92"].indices[-1] if spec is SPEC else 19
        mask[0, 5, idx] = True
        moved[0, 5, idx] = torch.tensor([0.9, 0.1, 0.0])
        changed = model({"keypoints": moved, "keypoints_mask": mask}, lengths).main
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(changed, ref)  # a visible point does matter


def test_points_outside_the_subset_are_ignored():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**KP_ONLY, keypoint_dim=8, hidden=8), V, SPEC).eval()
    assert model.branches["keypoints"].encoder.mlp[0].in_features == 92 * 4
    x = make_inputs([8])
    outside = sorted(set(range(543)) - set(SUBSETS["mediapipe_92"].indices) - {11, 12})  # shoulders anchor the frame
    y = x["keypoints"].clone()
    y[:, :, outside] += 0.3
    lengths = torch.tensor([8])
    with torch.no_grad():
        torch.testing.assert_close(model(x, lengths).main, model(dict(x, keypoints=y), lengths).main)


def test_keypoint_normalisation_values():
    g = torch.Generator().manual_seed(0)
    kp = torch.rand(1, 2, 543, 3, generator=g)
    mask = torch.ones(1, 2, 543, dtype=torch.bool)
    mask[0, 1, 12] = False  # frame 1: no right shoulder -> per-frame statistics of the subset
    idx = torch.arange(543)
    out = normalise_keypoints(kp, mask, idx, holistic=True)
    ls, rs = kp[0, 0, 11, :2], kp[0, 0, 12, :2]
    width = (ls - rs).norm()
    expected = (kp[0, 0, :, :2] - (ls + rs) / 2) / width
    torch.testing.assert_close(out[0, 0, :, :2], expected.clamp(-10, 10))
    torch.testing.assert_close(out[0, 0, :, 2], (kp[0, 0, :, 2] / width).clamp(-10, 10))
    vis = out[0, 1, mask[0, 1], :2].double()
    assert vis.mean(0).abs().max() < 1e-5
    assert abs(vis.pow(2).mean().sqrt().item() - 1.0) < 1e-4
    assert out[0, 1, 12].abs().max() == 0
    # translation and scale of the whole frame leave the normalised points unchanged
    moved = kp.clone()
    moved[..., :2] = moved[..., :2] * 0.5 + 0.2
    moved[..., 2] *= 0.5
    torch.testing.assert_close(normalise_keypoints(moved, mask, idx, True), out, atol=1e-4, rtol=1e-4)


def reference_normalise(kp, mask, indices, holistic, eps=1e-3):
    """The original full-layout normalisation (every point masked first, then the subset taken):
    the gathered implementation must reproduce it exactly."""
    full = torch.where(mask.unsqueeze(-1), kp, torch.zeros_like(kp))
    pts, m = full.index_select(2, indices), mask.index_select(2, indices).unsqueeze(-1).to(kp.dtype)
    xy = pts[..., :2]
    count = m.sum(dim=2, keepdim=True)
    centre = (xy * m).sum(dim=2, keepdim=True) / count.clamp(min=1)
    var = (((xy - centre) ** 2) * m).sum(dim=(2, 3), keepdim=True) / (2 * count).clamp(min=1)
    scale = var.sqrt().clamp(min=eps)
    if holistic:
        ls, rs = full[:, :, 11, :2], full[:, :, 12, :2]
        width = (ls - rs).norm(dim=-1)
        ok = (mask[:, :, 11] & mask[:, :, 12] & (width > eps))[:, :, None, None]
        centre = torch.where(ok, ((ls + rs) / 2)[:, :, None, :], centre)
        scale = torch.where(ok, width[:, :, None, None].clamp(min=eps), scale)
    out = torch.cat([(xy - centre) / scale, pts[..., 2:] / scale], dim=-1)
    return out.clamp(-10.0, 10.0) * m


def awkward_keypoints(k: int = 543, t: int = 23, seed: int = 0):
    """Random landmarks with NaN where masked, frames without a shoulder, coincident shoulders, empty frames."""
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(2, t, k, 3, generator=g) * 1.2 - 0.1
    mask = torch.rand(2, t, k, generator=g) > 0.2
    if k == 543:
        mask[:, ::3, 11] = False  # no left shoulder: subset statistics
        mask[:, 1::3, 11:13] = True
        kp[0, 1, 12] = kp[0, 1, 11]  # zero shoulder width: subset statistics too
    mask[1, 4] = False  # nothing detected
    kp[~mask] = float("nan")
    return kp, mask


HANDS = list(range(501, 543))  # a subset without the shoulders: they are gathered as extra anchors


@pytest.mark.parametrize("subset", ["mediapipe_92", "mediapipe_hands_pose", "hands", "all"])
@pytest.mark.parametrize("holistic", [True, False])
def test_gathered_normalisation_equals_full_layout_reference(subset, holistic):
    kp, mask = awkward_keypoints()
    idx = torch.tensor(HANDS if subset == "hands" else SUBSETS.get(subset, SUBSETS[HOLISTIC_543]).indices)
    got = normalise_keypoints(kp, mask, idx, holistic)
    want = reference_normalise(kp, mask, idx, holistic)
    assert got.shape == (2, 23, len(idx), 3) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_keypoint_gather_adds_only_missing_anchors():
    idx92 = list(SUBSETS["mediapipe_92"].indices)
    gather, anchors = encoders.keypoint_gather(idx92, holistic=True)
    assert gather.tolist() == idx92 and anchors == (idx92.index(11), idx92.index(12))  # shoulders already in it
    gather, anchors = encoders.keypoint_gather(HANDS, holistic=True)
    assert gather.tolist() == HANDS + [11, 12] and anchors == (42, 43)
    gather, anchors = encoders.keypoint_gather([3, 1], holistic=False)
    assert gather.tolist() == [3, 1] and anchors is None


@pytest.mark.parametrize("spec,subset", [(SPEC, "mediapipe_92"), (SPEC, "all"), (CUSTOM_SPEC, "all")])
def test_keypoint_encoder_equals_full_layout_reference(spec, subset):
    torch.manual_seed(0)
    cfg = ModelConfig(streams=("keypoints",), keypoint_subset=subset, keypoint_dim=8, hidden=8)
    enc = build_model(cfg, V, spec).eval().branches["keypoints"].encoder
    kp, mask = awkward_keypoints(spec.num_keypoints)
    lengths = torch.tensor([23, 15])
    with torch.no_grad():
        for x in (kp, kp.half()):  # float16 caches are gathered, then cast
            pts = reference_normalise(x.float(), mask, enc.indices, spec.num_keypoints == 543)
            sub = mask.index_select(2, enc.indices).unsqueeze(-1).float()
            want = enc.mlp(torch.cat([pts, sub], -1).flatten(2)) * (torch.arange(23) < lengths[:, None])[..., None]
            torch.testing.assert_close(enc(x, mask, lengths), want, atol=1e-6, rtol=0)


BAD_CONFIGS = [
    (dict(streams=()), "streams is empty"),
    (dict(streams=("depth",)), "'depth'"),
    (dict(streams=("rgb", "rgb"), fusion="early"), "repeats"),
    (dict(streams=("rgb", "flow")), "need a fusion"),
    (dict(fusion="early"), "needs several streams"),
    (dict(streams=("rgb", "flow"), fusion="max"), "'max'"),
    (dict(rgb_backbone="vgg16"), "'vgg16'"),
    (dict(rgb_backbone="tiny", rgb_pretrained="w.pth"), "'w.pth'"),
    (dict(rgb_pretrained=""), "''"),
    (dict(keypoint_subset="mediapipe_91"), "'mediapipe_91'"),
    (dict(hidden=7), "7"),
    (dict(hidden=0), "hidden"),
    (dict(lstm_layers=1.5), "1.5"),
    (dict(dropout=1.0), "1.0"),
    (dict(temporal="tscm"), "'tscm'"),
    (dict(share_classifier="yes"), "'yes'"),
]


@pytest.mark.parametrize("kwargs,message", BAD_CONFIGS)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        ModelConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = ModelConfig(
        streams=("rgb", "keypoints"), fusion="attention", rgb_pretrained="/x/r18.pth", share_classifier=True, hidden=64
    )
    d = cfg.to_dict()
    assert d["streams"] == ["rgb", "keypoints"]
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    assert ModelConfig.from_dict({}) == ModelConfig()
    with pytest.raises(ValueError, match=r"\['hiden', 'layers'\]"):
        ModelConfig.from_dict({"hiden": 3, "layers": 2})
    with pytest.raises(ValueError, match="string 'rgb'"):
        ModelConfig.from_dict({"streams": "rgb"})


def test_build_refuses_streams_missing_from_cache():
    with pytest.raises(ValueError, match="rgb_size=0"):
        build_model(CONFIGS["rgb"], V, CUSTOM_SPEC)
    with pytest.raises(ValueError, match="custom_20"):  # a holistic subset on a custom layout
        build_model(CONFIGS["keypoints"], V, CUSTOM_SPEC)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(CONFIGS["keypoints"], 1, SPEC)


def test_shared_classifier_and_parameter_count():
    assert count_parameters(torch.nn.Linear(3, 4)) == 16
    plain = build_model(ModelConfig(**TINY), V, SPEC)
    shared = build_model(ModelConfig(share_classifier=True, **TINY), V, SPEC)
    branch = shared.branches["keypoints"]
    assert branch.conv_classifier is branch.classifier
    assert count_parameters(plain) - count_parameters(shared) == 8 * V + V


def test_pretrained_weights_load_and_mismatch(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    good = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), good)  # fc included, as in torchvision's file
    enc = RGBEncoder("resnet18", str(good)).eval()
    assert enc.out_dim == 512
    frames = torch.rand(1, 2, 3, 32, 32)
    ref.fc = torch.nn.Identity()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(enc(frames, torch.tensor([2]))[0], ref((frames[0] - mean) / std))

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    wrong_shape = tmp_path / "wrong_shape.pth"
    torch.save(state, wrong_shape)
    with pytest.raises(ValueError, match=r"wrong_shape\.pth.*layer1\.0\.conv1\.weight"):
        RGBEncoder("resnet18", str(wrong_shape))
    del state["layer1.0.conv1.weight"]
    missing = tmp_path / "missing.pth"
    torch.save(state, missing)
    with pytest.raises(ValueError, match=r"missing\.pth.*1 missing keys"):
        RGBEncoder("resnet18", str(missing))
    with pytest.raises(ValueError, match="resnet34"):  # resnet18 weights given to a resnet34
        RGBEncoder("resnet34", str(good))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        RGBEncoder("resnet18", str(tmp_path / "nope.pth"))


def test_random_init_warns_once(monkeypatch):
    monkeypatch.setattr(encoders, "_warned_random_init", set())
    with pytest.warns(UserWarning, match="no ImageNet weights for resnet18"):
        RGBEncoder("resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RGBEncoder("resnet18")  # second build: silent


def test_onnx_export_matches_torch(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(ModelConfig(**KP_ONLY, keypoint_dim=16, hidden=16), V, SPEC).eval()
    wrapper = ExportWrapper(model, ("keypoints", "keypoints_mask"))
    x = make_inputs([20, 13])
    path = tmp_path / "kp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and LSTM batch-size notes
        torch.onnx.export(
            wrapper,
            (x["keypoints"], x["keypoints_mask"], torch.tensor([20, 13])),
            str(path),
            dynamo=False,
            input_names=["keypoints", "keypoints_mask", "lengths"],
            output_names=["logits", "out_lengths"],
            dynamic_axes={
                "keypoints": {0: "batch", 1: "time"},
                "keypoints_mask": {0: "batch", 1: "time"},
                "lengths": {0: "batch"},
                "logits": {0: "batch", 1: "time_out"},
                "out_lengths": {0: "batch"},
            },
        )
    assert not model.training  # export must leave the model in eval mode
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for lengths in ([31, 17, 9], [12]):  # two other T and batch sizes than the traced ones
        y = make_inputs(lengths, seed=len(lengths))
        lens = torch.tensor(lengths)
        with torch.no_grad():
            ref, ref_len = wrapper(y["keypoints"], y["keypoints_mask"], lens)
        feed = {"keypoints": y["keypoints"].numpy(), "keypoints_mask": y["keypoints_mask"].numpy(), "lengths": lens.numpy()}
        got, got_len = sess.run(None, feed)
        assert got.shape == (len(lengths), max(lengths) // 4, V)
        np.testing.assert_array_equal(got_len, ref_len.numpy())
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ["early", "late", "attention"])
def test_gradients_reach_every_stream(name):
    model = build(name).train()
    lengths = torch.tensor([12, 9])
    out = model(make_inputs(lengths.tolist()), lengths)
    out.main.log_softmax(-1).sum().backward()
    for s in ("rgb", "keypoints", "flow"):
        grads = [p.grad for p in model.branches[s].encoder.parameters()]
        assert all(g is not None for g in grads), s
        assert sum(g.abs().sum().item() for g in grads) > 0, s
    assert math.isfinite(out.main.sum().item())
