"""Annotated videos: landmarks and timed captions encoded as H.264 (preprocess.render, infer --overlay)."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest

from preprocess import render as R


def decode(path) -> tuple[list[np.ndarray], str, float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, s.codec_context.name, float(s.average_rate)


def test_caption_words_follow_the_timing():
    timed = [{"gloss": "A", "start_s": 0.2, "end_s": 0.5}, {"gloss": "B", "start_s": 0.6, "end_s": 1.0}]
    assert R.caption_words(timed, 0.1) == []
    assert R.caption_words(timed, 0.3) == [("A", True)]
    assert R.caption_words(timed, 0.55) == [("A", False)]
    assert R.caption_words(timed, 0.7) == [("A", False), ("B", True)]


def test_overlay_is_h264_with_every_frame_and_timed_captions(tmp_path):
    from test_features import write_video

    t, h, w = 40, 120, 160
    src = write_video(tmp_path / "in.mp4", np.full((t, h, w, 3), 90, np.uint8), fps=25.0)
    rng = np.random.default_rng(0)
    kp = np.zeros((t, 543, 3), np.float32)
    kp[..., 0] = rng.uniform(0.2, 0.8, (t, 543))
    kp[..., 1] = rng.uniform(0.1, 0.4, (t, 543))  # upper part only: the caption band stays clear of it
    mask = np.zeros((t, 543), bool)
    mask[:, :33] = mask[:, 501:] = True
    timed = [{"gloss": "HELLO", "start_s": 0.8, "end_s": 1.2, "score": 0.9}]
    assert R.write_overlay(src, tmp_path / "out.mp4", timed, (kp, mask)) == t
    frames, codec, rate = decode(tmp_path / "out.mp4")
    assert codec == "h264" and len(frames) == t and rate == pytest.approx(25.0)
    assert frames[0].shape == (h, w, 3)
    band = slice(h - 20, h)
    before, during, after = frames[10][band, :w], frames[25][band, :w], frames[35][band, :w]
    grey = np.abs(before.astype(int) - 90).mean()
    assert grey < 4  # no caption before the first gloss starts
    assert np.abs(during.astype(int) - before.astype(int)).mean() > 15  # darkened band with text
    yellow = (during[..., 0] > 180) & (during[..., 1] > 160) & (during[..., 2] < 100)
    assert yellow.sum() > 10  # the gloss being signed is highlighted
    after_yellow = (after[..., 0] > 180) & (after[..., 1] > 160) & (after[..., 2] < 100)
    assert after_yellow.sum() < yellow.sum() / 5 and np.abs(after.astype(int) - 90).mean() > 15  # shown, not current
    top = slice(0, h // 2)
    assert np.abs(frames[10][top, :w].astype(int) - 90).max() > 60  # the skeleton is drawn


def test_render_landmarks_without_video(tmp_path):
    kp = np.zeros((12, 543, 3), np.float32)
    kp[..., :2] = 0.5
    kp[:, 11, :2] = (0.3, 0.3)  # left shoulder
    kp[:, 12, :2] = (0.7, 0.3)  # right shoulder: the pose edge 11-12 is a line between them
    mask = np.zeros((12, 543), bool)
    mask[:, [11, 12]] = True
    assert R.render_landmarks(kp, mask, tmp_path / "r.mp4", fps=10.0, size=(101, 79), caption=["A", "B"]) == 12
    frames, codec, rate = decode(tmp_path / "r.mp4")
    assert len(frames) == 12 and frames[0].shape == (80, 102, 3) and rate == pytest.approx(10.0)  # padded to even
    row = frames[0][24, 35:65]  # along the shoulder line (y = 0.3 * 79)
    assert (row.max(axis=-1) > 100).mean() > 0.8
    assert frames[0][10:20, :].max() < 40  # nothing drawn elsewhere above it
    with pytest.raises(ValueError, match="at least 16x16"):
        R.render_landmarks(kp, mask, tmp_path / "x.mp4", size=(8, 8))


def test_infer_overlay_on_a_real_clip(shared_dir, tmp_path, capsys):
    import torch

    from evaluate import export as E
    from evaluate.infer import main as infer_main
    from test_infer import SPEC, STUDENT, VOCAB
    from models.students import build_student

    torch.manual_seed(0)
    onnx = E.export_onnx(build_student(STUDENT, len(VOCAB), SPEC).eval(), SPEC, VOCAB, STUDENT.to_dict(),
                         tmp_path / "s.onnx")
    clip = shared_dir / "clips" / "wlasl_68011_book.mp4"
    out = tmp_path / "annotated.mp4"
    assert infer_main(["--model", str(onnx), "--video", str(clip), "--beam", "1", "--overlay", str(out),
                       "--json", str(tmp_path / "g.json")]) == 0
    printed = capsys.readouterr()
    timed = json.loads((tmp_path / "g.json").read_text())
    assert printed.out.splitlines()[0] == (" ".join(g["gloss"] for g in timed) or "(no gloss recognised)")
    assert "start-up" in printed.err and f"overlay: {out}" in printed.err
    from preprocess.video import read_frames

    src, _ = read_frames(clip)
    frames, codec, _ = decode(out)
    assert codec == "h264" and len(frames) == len(src)


def test_keypoint_io_render_of_a_cached_utterance(tmp_path, capsys):
    from preprocess import keypoint_io
    from preprocess.cache import dataset_dir, load_utt
    from preprocess.manifest import read_manifest
    from test_data import DATASET, make_tiny_cache

    cache = make_tiny_cache(tmp_path / "cache")
    u = read_manifest(dataset_dir(cache, DATASET) / "manifest.jsonl")[0]
    n = len(load_utt(dataset_dir(cache, DATASET) / u.split / f"{u.id}.npz", ("keypoints",))["keypoints"])
    out = tmp_path / "r.mp4"
    assert keypoint_io.main(["render", "--cache", str(cache), "--dataset", DATASET, "--utt", u.id,
                             "--out", str(out), "--width", "96"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} ({n} frames)"
    frames, codec, _ = decode(out)
    assert codec == "h264" and len(frames) == n and frames[0].shape[1] == 96
    assert max(f.max() for f in frames) > 100  # something is drawn
    assert keypoint_io.main(["render", "--cache", str(cache), "--dataset", DATASET, "--utt", "nope",
                             "--out", str(out)]) == 2
    assert "no utterance 'nope'" in capsys.readouterr().err
