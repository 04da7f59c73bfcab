"""evaluate.export: int8 compared on real cached utterances, and the model card written beside the model."""
from __future__ import annotations

import json

import torch

from evaluate import export as E
from models.checkpoint import save_checkpoint
from models.data import CacheDataset
from models.students import StudentConfig, build_student
from test_data import DATASET, make_tiny_cache


def test_int8_agreement_on_cached_inputs_and_the_model_card(tmp_path, capsys):
    cache = make_tiny_cache(tmp_path / "cache")
    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), augment=None)
    cfg = StudentConfig(kind="landmark", dim=16, layers=1, heads=2, ff_dim=32)
    torch.manual_seed(0)
    student = build_student(cfg, len(ds.vocab), ds.spec())
    run = tmp_path / "run"
    ck = run / "best.pt"
    save_checkpoint(ck, {
        "model_config": cfg.to_dict(), "student_config": cfg.to_dict(),
        "input_spec": {"num_keypoints": 543, "keypoint_layout": "mediapipe_holistic_543", "rgb_size": 0, "flow_size": 0},
        "vocab": list(ds.vocab.tokens), "cache": {"dataset": DATASET, "config": {"landmark_source": "file"}},
        "data_config": {"dataset": DATASET, "cache": str(cache)}, "train_config": {"epochs": 3, "lr": 1e-3},
        "epoch": 3, "best": 55.0, "model": student.state_dict()})
    (run / "results.json").write_text(json.dumps({"beam": 10, "splits": {"dev": {"wer": 41.5, "sub": 1, "del": 2,
                                                                                  "ins": 0, "n_ref": 9}}}))
    out = run / "model.onnx"
    assert E.main(["--ckpt", str(ck), "--out", str(out), "--int8", "--latency-repeats", "2"]) == 0
    printed = capsys.readouterr().out
    dev = CacheDataset(cache, DATASET, "dev", ("keypoints",), augment=None)
    where = f"{len(dev)} cached dev utterances of {DATASET}"
    assert f"int8 vs fp32 on {where}" in printed and "model card:" in printed

    card = json.loads((run / "model.card.json").read_text())
    inputs, lengths, src = E.cached_inputs(ck, cache, "dev")
    assert src == where and lengths.tolist() == [len(dev[i]["inputs"]["keypoints"]) for i in range(len(dev))]
    want = E.compare_int8(out, E.int8_path_for(out), inputs, lengths)
    assert card["int8_vs_fp32"] == {**want, "inputs": where}
    assert card["vocabulary_size"] == len(ds.vocab) and card["inputs"] == ["keypoints", "keypoints_mask", "lengths"]
    assert card["files"]["fp32"]["bytes"] == out.stat().st_size
    assert card["files"]["int8"]["bytes"] == E.int8_path_for(out).stat().st_size
    assert set(card["latency"]) == {"fp32", "int8"} and all(v["median_ms"] > 0 for v in card["latency"].values())
    assert card["results"]["wer"] == {"dev": {"wer": 41.5, "sub": 1, "del": 2, "ins": 0, "n_ref": 9}}
    assert card["training_data"]["dataset"] == DATASET and card["machine"]["cores"] >= 1
    md = (run / "model.card.md").read_text()
    assert "| dev | 41.50 |" in md and f"{len(ds.vocab)} entries" in md and "int8 vs fp32" in md

    # without a cache the comparison says it ran on random inputs
    assert E.main(["--ckpt", str(ck), "--out", str(tmp_path / "m2.onnx"), "--int8", "--cache", str(tmp_path / "none"),
                   "--no-card"]) == 0
    assert "random inputs (no cache found" in capsys.readouterr().out
    assert not (tmp_path / "m2.card.json").exists()
