"""ONNX export: names, dynamic axes, metadata round trip, onnxruntime == torch, and int8 quantisation."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort  # noqa: F401 - a pinned dependency: a broken install fails here instead of skipping
import pytest
import torch

from evaluate import export as E
from models.onnx_meta import ort_session, read_metadata
from evaluate.core.decode import greedy_decode
from models.base import InputSpec
from models.build import ModelConfig, build_model
from models.checkpoint import save_checkpoint
from models.students import StudentConfig, build_student
from preprocess.layouts import HOLISTIC_543

SPEC = InputSpec(num_keypoints=543, keypoint_layout=HOLISTIC_543)
VOCAB = ["<blank>"] + [f"G{i}" for i in range(1, 8)]
TEACHER = ModelConfig(keypoint_dim=16, hidden=16, lstm_layers=1)
STUDENT = StudentConfig(dim=32, layers=1, heads=2, ff_dim=64, dropout=0.0)


def make(kind: str):
    torch.manual_seed(0)
    if kind == "teacher":
        return build_model(TEACHER, len(VOCAB), SPEC).eval(), TEACHER.to_dict()
    return build_student(STUDENT, len(VOCAB), SPEC).eval(), STUDENT.to_dict()


@pytest.fixture(scope="module", params=["teacher", "student"])
def exported(request, tmp_path_factory):
    model, cfg = make(request.param)
    path = E.export_onnx(model, SPEC, VOCAB, cfg, tmp_path_factory.mktemp(request.param) / "m.onnx",
                         preprocess={"landmark_source": "mediapipe"})
    return request.param, model, cfg, path


def test_names_checker_and_metadata_round_trip(exported):
    kind, model, cfg, path = exported
    onnx.checker.check_model(str(path))
    sess = ort_session(path)
    assert [i.name for i in sess.get_inputs()] == ["keypoints", "keypoints_mask", "lengths"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "out_lengths"]
    assert sess.get_inputs()[0].shape[:2] == ["batch", "time"]  # dynamic axes kept their names
    meta = read_metadata(path)
    assert meta.vocab == tuple(VOCAB)
    assert meta.config == json.loads(json.dumps(cfg))
    assert meta.spec == SPEC
    assert meta.input_names == ("keypoints", "keypoints_mask")
    assert meta.time_reduction == 4 and meta.level == "main"
    assert meta.preprocess == {"landmark_source": "mediapipe"}
    if kind == "teacher":
        assert ModelConfig.from_dict(meta.config) == TEACHER  # the config rebuilds the model
    else:
        assert StudentConfig.from_dict(meta.config) == STUDENT
    assert not model.training  # export leaves the model in its mode


def test_landmark_inputs_are_gathered_before_any_per_point_work(exported):
    """The graph takes the points it reads (subset + shoulders) straight from the 543-point inputs:
    per-point ops over all 543 points cost more than the rest of a student (the bar: <= 1 ms per 200-frame clip).
    The student reads mediapipe_92 (one Gather per input); the teacher reads every point (a Slice)."""
    kind, model, _, path = exported
    proto = onnx.load(str(path))
    consumers = [n for n in proto.graph.node  # Shape reads no values
                 if {"keypoints", "keypoints_mask"} & set(n.input) and n.op_type != "Shape"]
    if kind == "teacher":
        assert [n.op_type for n in consumers] == ["Slice", "Slice"], [n.op_type for n in consumers]
        return
    assert [n.op_type for n in consumers] == ["Gather", "Gather"], [n.op_type for n in consumers]
    consts = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    read = {tuple(consts[n.input[1]].tolist()) for n in consumers}
    assert read == {tuple(model.input.gather.tolist())} and len(model.input.gather) == 92  # the shoulders are in the subset


@pytest.mark.parametrize("lengths", [(37, 21, 50), (9,)])
def test_onnxruntime_matches_torch(exported, lengths):
    _, model, cfg, path = exported
    diff = E.verify_onnx(path, model, SPEC, E.model_input_names(cfg), lengths=lengths, seed=len(lengths))
    assert diff < 1e-4


def test_model_input_names_table():
    cases = [
        ({"streams": ["keypoints"]}, ("keypoints", "keypoints_mask")),
        ({"streams": ["flow", "rgb", "keypoints"]}, ("rgb", "keypoints", "keypoints_mask", "flow")),
        ({"kind": "landmark"}, ("keypoints", "keypoints_mask")),
        ({"kind": "lrinet"}, ("rgb",)),
        ({"kind": "rgb"}, ("rgb",)),
    ]
    for cfg, want in cases:
        assert E.model_input_names(cfg) == want, cfg
    with pytest.raises(ValueError, match="neither 'streams' nor 'kind'"):
        E.model_input_names({"hidden": 3})


def _overfit_student(steps: int = 60):
    """A student trained to peaked posteriors on two synthetic sentences (each gloss = one pose)."""
    torch.manual_seed(0)
    model = build_student(STUDENT, len(VOCAB), SPEC)
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(len(VOCAB), 543, 3, generator=g)
    targets = [[1, 2, 3], [4, 5, 1, 2]]
    t = 48
    kp = torch.zeros(2, t, 543, 3)
    for b, tg in enumerate(targets):
        seg = t // len(tg)
        for i, c in enumerate(tg):
            kp[b, i * seg:(i + 1) * seg] = protos[c] + 0.01 * torch.randn(seg, 543, 3, generator=g)
    inputs = {"keypoints": kp, "keypoints_mask": torch.ones(2, t, 543, dtype=torch.bool)}
    lengths = torch.tensor([t, t])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    flat, tl = torch.tensor(sum(targets, [])), torch.tensor([len(x) for x in targets])
    model.train()
    for _ in range(steps):
        out = model(inputs, lengths)
        loss = ctc(out.main.log_softmax(-1).transpose(0, 1), flat, out.out_lengths, tl)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), inputs, lengths, targets


def test_int8_smaller_and_decodes_the_same_on_a_peaked_case(tmp_path):
    model, inputs, lengths, targets = _overfit_student()
    fp32 = E.export_onnx(model, SPEC, VOCAB, STUDENT.to_dict(), tmp_path / "s.onnx")
    assert E.auto_int8_ops(fp32) == E.INT8_OPS  # Linear weights dominate this student
    q = E.quantize_int8(fp32, E.int8_path_for(fp32))
    assert q.name == "s.int8.onnx"
    ops = E.quantized_ops(q)
    assert ops.get("MatMulInteger", 0) >= 4 and "ConvInteger" not in ops  # Linear weights; convs stay float
    smallest = E.quantize_int8(fp32, tmp_path / "all.onnx", E.INT8_ALL_OPS)
    assert E.quantized_ops(smallest).get("ConvInteger") == 2  # the K5-P2-K5-P2 block
    def weight_bytes(path):
        return sum(len(t.SerializeToString()) for t in onnx.load(str(path)).graph.initializer)

    for path in (q, smallest):  # each int8 weight saves 3 bytes of its float32 original
        n_int8 = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer
                     if t.data_type == onnx.TensorProto.INT8)
        saved = weight_bytes(fp32) - weight_bytes(path)
        assert n_int8 > 0 and abs(saved - 3 * n_int8) < 0.05 * 3 * n_int8, (path.name, saved, n_int8)
    assert smallest.stat().st_size < q.stat().st_size < fp32.stat().st_size
    assert read_metadata(q).vocab == tuple(VOCAB)  # metadata survives quantisation
    with torch.no_grad():
        out = model(inputs, lengths)
    assert greedy_decode(out.main, out.out_lengths) == targets  # the fp32 case really is peaked
    for path in (q, smallest):
        stats = E.compare_int8(fp32, path, inputs, lengths)
        assert stats["sequence_agreement"] == 1.0
        assert stats["frame_agreement"] > 0.9
        assert 0.0 < stats["max_abs_diff"] < 2.0  # quantised, so not identical, but close


def test_export_cli_from_student_checkpoint(tmp_path, capsys):
    model, cfg = make("student")
    ck = tmp_path / "best.pt"
    save_checkpoint(ck, {"model_config": cfg, "input_spec": {"num_keypoints": 543, "keypoint_layout": HOLISTIC_543,
                                                              "rgb_size": 0, "flow_size": 0},
                         "vocab": VOCAB, "model": model.state_dict(),
                         "cache": {"dataset": "synthsign", "config": {"landmark_source": "synthetic"}}})
    out = tmp_path / "exp" / "model.onnx"
    assert E.main(["--ckpt", str(ck), "--out", str(out), "--int8"]) == 0
    text = capsys.readouterr().out
    assert "onnx.checker ok" in text and "quantised ops" in text and "greedy sequence agreement" in text
    assert out.is_file() and (tmp_path / "exp" / "model.int8.onnx").is_file()
    meta = read_metadata(out)
    assert meta.preprocess == {"landmark_source": "synthetic"}
    assert StudentConfig.from_dict(meta.config) == STUDENT


def test_export_cli_missing_checkpoint(tmp_path, capsys):
    assert E.main(["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "checkpoint not found" in err


def test_bad_export_requests(tmp_path):
    model, cfg = make("student")
    with pytest.raises(ValueError, match="outputs 8 classes but the vocabulary has 3 tokens"):
        E.export_onnx(model, SPEC, VOCAB[:3], cfg, tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="level 'bogus' not in the model's outputs"):
        E.export_onnx(model, SPEC, VOCAB, cfg, tmp_path / "b.onnx", level="bogus")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_metadata_missing_is_one_clear_line(tmp_path, exported):
    _, _, _, path = exported
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ValueError, match=r"bare\.onnx: no 'vocabulary', 'model_config', 'input_spec' in the ONNX "
                                         r"metadata .* re-export"):
        read_metadata(bare)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx: not a readable ONNX model"):
        read_metadata(junk)


def test_narrow_lrinet_exports_with_its_antialiased_resize(tmp_path):
    """LRINet reading 64 px frames at r = 56 resizes inside the model; the export must carry it."""
    cfg = StudentConfig(kind="lrinet", input_size=56, lrinet_width=0.0625, lrinet_stem_repeats=1, dropout=0.0)
    spec = InputSpec(rgb_size=64)
    torch.manual_seed(0)
    model = build_student(cfg, len(VOCAB), spec).eval()
    path = E.export_onnx(model, spec, VOCAB, cfg.to_dict(), tmp_path / "lrinet.onnx")
    assert E.verify_onnx(path, model, spec, E.model_input_names(cfg.to_dict()), lengths=(9, 5)) < 1e-4
