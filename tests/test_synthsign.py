"""synthsign: corpus layout, determinism, video/keypoint agreement, lexicon design, noise model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from preprocess import layouts
from preprocess import synthsign as ss
from preprocess.synthsign import cli as ss_cli
from preprocess.synthsign import geometry as ss_geom

HANDS = {"left": slice(*layouts.LEFT_HAND), "right": slice(*layouts.RIGHT_HAND)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[ss.SynthConfig, Path]:
    cfg = ss.preset("tiny")
    return cfg, ss.generate(cfg, tmp_path_factory.mktemp("syn") / "tiny", progress=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[ss.SynthConfig, Path]:
    """Difficulty 0 at 128 px: no detection noise, no video noise."""
    cfg = ss.preset("tiny", num_train=4, num_dev=1, num_test=1, difficulty=0.0, frame_size=128, seed=5)
    return cfg, ss.generate(cfg, tmp_path_factory.mktemp("syn") / "clean", progress=False)


def _rows(root: Path) -> list[dict[str, str]]:
    lines = (root / "corpus.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id|split|signer|glosses|video|fps|num_frames"
    return [dict(zip(lines[0].split("|"), line.split("|"), strict=True)) for line in lines[1:]]


def test_tiny_corpus_layout(tiny):
    cfg, root = tiny
    rows = _rows(root)
    assert [sum(r["split"] == s for r in rows) for s in ("train", "dev", "test")] == [
        cfg.num_train, cfg.num_dev, cfg.num_test]
    assert {r["fps"] for r in rows} == {str(cfg.fps)}
    meta = json.loads((root / "synthsign.json").read_text())
    assert meta["format_version"] == ss.FORMAT_VERSION and meta["config"] == cfg.to_dict()
    vocab = {g["name"] for g in meta["lexicon"]}
    assert len(vocab) == cfg.num_glosses
    train_glosses = {g for r in rows if r["split"] == "train" for g in r["glosses"].split()}
    spans = {json.loads(line)["id"]: json.loads(line) for line in (root / "alignments.jsonl").open()}
    for r in rows:
        words = r["glosses"].split()
        assert cfg.min_glosses <= len(words) <= cfg.max_glosses
        assert all(w.isupper() and w in vocab for w in words)
        assert set(words) <= train_glosses  # dev/test never need an unseen gloss
        assert r["video"] == f"videos/{r['id']}.mp4" and (root / r["video"]).is_file()
        with np.load(root / "keypoints" / f"{r['id']}.npz") as z:
            assert sorted(z.files) == ["keypoints", "mask"]
            kp, mask = z["keypoints"], z["mask"]
        t = kp.shape[0]
        assert kp.dtype == np.float32 and kp.shape == (t, 543, 3) and mask.dtype == bool and mask.shape == (t, 543)
        assert np.all(kp[~mask] == 0)
        assert kp[..., :2].min() >= 0 and kp[..., :2].max() <= 1
        assert 20 <= t <= 80
        # True gloss spans are ordered, inside the clip, and name the sentence's glosses.
        sp = spans[r["id"]]["spans"]
        assert [s[0] for s in sp] == words and spans[r["id"]]["num_frames"] == t == int(r["num_frames"])
        bounds = [b for s in sp for b in s[1:]]
        assert bounds == sorted(bounds) and 0 < bounds[0] and bounds[-1] < t
    assert (root / ".done").is_file()


def test_videos_decode_to_keypoint_length(tiny):
    import decord

    cfg, root = tiny
    for r in _rows(root):
        vr = decord.VideoReader(str(root / r["video"]))
        with np.load(root / "keypoints" / f"{r['id']}.npz") as z:
            t = z["keypoints"].shape[0]
        assert len(vr) == t, r["id"]
        assert vr[0].shape == (cfg.frame_size, cfg.frame_size, 3)
        assert abs(vr.get_avg_fps() - cfg.fps) < 0.5


def test_video_shows_what_keypoints_say(clean):
    """Where the landmarks put the dominant palm and the cheek, the video shows skin.

    The palm is small, so the test also checks that the landmark position fits better than
    the same position moved by 5 pixels: the drawing and the keypoints share one geometry.
    """
    import decord

    cfg, root = clean
    meta = json.loads((root / "synthsign.json").read_text())
    skins = {s["name"]: np.array(s["skin"][::-1], float) for s in meta["signers"]}  # BGR -> RGB
    offsets = [(0.0, 0.0), (0.04, 0.0), (-0.04, 0.0), (0.0, 0.04), (0.0, -0.04)]
    hits = {"palm": np.zeros(len(offsets)), "cheek": np.zeros(len(offsets))}
    total = 0
    for r in _rows(root):
        vr = decord.VideoReader(str(root / r["video"]))
        frames = vr.get_batch(list(range(len(vr)))).asnumpy().astype(float)  # [T, H, W, 3] RGB
        with np.load(root / "keypoints" / f"{r['id']}.npz") as z:
            kp = z["keypoints"]
        skin = skins[r["signer"]]
        shades = np.stack([skin, 0.62 * skin])  # skin and its outline shade
        rh, face = kp[:, HANDS["right"]], kp[:, slice(*layouts.FACE)]
        points = {"palm": 0.7 * rh[:, 0] + 0.3 * rh[:, 9],  # inside the palm, above the wrist
                  "cheek": 0.5 * (face[:, 234] + face[:, 61])}  # between jaw line and mouth corner
        for name, pts in points.items():
            for k, off in enumerate(offsets):
                xy = pts[:, :2] + np.array(off)
                ij = np.clip(np.round(xy * cfg.frame_size - 0.5).astype(int), 0, cfg.frame_size - 1)
                colours = frames[np.arange(len(kp)), ij[:, 1], ij[:, 0]]  # [T, 3]
                dist = np.abs(colours[:, None] - shades[None]).sum(-1).min(-1)
                hits[name][k] += (dist < 60).sum()
        total += len(kp)
        # Off the signer (top corner) there is no skin.
        assert np.abs(frames[:, 1, 1] - skin).sum(-1).min() > 30
    palm, cheek = hits["palm"] / total, hits["cheek"] / total
    assert cheek[0] > 0.95
    assert palm[0] > 0.85 and palm[0] > palm[1:].max() + 0.08, palm


def test_deterministic_from_seed(tiny, tmp_path):
    cfg, root = tiny
    again = ss.generate(cfg, tmp_path / "again", progress=False)
    assert (again / "corpus.csv").read_bytes() == (root / "corpus.csv").read_bytes()
    assert (again / "alignments.jsonl").read_bytes() == (root / "alignments.jsonl").read_bytes()
    for f in sorted((root / "keypoints").iterdir()):
        assert (again / "keypoints" / f.name).read_bytes() == f.read_bytes(), f.name
    # OpenCV's mp4v encoder is deterministic here as well.
    for f in sorted((root / "videos").iterdir()):
        assert (again / "videos" / f.name).read_bytes() == f.read_bytes(), f.name
    other = ss.plan_corpus(ss.preset("tiny", seed=cfg.seed + 1))
    assert [it.glosses for it in other] != [it.glosses for it in ss.plan_corpus(cfg)]


def test_minimal_pairs_differ_only_where_they_should():
    lexicon = ss.build_lexicon(0, 20)
    pairs = ss.minimal_pairs(lexicon)
    # Designed pairs (a third of the vocabulary) share a grammatical slot, so the grammar
    # cannot tell them apart; chance pairs across slots may exist on top.
    same_slot = [k for a, b, k in pairs if a.category == b.category]
    assert len(same_slot) >= 20 // 3
    assert same_slot.count("shape") >= 2 and same_slot.count("movement") >= 2
    for a, b, kind in pairs:
        ga, gb = ss.gloss_geometry(a), ss.gloss_geometry(b)
        if kind == "shape":
            np.testing.assert_allclose(ga["wrist"], gb["wrist"])
            assert np.abs(ga["hand_local"] - gb["hand_local"]).max() > 0.05
        else:
            np.testing.assert_allclose(ga["hand_local"], gb["hand_local"])
            moved = np.abs(ga["hand"] - gb["hand"]).max()  # twist vs still: same wrist, rotating hand
            assert moved > 0.02
            if "twist" not in (a.movement, b.movement):
                assert np.abs(ga["wrist"] - gb["wrist"]).max() > 0.02
    phon = [g.phonology() for g in lexicon]
    assert len(set(phon)) == len(phon)  # no two glosses look the same


def test_hand_skeleton_is_rigid_and_shaped():
    """Bone lengths never change with shape or rotation; shapes extend the right fingers."""
    bones = [(0, 1), (1, 2), (2, 3), (3, 4)] + [(a, a + 1) for f in range(5, 21, 4) for a in range(f, f + 3)]
    bones += [(0, 5), (0, 17), (5, 9), (9, 13), (13, 17)]
    ref = None
    for name, shape in ss.HAND_SHAPES.items():
        for roll, yaw in ((0.0, 0.0), (0.7, 0.0), (0.2, 1.2)):
            p = ss.hand_points(np.array([shape]), roll, yaw)[0]
            lengths = np.array([np.linalg.norm(p[a] - p[b]) for a, b in bones])
            ref = lengths if ref is None else ref
            np.testing.assert_allclose(lengths, ref, atol=1e-9, err_msg=name)
    tip_dist = lambda name: np.linalg.norm(ss.hand_points(np.array([ss.HAND_SHAPES[name]]))[0], axis=-1)  # noqa: E731
    index, fist = tip_dist("index"), tip_dist("fist")
    assert index[8] > 0.8 and max(index[12], index[16], index[20]) < 0.5  # only the index is extended
    assert max(fist[8], fist[12], fist[16], fist[20]) < 0.5
    v, u = (ss.hand_points(np.array([ss.HAND_SHAPES[n]]))[0] for n in ("V", "U"))
    assert np.linalg.norm(v[8] - v[12]) > 2 * np.linalg.norm(u[8] - u[12])  # V spreads, U does not


def test_face_contours_match_mediapipe():
    from mediapipe.python.solutions import face_mesh_connections as fm

    nodes = lambda conns: {i for e in conns for i in e}  # noqa: E731
    assert set(ss_geom.FACE_OVAL) == nodes(fm.FACEMESH_FACE_OVAL)
    lips = ss_geom.LIPS_OUTER_UPPER + ss_geom.LIPS_OUTER_LOWER + ss_geom.LIPS_INNER_UPPER + ss_geom.LIPS_INNER_LOWER
    assert set(lips) == nodes(fm.FACEMESH_LIPS) == set(layouts.LIPS_40)
    assert set(ss_geom.RIGHT_EYE_UPPER + ss_geom.RIGHT_EYE_LOWER) == nodes(fm.FACEMESH_RIGHT_EYE)
    assert set(ss_geom.LEFT_EYE_UPPER + ss_geom.LEFT_EYE_LOWER) == nodes(fm.FACEMESH_LEFT_EYE)
    assert set(sum(ss_geom.RIGHT_BROW, ())) == nodes(fm.FACEMESH_RIGHT_EYEBROW)
    # The oval is an ordered closed contour: consecutive points are MediaPipe's oval edges.
    edges = {frozenset(e) for e in fm.FACEMESH_FACE_OVAL}
    ring = ss_geom.FACE_OVAL + ss_geom.FACE_OVAL[:1]
    assert all(frozenset(p) in edges for p in zip(ring, ring[1:]))


def test_detection_noise_follows_difficulty(tiny, clean):
    def masks(root: Path) -> np.ndarray:
        return np.concatenate([np.load(f)["mask"] for f in sorted((root / "keypoints").iterdir())])

    noisy, exact = masks(tiny[1]), masks(clean[1])
    for m in (noisy, exact):
        assert not m[:, 25:33].any()  # legs are below the frame
        assert m[:, slice(*layouts.FACE)].all() and m[:, :25].all()
    assert exact[:, 501:].all()  # difficulty 0: every hand found
    for name, sl in HANDS.items():
        seen = noisy[:, sl]
        assert (seen == seen[:, :1]).all()  # a hand is found or lost as a whole
        assert 0.6 < seen[:, 0].mean() < 0.995, name  # difficulty 0.5: some frames lost, most kept


def test_dropout_is_more_likely_during_fast_movement():
    cfg = ss.preset("default", difficulty=1.0)
    t = 4000
    kp = np.zeros((t, 543, 3))
    kp[:, 11, :2], kp[:, 12, :2] = (0.7, 0.45), (0.3, 0.45)
    kp[:, 0, :2] = (0.5, 0.2)
    fast = np.arange(t) % 40 < 20
    for sl, x0 in ((HANDS["right"], 0.25), (HANDS["left"], 0.75)):
        step = np.where(fast, 0.1, 0.0)  # up to 0.15 shoulder widths per frame when fast
        x = x0 + 0.1 * np.sin(np.cumsum(step) * 6)
        kp[:, sl, 0], kp[:, sl, 1] = x[:, None], 0.6
    _, mask = ss.detect(kp, cfg, np.random.default_rng(0))
    lost = ~mask[:, layouts.RIGHT_HAND[0]]
    assert lost[fast].mean() > 2 * lost[~fast].mean() > 0


@pytest.mark.parametrize("overrides, match", [
    ({"num_train": 0}, "num_train=0"),
    ({"frame_size": 127}, "frame_size=127"),
    ({"difficulty": 1.5}, "difficulty=1.5"),
    ({"difficulty": float("nan")}, "difficulty=nan"),
    ({"min_glosses": 4, "max_glosses": 3}, "max_glosses=3"),
    ({"num_glosses": 500}, "num_glosses=500"),
    ({"num_signers": 2, "heldout_signers": 2}, "heldout_signers=2"),
    ({"seed": -1}, "seed=-1"),
    ({"num_dev": 2.5}, "num_dev=2.5"),
    ({"frames_per_gloss": 1.0}, "frames_per_gloss=1.0"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match.replace("[", r"\[")):
        ss.SynthConfig(**overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="'huge'"):
        ss.preset("huge")


def test_grammar_and_signer_splits():
    cfg = ss.preset("default", num_train=300, num_dev=40, num_test=40, num_signers=5, heldout_signers=2)
    items = ss.plan_corpus(cfg)
    lex = {g.name: g for g in ss.build_lexicon(cfg.seed, cfg.num_glosses)}
    train_signers = {it.signer for it in items if it.split == "train"}
    eval_signers = {it.signer for it in items if it.split != "train"}
    assert train_signers == {0, 1, 2} and eval_signers == {3, 4}
    counts: dict[str, int] = {}
    single = 0
    for it in items:
        cats = [lex[w].category for w in it.glosses]
        assert "verb" in cats
        if cats.count("verb") == 1:  # one clause: [TIME] SUBJ [OBJ] VERB [NOT] or OBJ SUBJ VERB
            single += 1
            assert cats.count("subject") <= 1 and cats.count("object") <= 1
            assert cats.index("verb") >= len(cats) - 2
            assert "neg" not in cats or cats[-1] == "neg"
            assert "time" not in cats or cats[0] == "time"
        for w in it.glosses:
            counts[w] = counts.get(w, 0) + 1
    assert single > 0.9 * len(items)
    subj = sorted(counts.get(g, 0) for g in lex if lex[g].category == "subject")
    assert subj[-1] > 2 * subj[0]  # Zipf-like, not uniform


def test_idempotent_and_regenerates_on_change(tiny, tmp_path):
    cfg, root = tiny
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert ss.generate(cfg, root, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp
    # A different config replaces the corpus in place; no temporary folders are left behind.
    small = tmp_path / "small"
    cfg1 = ss.preset("tiny", num_train=2, num_dev=1, num_test=1)
    ss.generate(cfg1, small, progress=False)
    cfg2 = ss.preset("tiny", num_train=3, num_dev=1, num_test=1, seed=9)
    ss.generate(cfg2, small, progress=False)
    assert ss.is_complete(small, cfg2) and not ss.is_complete(small, cfg1)
    assert len(_rows(small)) == 5 and len(list((small / "videos").iterdir())) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]
    # A folder that is not a synthsign corpus is never deleted.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthsign corpus"):
        ss.generate(cfg1, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_main_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--preset", "tiny", "--num-train", "2", "--num-dev", "1", "--num-test", "1",
            "--quiet"]
    assert ss.main(args) == 0
    assert ss.is_complete(out, ss.preset("tiny", num_train=2, num_dev=1, num_test=1))
    assert ss.main(args) == 0 and "up to date" in capsys.readouterr().out
    assert ss.main(["--out", str(out), "--preset", "tiny", "--difficulty", "2", "--quiet"]) == 2
    assert "difficulty=2.0" in capsys.readouterr().err
    yaml_cfg = Path(__file__).resolve().parents[1] / "configs" / "synthsign" / "generator.yaml"
    values = ss_cli._load_yaml_config(str(yaml_cfg))
    assert ss.preset(values.pop("preset"), **values) == ss.preset("default")
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_trian: 3\n")
    assert ss.main(["--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "num_trian" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
