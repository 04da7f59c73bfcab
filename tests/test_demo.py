"""`make demo` end to end at toy scale: tiny synthsign -> features -> fusion teacher -> distilled
landmark student -> the WER table, through the same entry points the demo calls."""
from __future__ import annotations

import json

import yaml

from evaluate import demo
from evaluate.eval import evaluate


def test_demo_goes_from_nothing_to_a_wer_table(tmp_path, capsys):
    dataset = tmp_path / "synthsign.yaml"  # the stem names the cache folder, as the built-in one
    dataset.write_text(yaml.safe_dump({
        "reader": "synthsign", "root": str(tmp_path / "data"),
        "features": {"rgb_size": 32, "flow": {"method": "dis", "size": 16}, "landmarks": "file"},
        "generator": {"preset": "tiny"}}))
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({
        "data": {"dataset": "synthsign", "cache": "unused", "augment": {"crop_size": 28, "flip_prob": 0.0}},
        "model": {"streams": ["rgb", "keypoints", "flow"], "fusion": "attention", "rgb_backbone": "tiny",
                  "tiny_channels": 4, "keypoint_subset": "mediapipe_92", "keypoint_dim": 16, "flow_channels": 4,
                  "hidden": 16, "lstm_layers": 1},
        "train": {"epochs": 1, "batch_size": 4, "beam": 1}}))
    cache, out = tmp_path / "cache", tmp_path / "demo"
    argv = ["--dataset", str(dataset), "--cache", str(cache), "--out", str(out), "--workers", "1",
            "--teacher-config", str(teacher), "--teacher-epochs", "1", "--student-epochs", "1", "--beam", "2"]
    assert demo.main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    assert list(results["wer"]) == ["teacher (fusion: rgb+landmarks+flow)", "student (landmarks, distilled)"]
    assert set(results["seconds"]) == {"features", "teacher", "student (landmarks, distilled)"}
    # the table's figures are what evaluate.eval gives for the same checkpoints
    for label, ckpt in (("teacher (fusion: rgb+landmarks+flow)", out / "teacher" / "best.pt"),
                        ("student (landmarks, distilled)", out / "student" / "best.pt")):
        for split in ("dev", "test"):
            want = evaluate(ckpt, str(cache), "synthsign", split, beam=2, out=tmp_path / "check" / label[:7] / split)
            assert results["wer"][label][split] == want.wer
    printed = capsys.readouterr().out
    assert "synthsign WER (%)" in printed and any(ln.startswith("│ student") for ln in printed.splitlines())
    assert (out / "student" / "teacher_outputs").is_dir()  # distilled through the teacher-output cache
    for name in ("curves.png", "alignment.png"):  # the pictures are written and their paths printed
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"picture: {out / name}" in printed
