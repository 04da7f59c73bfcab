"""Deployment inference (offline video, the live sliding-window loop on frame iterators) and speed.measure."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluate import export as E
from evaluate import infer as I
from evaluate import speed as S
from evaluate.core.decode import ctc_segments, greedy_decode
from models.base import InputSpec
from models.build import ModelConfig, build_model
from models.checkpoint import save_checkpoint
from models.students import StudentConfig, build_student
from preprocess.layouts import HOLISTIC_543

SPEC = InputSpec(num_keypoints=543, keypoint_layout=HOLISTIC_543)
VOCAB = ["<blank>"] + [f"G{i}" for i in range(1, 10)]
STUDENT = StudentConfig(dim=32, layers=1, heads=2, ff_dim=64, dropout=0.0)
KP_NAMES = ("keypoints", "keypoints_mask")


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student(STUDENT, len(VOCAB), SPEC).eval()


@pytest.fixture(scope="module")
def student_onnx(student, tmp_path_factory):
    return E.export_onnx(student, SPEC, VOCAB, STUDENT.to_dict(), tmp_path_factory.mktemp("s") / "student.onnx")


@pytest.fixture(scope="module")
def rgb_onnx(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(streams=("rgb",), rgb_backbone="tiny", tiny_channels=4, hidden=16, lstm_layers=1)
    spec = InputSpec(rgb_size=32)
    model = build_model(cfg, len(VOCAB), spec).eval()
    return E.export_onnx(model, spec, VOCAB, cfg.to_dict(), tmp_path_factory.mktemp("r") / "rgb.onnx",
                         preprocess={"rgb_resize": 40, "rgb_crop": 32})


def landmarks(t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((t, 543, 3), dtype=np.float32), rng.random((t, 543)) < 0.9


class FakeRec:
    """A 'model' whose frame posteriors are read off the input: frame f's token is kp[f, 0, 0].

    Output step j (frames 4j..4j+3) emits the token of frame 4j + 2, so the CTC spikes sit at
    known frames and the sliding window's commit logic can be checked exactly.
    """

    name = "fake.onnx"
    vocab = tuple(VOCAB)
    spec = SPEC
    input_names = KP_NAMES
    preprocess: dict = {}

    def __call__(self, inputs, lengths):
        tok = np.rint(inputs["keypoints"][:, :, 0, 0]).astype(int)  # [B, T]
        steps = max(1, tok.shape[1] // 4)
        logits = np.full((tok.shape[0], steps, len(VOCAB)), -10.0, dtype=np.float32)
        for j in range(steps):
            f = min(4 * j + 2, tok.shape[1] - 1)
            logits[np.arange(tok.shape[0]), j, tok[:, f]] = 10.0
        return logits, np.maximum(1, np.asarray(lengths) // 4)


def token_frames(seq: list[int], on: int = 12, gap: int = 8, lead: int = 6) -> np.ndarray:
    """Per-frame token ids: ``lead`` blanks, then each gloss for ``on`` frames followed by ``gap`` blanks."""
    frames = [0] * lead
    for tok in seq:
        frames += [tok] * on + [0] * gap
    return np.array(frames)


def table_extractor(kp: np.ndarray, mask: np.ndarray):
    """A fake per-frame extractor: frame i -> row i of a generated landmark array."""
    return lambda i: (kp[i], mask[i])


@pytest.mark.parametrize("window,hop,guard", [(40, 8, 8), (64, 16, 16), (33, 5, 7), (24, 4, 12), (500, 16, 16)])
def test_sliding_window_commits_every_gloss_once(window, hop, guard):
    seq = [3, 1, 1, 2, 5, 4, 3, 3, 2, 9, 1]  # repeats separated by blanks must both survive
    toks = token_frames(seq)
    kp = np.zeros((len(toks), 543, 3), dtype=np.float32)
    kp[:, 0, 0] = toks
    mask = np.ones((len(toks), 543), dtype=bool)
    updates = list(I.stream_glosses(range(len(toks)), table_extractor(kp, mask), FakeRec(),
                                    I.StreamConfig(window, hop, guard)))
    assert updates[-1].final and updates[-1].tentative == []
    want = [VOCAB[t] for t in seq]
    assert updates[-1].committed == want
    assert sum((u.new for u in updates), []) == want  # each gloss announced exactly once, in order
    onsets = [6 + 20 * i for i in range(len(seq))]  # token_frames: lead 6, each gloss 12 on + 8 off
    spikes = sum((u.new_frames for u in updates), [])
    assert len(spikes) == len(seq) and all(abs(f - o) <= 4 for f, o in zip(spikes, onsets))  # within a step
    for u in updates:  # what is final never changes afterwards
        assert u.committed == want[: len(u.committed)]
    if window < len(toks):
        assert len(updates[-2].committed) > 0  # glosses become final before the stream ends


def test_stream_equals_whole_sequence_decoding_when_the_window_covers_it(student, student_onnx):
    kp, mask = landmarks(90, seed=3)
    with torch.no_grad():
        out = student({"keypoints": torch.from_numpy(kp)[None], "keypoints_mask": torch.from_numpy(mask)[None]},
                      torch.tensor([90]))
    want = [VOCAB[i] for i in greedy_decode(out.main, out.out_lengths)[0]]
    assert want  # a random model still emits glosses, so the comparison means something
    for rec in (I.OnnxRecognizer(student_onnx), I.TorchRecognizer(student, VOCAB, SPEC, KP_NAMES)):
        stats = I.StreamStats()
        updates = list(I.stream_glosses(range(90), table_extractor(kp, mask), rec, I.StreamConfig(128, 16, 16), stats))
        assert updates[-1].committed == want
        assert [u.frame for u in updates] == [16, 32, 48, 64, 80, 90]
        assert stats.frames == 90 and stats.runs == 6 and stats.fps > 0


def test_onnx_recognizer_pads_clips_shorter_than_the_time_reduction(student, student_onnx):
    kp, mask = landmarks(3, seed=1)
    rec = I.OnnxRecognizer(student_onnx)
    logits, out_lengths = rec({"keypoints": kp[None], "keypoints_mask": mask[None]}, np.array([3]))
    with torch.no_grad():
        ref = student({"keypoints": torch.from_numpy(kp)[None], "keypoints_mask": torch.from_numpy(mask)[None]},
                      torch.tensor([3]))
    assert out_lengths.tolist() == [1]
    np.testing.assert_allclose(logits, ref.main.numpy(), atol=1e-4)


def test_decode_greedy_and_beam_agree_on_peaked_posteriors():
    ids = [0, 3, 3, 0, 0, 5, 0, 5, 2, 2, 0]
    logits = np.full((1, len(ids), len(VOCAB)), -8.0, dtype=np.float32)
    logits[0, np.arange(len(ids)), ids] = 8.0
    want = [["G3", "G5", "G5", "G2"]]
    assert I.decode(logits, np.array([len(ids)]), VOCAB, beam=1) == want
    assert I.decode(logits, np.array([len(ids)]), VOCAB, beam=5) == want
    assert I.decode(logits, np.array([4]), VOCAB, beam=1) == [["G3"]]  # frames beyond the length ignored
    assert ctc_segments(np.array(ids)) == [(3, 1), (5, 5), (5, 7), (2, 8)]


def test_recognize_video_with_a_whole_video_extractor(shared_dir, student_onnx):
    clip = shared_dir / "clips" / "wlasl_68011_book.mp4"
    rec = I.OnnxRecognizer(student_onnx)
    seen = {}

    def extractor(frames):
        seen["shape"] = frames.shape
        return landmarks(len(frames), seed=5)

    res = I.recognize_video(clip, rec, beam=1, extractor=extractor)
    t = seen["shape"][0]
    assert res.frames == t and seen["shape"][3] == 3
    kp, mask = landmarks(t, seed=5)
    logits, lens = rec({"keypoints": kp[None], "keypoints_mask": mask[None]}, np.array([t]))
    assert res.glosses == I.decode(logits, lens, VOCAB)[0]
    assert set(res.seconds) == {"read", "features", "model", "decode"}


def test_rgb_model_offline_preprocessing(shared_dir, rgb_onnx):
    rec = I.OnnxRecognizer(rgb_onnx)
    frames = np.random.default_rng(0).integers(0, 255, (10, 48, 64, 3), dtype=np.uint8)
    inputs = I.video_inputs(frames, rec)
    assert set(inputs) == {"rgb"} and inputs["rgb"].shape == (1, 10, 3, 32, 32)  # resize 40, centre crop 32
    assert inputs["rgb"].dtype == np.float32 and 0.0 <= inputs["rgb"].min() and inputs["rgb"].max() <= 1.0
    res = I.recognize_video(shared_dir / "clips" / "wlasl_68011_book.mp4", rec, beam=3)
    assert all(g in VOCAB[1:] for g in res.glosses)


def test_live_holistic_workers_on_real_frames(shared_dir):
    """Two MediaPipe graphs taking alternate frames (the live path) find what one graph finds."""
    from preprocess.landmarks import POSE, HolisticExtractor

    clip = shared_dir / "clips" / "wlasl_68011_book.mp4"
    frames = list(I.capture_frames(clip, max_frames=8))
    with I.HolisticWorkers(2) as workers:
        out = list(I.extract_landmarks(iter(frames), workers.extractors))
    with I.HolisticWorkers(2, warm_up=True) as warmed:  # built and run on a blank frame before the stream
        for a, b in zip(out, I.extract_landmarks(iter(frames), warmed.extractors)):
            np.testing.assert_array_equal(a[0], b[0])  # the blank frame leaves no tracking state
            np.testing.assert_array_equal(a[1], b[1])
    with HolisticExtractor() as holistic:
        ref_kp, ref_mask = holistic(np.stack(frames), "book")
    kp, mask = np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
    assert kp.shape == (8, 543, 3) and kp.dtype == np.float32 and mask.shape == (8, 543) and mask.dtype == bool
    assert np.all(kp[~mask] == 0.0)
    np.testing.assert_array_equal(mask[:, :501], ref_mask[:, :501])  # pose and face on every frame, as serially
    upper = slice(POSE[0], POSE[0] + 17)  # face and arms; MediaPipe guesses legs that are off-frame
    assert np.abs(kp[:, upper, :2] - ref_kp[:, upper, :2]).mean() < 0.01  # same landmarks up to tracking jitter


class Recorder:
    """A fake per-frame extractor that records which frames it saw and on which thread."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.seen: list[int] = []
        self.threads: set[int] = set()
        self.fail_at = fail_at

    def __call__(self, i: int):
        import threading

        self.threads.add(threading.get_ident())
        if i == self.fail_at:
            raise ValueError(f"frame {i}: extractor failed")
        self.seen.append(i)
        kp = np.full((543, 3), float(i), dtype=np.float32)
        return kp, np.ones(543, dtype=bool)


