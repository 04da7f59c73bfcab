"""Glosses placed in time: CTC spikes -> segments (evaluate.core.decode), infer's JSON/CTM, eval's timed CTM + STM."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluate import infer as I
from evaluate.core.decode import ctc_viterbi, greedy_decode, timed_glosses
from evaluate.core.formats import read_ctm, read_stm
from evaluate.core.wer import score_files

V = 8


def peaked(path: list[int], hi: float = 6.0) -> np.ndarray:
    """[T, V] log-probabilities whose argmax follows ``path``."""
    logits = np.zeros((len(path), V))
    logits[np.arange(len(path)), path] = hi
    return torch.from_numpy(logits).log_softmax(-1).numpy()


def test_segments_of_a_hand_made_path():
    path = [0, 0, 3, 3, 0, 0, 0, 5, 0, 5, 0, 0]
    lp = peaked(path)
    labels = greedy_decode(torch.from_numpy(lp)[None], torch.tensor([len(path)]))[0]
    assert labels == [3, 5, 5]
    got = timed_glosses(lp, labels, pad=2)
    # spike runs [2, 4), [7, 8), [9, 10); blank gaps 2 | 3 | 1 | 2 shared half and half, at most 2 per side
    assert [(g.token, g.start, g.end) for g in got] == [(3, 0, 6), (5, 6, 9), (5, 9, 12)]
    assert [g.spike for g in got] == [2, 7, 9]
    p = float(np.exp(lp[2, 3]))
    assert all(abs(g.score - p) < 1e-9 for g in got)
    assert [(g.start, g.end) for g in timed_glosses(lp, labels, pad=0)] == [(2, 4), (7, 8), (9, 10)]
    # step j covers frames [4j, 4j + 4); at 25 fps the first gloss is 0 .. 24 frames
    assert got[0].seconds(25.0, 4) == (0.0, 24 / 25)
    assert got[2].seconds(25.0, 4, num_frames=46) == (36 / 25, 46 / 25)


def test_viterbi_places_a_labelling_the_argmax_path_does_not_spell():
    # greedy reads 3 5; a beam may answer 3 3 5 -- the second 3 must take its own steps after a blank
    lp = peaked([3, 3, 0, 0, 5, 0])
    lp[2] = np.log(np.array([0.45, 0, 0, 0.4, 0, 0.15, 0, 0]) + 1e-9)
    owner = ctc_viterbi(lp, [3, 3, 5])
    assert owner.tolist()[:1] == [0] and 1 in owner and owner.tolist()[4] == 2
    assert (np.diff(owner[owner >= 0]) >= 0).all()  # labels in order
    with pytest.raises(ValueError, match="cannot be aligned"):
        ctc_viterbi(lp[:2], [3, 3, 5])
    assert ctc_viterbi(lp, []).tolist() == [-1] * 6




def test_infer_json_and_ctm_times_bracket_the_signs(tmp_path, monkeypatch):
    from test_features import write_video
    from test_infer import FakeRec, token_frames

    seq = [3, 1, 4]
    toks = token_frames(seq, on=12, gap=8, lead=6)  # gloss k on frames 6 + 20k .. 6 + 20k + 11
    video = write_video(tmp_path / "clip.mp4", np.zeros((len(toks), 32, 32, 3), np.uint8), fps=20.0)
    kp = np.zeros((len(toks), 543, 3), np.float32)
    kp[:, 0, 0] = toks
    mask = np.zeros((len(toks), 543), bool)
    mask[:, :33] = True  # pose only: the hands were never found
    res = I.recognize_video(video, FakeRec(), beam=1, extractor=lambda frames: (kp[: len(frames)], mask[: len(frames)]))
    assert res.glosses == ["G3", "G1", "G4"] and res.fps == 20.0 and res.hand_rate == 0.0
    for k, g in enumerate(res.timed):
        sign = ((6 + 20 * k) / 20.0, (6 + 20 * k + 12) / 20.0)
        assert g["start_s"] < sign[1] and g["end_s"] > sign[0]  # overlaps the sign
        assert 0 < g["score"] <= 1
    starts = [g["start_s"] for g in res.timed]
    assert starts == sorted(starts) and all(a["end_s"] <= b["start_s"] for a, b in zip(res.timed, res.timed[1:]))
    I.write_timed(res, video, str(tmp_path / "o.json"), str(tmp_path / "o.ctm"))
    assert json.loads((tmp_path / "o.json").read_text()) == res.timed
    assert read_ctm(tmp_path / "o.ctm") == {"clip": ["G3", "G1", "G4"]}
    first = (tmp_path / "o.ctm").read_text().splitlines()[0].split()
    assert float(first[2]) == res.timed[0]["start_s"]
    assert float(first[3]) == pytest.approx(res.timed[0]["end_s"] - res.timed[0]["start_s"], abs=1e-3)


def test_eval_ctm_is_timed_and_rescores_to_the_same_wer(tmp_path, capsys):
    from evaluate.eval import main as eval_main
    from models.checkpoint import save_checkpoint
    from models.data import CacheDataset
    from models.students import StudentConfig, build_student
    from test_data import DATASET, make_tiny_cache

    cache = make_tiny_cache(tmp_path / "cache")
    ds = CacheDataset(cache, DATASET, "train", ("keypoints",), augment=None)
    cfg = StudentConfig(kind="landmark", dim=16, layers=1, heads=2, ff_dim=32)
    torch.manual_seed(0)
    student = build_student(cfg, len(ds.vocab), ds.spec())
    save_checkpoint(tmp_path / "student.pt", {
        "model_config": cfg.to_dict(), "input_spec": {"num_keypoints": 543, "keypoint_layout": "mediapipe_holistic_543",
                                                      "rgb_size": 0, "flow_size": 0},
        "vocab": list(ds.vocab.tokens), "cache": {"dataset": DATASET, "config": {}}, "model": student.state_dict()})
    out = tmp_path / "ev"
    assert eval_main(["--ckpt", str(tmp_path / "student.pt"), "--cache", str(cache), "--split", "dev",
                      "--beam", "3", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rescored = score_files(out / "dev.ctm", out / "dev.stm")
    assert rescored.wer == printed["wer"] and rescored.to_dict() == {k: v for k, v in printed.items() if k != "split"}
    dev = CacheDataset(cache, DATASET, "dev", ("keypoints",), augment=None)
    assert read_stm(out / "dev.stm") == {u.id: list(u.glosses) for u in dev.utts}
    rows = [line.split() for line in (out / "dev.ctm").read_text().splitlines()]
    assert rows, "a random student still emits glosses"
    frames = {u.id: (u.num_frames, u.fps) for u in dev.utts}
    by_id: dict[str, list[tuple[float, float]]] = {}
    for uid, _, start, dur, _, conf in rows:
        by_id.setdefault(uid, []).append((float(start), float(dur)))
        assert 0 < float(conf) <= 1
    for uid, segs in by_id.items():
        n, fps = frames[uid]
        assert all(d > 0 and s + d <= n / fps + 1e-3 for s, d in segs)  # inside the clip, not 0.01 s steps
        assert all(a[0] + a[1] <= b[0] + 1e-3 for a, b in zip(segs, segs[1:]))  # in order, no overlap


def test_live_and_offline_give_one_answer_when_the_window_covers_the_clip():
    from models.students import build_student
    from test_infer import KP_NAMES, SPEC, STUDENT, VOCAB, landmarks, table_extractor

    torch.manual_seed(1)
    rec = I.TorchRecognizer(build_student(STUDENT, len(VOCAB), SPEC).eval(), VOCAB, SPEC, KP_NAMES)
    kp, mask = landmarks(100, seed=5)
    logits, lens = rec({"keypoints": kp[None], "keypoints_mask": mask[None]}, np.array([100]))
    for beam in (1, 4):
        offline = I.decode(logits, lens, VOCAB, beam=beam)[0]
        live = list(I.stream_glosses(range(100), table_extractor(kp, mask), rec, I.StreamConfig(128, 16, 16),
                                     beam=beam))
        assert live[-1].committed == offline, beam
    # greedy and beam differ on this random model, so the beam setting really reached the live path
    assert I.decode(logits, lens, VOCAB, beam=1)[0] != I.decode(logits, lens, VOCAB, beam=4)[0]


def test_live_counts_frames_with_hands():
    from test_infer import FakeRec, table_extractor, token_frames

    toks = token_frames([3, 1])
    kp = np.zeros((len(toks), 543, 3), np.float32)
    kp[:, 0, 0] = toks
    mask = np.zeros((len(toks), 543), bool)
    mask[:, :33] = True
    mask[5:9, 530] = True  # a right-hand point on 4 frames
    stats = I.StreamStats()
    list(I.stream_glosses(range(len(toks)), table_extractor(kp, mask), FakeRec(), I.StreamConfig(40, 8, 8), stats))
    assert stats.frames == len(toks) and stats.hand_frames == 4
