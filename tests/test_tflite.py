"""TFLite export of a landmark student (evaluate.export --tflite through evaluate.tflite in its own environment)."""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import numpy as np
import pytest
import torch

from evaluate import export as E
from models.onnx_meta import ort_session
from models.checkpoint import save_checkpoint
from models.data import CacheDataset
from models.students import StudentConfig, build_student
from test_data import DATASET, make_tiny_cache


@pytest.fixture(scope="module")
def tflite_python():
    try:
        return E.tflite_python()
    except FileNotFoundError as e:
        pytest.skip(f"{e} (the TFLite converters live in their own ~2.6 GB environment)")


def test_tflite_float_and_int8_match_onnx(tflite_python, tmp_path, capsys):
    cache = make_tiny_cache(tmp_path / "cache")
    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), augment=None)
    cfg = StudentConfig(kind="landmark", dim=16, layers=1, heads=2, ff_dim=32)
    torch.manual_seed(0)
    ck = tmp_path / "run" / "best.pt"
    save_checkpoint(ck, {
        "model_config": cfg.to_dict(), "student_config": cfg.to_dict(),
        "input_spec": {"num_keypoints": 543, "keypoint_layout": "mediapipe_holistic_543", "rgb_size": 0, "flow_size": 0},
        "vocab": list(ds.vocab.tokens), "cache": {"dataset": DATASET, "config": {}},
        "data_config": {"dataset": DATASET, "cache": str(cache)}, "model": build_student(cfg, len(ds.vocab), ds.spec()).state_dict()})
    out = tmp_path / "run" / "model.onnx"
    assert E.main(["--ckpt", str(ck), "--out", str(out), "--tflite", "--tflite-frames", "64", "--latency-repeats", "2"]) == 0
    printed = capsys.readouterr().out
    f32, i8 = tmp_path / "run" / "model.float32.tflite", tmp_path / "run" / "model.int8.tflite"
    assert f32.is_file() and i8.is_file() and i8.stat().st_size < f32.stat().st_size
    assert f"wrote {f32}" in printed and "cached dev utterances" in printed
    card = json.loads((tmp_path / "run" / "model.card.json").read_text())
    t = card["tflite_vs_onnx_fp32"]
    assert t["frames"] == 64 and t["float32"]["max_abs_diff"] < 1e-4 and t["int8"]["max_abs_diff"] < 0.1
    assert t["float32"]["sequence_agreement"] == 1.0 and card["files"]["tflite int8"]["bytes"] == i8.stat().st_size

    # independently: the plain LiteRT interpreter (no TensorFlow, so no Flex ops) against onnxruntime here
    rng = np.random.default_rng(1)
    feed = {"keypoints": rng.random((1, 64, 543, 3), dtype=np.float32), "keypoints_mask": rng.random((1, 64, 543)) < 0.9,
            "lengths": np.array([50], np.int64)}
    np.savez(tmp_path / "x.npz", **feed)
    code = textwrap.dedent(f"""
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
        x = np.load({str(tmp_path / 'x.npz')!r})
        it = Interpreter(model_path={str(f32)!r}); it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], x[d["name"].removeprefix("serving_default_").split(":")[0]].astype(d["dtype"]))
        it.invoke()
        out = [d for d in it.get_output_details() if len(d["shape"]) == 3][0]
        np.save({str(tmp_path / 'y.npy')!r}, it.get_tensor(out["index"]))
    """)
    proc = subprocess.run([str(tflite_python), "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref, ref_len = ort_session(out).run(["logits", "out_lengths"], feed)
    got = np.load(tmp_path / "y.npy")
    n = int(ref_len[0])
    assert n == 12 and np.abs(got[0, :n] - ref[0, :n]).max() < 1e-4