@pytest.mark.parametrize("workers,ahead", [(1, 0), (3, 1), (2, 4)])
def test_extract_landmarks_deals_frames_round_robin_and_keeps_order(workers, ahead):
    recs = [Recorder() for _ in range(workers)]
    stats = I.StreamStats()
    out = list(I.extract_landmarks(iter(range(23)), recs, ahead=ahead, stats=stats))
    assert [int(kp[0, 0]) for kp, _ in out] == list(range(23))
    for k, r in enumerate(recs):  # each extractor sees every workers-th frame, in order, on one thread
        assert r.seen == list(range(k, 23, workers)) and len(r.threads) == 1
    assert stats.extract_s > 0 and stats.wait_s >= 0


def test_extract_landmarks_reraises_in_order_and_stops_workers():
    recs = [Recorder(), Recorder(fail_at=5)]
    got = []
    with pytest.raises(ValueError, match="frame 5: extractor failed"):
        for kp, _ in I.extract_landmarks(iter(range(40)), recs):
            got.append(int(kp[0, 0]))
    assert got == [0, 1, 2, 3, 4]  # frames before the failure arrive, nothing after it
    assert max(recs[0].seen) < 12  # at most workers * (1 + ahead) frames were in flight
    pair = [Recorder(), Recorder()]
    early = I.extract_landmarks(iter(range(1000)), pair)
    next(early)
    early.close()  # an abandoned stream joins its threads instead of extracting the remaining frames
    assert sum(len(r.seen) for r in pair) <= 5
    with pytest.raises(ValueError, match="at least one extractor"):
        next(I.extract_landmarks(iter(range(3)), []))
    with pytest.raises(ValueError, match="ahead must be >= 0"):
        next(I.extract_landmarks(iter(range(3)), [Recorder()], ahead=-1))


def test_stream_with_several_extractors_equals_one(student_onnx):
    kp, mask = landmarks(70, seed=9)
    rec = I.OnnxRecognizer(student_onnx)
    cfg = I.StreamConfig(32, 8, 8)
    one = list(I.stream_glosses(range(70), table_extractor(kp, mask), rec, cfg))
    stats = I.StreamStats()
    three = list(I.stream_glosses(range(70), [table_extractor(kp, mask)] * 3, rec, cfg, stats))
    assert [(u.frame, u.committed, u.tentative) for u in three] == [(u.frame, u.committed, u.tentative) for u in one]
    assert stats.workers == 3 and stats.frames == 70 and "on 3 thread(s)" in I.fps_report(stats)


def test_wrong_models_are_refused_in_one_line(rgb_onnx, student_onnx, tmp_path, capsys):
    rgb = I.OnnxRecognizer(rgb_onnx)
    with pytest.raises(ValueError, match=r"rgb\.onnx takes rgb, not keypoints: live recognition runs landmark models"):
        I.LandmarkStream(rgb)
    assert I.main(["--model", str(rgb_onnx), "--webcam", "0"]) == 2  # refused before any camera is opened
    assert "not keypoints" in capsys.readouterr().err
    assert I.main(["--model", str(student_onnx), "--webcam", "0", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--workers must be >= 1, got 0" in err and err.count("\n") == 1

    custom = FakeRec()
    custom.spec = InputSpec(num_keypoints=17, keypoint_layout="custom_17")
    with pytest.raises(ValueError, match="expects keypoint layout 'custom_17' .* MediaPipe Holistic gives"):
        I.require_mediapipe_layout(custom)
    flow = FakeRec()
    flow.input_names = ("flow",)
    with pytest.raises(ValueError, match="needs optical flow"):
        I.video_inputs(np.zeros((4, 8, 8, 3), np.uint8), flow)
    with pytest.raises(ValueError, match="hop \\+ guard .* must be < window"):
        I.StreamConfig(window=16, hop=8, guard=8)

    import onnx

    proto = onnx.load(str(student_onnx))
    kept = [p for p in proto.metadata_props if p.key != "vocabulary"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    novocab = tmp_path / "novocab.onnx"
    onnx.save(proto, str(novocab))
    assert I.main(["--model", str(novocab), "--video", "x.mp4"]) == 2
    err = capsys.readouterr().err
    assert "novocab.onnx: no 'vocabulary' in the ONNX metadata" in err and err.count("\n") == 1


def test_unreadable_video_is_one_line(student_onnx, tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    assert I.main(["--model", str(student_onnx), "--video", str(junk), "--beam", "1"]) == 2
    err = capsys.readouterr().err
    assert "junk.mp4" in err and err.count("\n") == 1
    with pytest.raises((ValueError, FileNotFoundError), match="junk.mp4"):
        list(I.capture_frames(junk))
    with pytest.raises(FileNotFoundError, match="missing.mp4: no such video file"):
        list(I.capture_frames(tmp_path / "missing.mp4"))


def test_speed_measure_torch_and_onnx(student, student_onnx):
    keys = {"backend", "parameters", "size_bytes", "ms_per_clip", "ms_min", "frames", "threads", "repeats"}
    pt = S.measure(student, SPEC, frames=40, repeats=2, warmup=1, input_names=KP_NAMES)
    assert set(pt) == keys and pt["backend"] == "torch"
    assert pt["parameters"] == sum(p.numel() for p in student.parameters())
    assert pt["ms_per_clip"] > 0 and pt["ms_min"] > 0 and pt["size_bytes"] is None
    fp = S.measure(student_onnx, SPEC, frames=40, repeats=2, warmup=1)
    assert fp["backend"] == "onnxruntime" and fp["size_bytes"] == student_onnx.stat().st_size
    assert fp["ms_per_clip"] > 0
    assert 0.95 * pt["parameters"] < fp["parameters"] <= pt["parameters"]  # BatchNorm folds into the convs


@pytest.fixture(scope="module")
def student_ckpt(student, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck") / "best.pt"
    save_checkpoint(ck, {"model_config": STUDENT.to_dict(), "input_spec": {"num_keypoints": 543,
                         "keypoint_layout": HOLISTIC_543, "rgb_size": 0, "flow_size": 0},
                         "vocab": VOCAB, "model": student.state_dict()})
    return ck


def test_checkpoint_and_onnx_recognizers_agree(student_ckpt, student_onnx):
    kp, mask = landmarks(41, seed=7)
    feed = {"keypoints": kp[None], "keypoints_mask": mask[None]}
    pt = I.load_recognizer(student_ckpt)
    assert isinstance(pt, I.TorchRecognizer) and pt.vocab == tuple(VOCAB) and pt.input_names == KP_NAMES
    a, a_len = pt(feed, np.array([41]))
    b, b_len = I.load_recognizer(student_onnx)(feed, np.array([41]))
    np.testing.assert_array_equal(a_len, b_len)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_speed_cli_table_and_json(student_ckpt, tmp_path, capsys):
    ck = student_ckpt
    out = tmp_path / "bench.json"
    assert S.main(["--ckpt", str(ck), "--frames", "40", "--repeats", "2", "--warmup", "1", "--json", str(out)]) == 0
    assert "| model | kind | params |" in capsys.readouterr().out
    row = json.loads(out.read_text())["rows"][0]
    for key in ("parameters", "ckpt_bytes", "onnx_bytes", "int8_bytes", "torch_ms", "onnx_ms", "int8_ms"):
        assert row[key] > 0, key
    assert row["int8_bytes"] < row["onnx_bytes"] and row["kind"] == "landmark"


def test_live_fps_on_a_clip_with_a_fake_extractor(shared_dir, student_onnx):
    clip = shared_dir / "clips" / "wlasl_68011_book.mp4"
    kp, mask = landmarks(1)
    res = S.live_fps(clip, student_onnx, max_frames=70, stream_cfg=I.StreamConfig(32, 8, 8),
                     extractor=lambda frame: (kp[0], mask[0]), loops=2)  # the clip has 55 frames
    assert res["frames"] == 70 and res["runs"] == 9 and res["workers"] == 1
    assert res["fps"] > 0 and res["steady_fps"] > 0 and res["model_ms_per_run"] > 0
    assert res["landmarks_ms_per_frame"] >= 0 and res["wait_ms_per_frame"] >= 0 and res["other_ms_per_frame"] >= 0


def test_prefetch_keeps_order_and_reraises():
    assert list(I.prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        yield 2
        raise ValueError("clip.mp4: decoding failed at frame 2")

    got = []
    with pytest.raises(ValueError, match="decoding failed at frame 2"):
        for f in I.prefetch(broken(), depth=1):
            got.append(f)
    assert got == [1, 2]
    latest = list(I.prefetch(iter(range(20)), depth=2, keep_latest=True))
    assert latest == sorted(latest) and latest[-1] == 19  # may skip frames, never reorders, ends at the last


def test_sign_to_gloss_times_each_gloss_from_its_spike():
    fed = [0.1 * i for i in range(40)]  # frame i fed at i/10 s
    ups = [(1.0, I.StreamUpdate(10, [], [], ["G3"], tentative_frames=[5])),  # G3 first shown at 1.0 s
           (2.0, I.StreamUpdate(20, ["G3", "G2"], ["G3", "G2"], [], new_frames=[4, 12])),  # G3 near 5: same gloss
           (3.0, I.StreamUpdate(40, ["G3", "G2", "G5"], ["G5"], [], final=True, new_frames=[30]))]
    r = S.sign_to_gloss(ups, fed, reduction=4)
    # G3: spike step of frame 4 ends with frame 7 (fed 0.7 s): printed 1.3 s later, shown 0.3 s later;
    # G2: frame 15 (1.5 s), never shown before: both 0.5 s; G5 became final only at the end of the stream
    np.testing.assert_allclose(r["printed_ms"], [1300, 500])
    np.testing.assert_allclose(r["shown_ms"], [300, 500])
    assert r["glosses"] == 2 and r["flushed"] == 1
    assert r["printed_median_ms"] == pytest.approx(900) and r["printed_p90_ms"] == pytest.approx(1220)
    none = S.sign_to_gloss([(1.0, I.StreamUpdate(5, ["G1"], ["G1"], [], final=True, new_frames=[2]))], fed)
    assert none["glosses"] == 0 and none["printed_median_ms"] is None and none["flushed"] == 1


def test_live_latency_feeds_a_clip_no_faster_than_its_frame_rate(shared_dir, student_onnx):
    clip = shared_dir / "clips" / "wlasl_68011_book.mp4"  # 55 frames at 30 frames/s
    kp, mask = landmarks(1)
    res = S.live_latency(clip, student_onnx, loops=1, stream_cfg=I.StreamConfig(32, 8, 8),
                         extractor=lambda frame: (kp[0], mask[0]))
    assert res["frames"] == 55 and 0 < res["feed_fps"] <= 30 * 1.02
    assert res["glosses"] == len(res["printed_ms"]) == len(res["shown_ms"])
    assert all(s <= p for s, p in zip(res["shown_ms"], res["printed_ms"]))  # shown no later than printed


NO_TORCH = r"""
import json, sys
import numpy as np
from evaluate import infer  # noqa: F401  (the CLI module and all it imports)
from evaluate.live.runtime import decode, load_recognizer
rec = load_recognizer(sys.argv[1])
k = rec.spec.num_keypoints
x = {"keypoints": np.random.default_rng(0).random((1, 32, k, 3), dtype=np.float32),
     "keypoints_mask": np.ones((1, 32, k), dtype=bool)}
logits, lengths = rec(x, np.array([32]))
print(json.dumps({"torch": "torch" in sys.modules, "glosses": decode(logits, lengths, rec.vocab, beam=3)[0],
                  "logits": logits[0, : int(lengths[0])].tolist()}))
"""


def test_onnx_inference_never_imports_torch(student_onnx):
    """Live recognition with an ONNX model decodes on NumPy: its start-up skips PyTorch's import."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from evaluate.core.decode import decode_outputs

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", NO_TORCH, str(student_onnx)], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    logits = torch.tensor(got["logits"])[None]  # the same logits, decoded here from a tensor
    assert decode_outputs(logits, torch.tensor([logits.shape[1]]), VOCAB, beam=3)[0].glosses == got["glosses"]


def test_onnx_recognizer_bad_files_are_one_line_each(student_onnx, tmp_path):
    from evaluate.live.runtime import load_recognizer

    with pytest.raises(FileNotFoundError, match="gone.onnx: no such ONNX model"):
        load_recognizer(tmp_path / "gone.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx: not a readable ONNX model"):
        load_recognizer(junk)
    with pytest.raises(ValueError, match="threads must be >= 1"):  # not mistaken for an unreadable file
        load_recognizer(student_onnx, threads=0)
