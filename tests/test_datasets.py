"""Dataset readers (real PHOENIX annotation files, release-layout fixtures) and dataset configs."""
from __future__ import annotations

import dataclasses
import logging
import pickle
import shutil
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

import preprocess
from preprocess.datasets import (
    READERS,
    DatasetConfig,
    available_datasets,
    load_dataset_config,
    main,
    prepare,
    prepare_csl,
    prepare_csl_daily,
    prepare_custom,
    prepare_dataset,
    prepare_phoenix14,
    prepare_phoenix14t,
    prepare_synthsign,
)
from preprocess.keypoint_io import save_pose
from preprocess.manifest import read_manifest
from preprocess.vocab import Vocabulary

SPLITS = ("train", "dev", "test")


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("DATA_ROOT", raising=False)


def _png_folder(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = np.zeros((4, 3, 3), np.uint8)
    for i in range(n):
        cv2.imwrite(str(folder / f"images{i + 1:04d}.png"), img)


def _rows(csv_path: Path) -> list[list[str]]:
    """Independent parse of a release corpus file (header dropped)."""
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    return [line.split("|") for line in lines[1:] if line.strip()]


def _num_frames(csv_path: Path) -> dict[str, int]:
    lines = csv_path.read_text(encoding="utf-8").splitlines()[1:]
    return {a: int(b) for a, b in (line.split(",") for line in lines)}


# ------------------------------------------------------------------------------------ PHOENIX14


@pytest.fixture
def phoenix14_release(tmp_path, shared_dir):
    """Release layout with the real corpus files and 3 frame folders (2..4 PNGs) per split."""
    real = shared_dir / "data" / "phoenix14" / "annotations" / "manual"
    base = tmp_path / "phoenix2014-release" / "phoenix-2014-multisigner"
    manual = base / "annotations" / "manual"
    manual.mkdir(parents=True)
    with_frames = {}
    for split in SPLITS:
        shutil.copy(real / f"{split}.corpus.csv", manual)
        shutil.copy(real / f"{split}.num_frames.csv", manual)
        for j, row in enumerate(_rows(real / f"{split}.corpus.csv")[:3]):
            _png_folder(base / "features" / "fullFrame-210x260px" / split / row[0] / "1", j + 2)
            with_frames[row[0]] = j + 2
    return base, with_frames


def test_phoenix14_reader(phoenix14_release, shared_dir, tmp_path, caplog):
    base, with_frames = phoenix14_release
    real = shared_dir / "data" / "phoenix14" / "annotations" / "manual"
    caplog.set_level(logging.WARNING, logger="preprocess.datasets")
    utts = prepare_phoenix14(base.parent, tmp_path / "out")  # the folder containing the release

    counts = {s: sum(u.split == s for u in utts) for s in SPLITS}
    assert counts == {"train": 5671, "dev": 540, "test": 629}
    by_id = {u.id: u for u in utts}
    first = _rows(real / "train.corpus.csv")[0]
    u = by_id[first[0]]
    assert u.glosses == first[3].split() and u.glosses[0] == "__ON__"
    assert u.signer == first[2] == "Signer04"
    assert u.fps == 25.0 and u.keypoints is None
    assert Path(u.source) == base / "features" / "fullFrame-210x260px" / "train" / first[0] / "1"

    # num_frames: counted in the fixture folders, else the release's num_frames.csv
    lengths = {s: _num_frames(real / f"{s}.num_frames.csv") for s in SPLITS}
    for uid, n in with_frames.items():
        assert by_id[uid].num_frames == n
    other = _rows(real / "dev.corpus.csv")[10][0]
    assert by_id[other].num_frames == lengths["dev"][other] > 0

    # one warning line per split with the count of missing frame folders
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert any("train: 5668 of 5671 frame folders missing" in w for w in warnings)

    # manifest + vocabulary from the train split only, special glosses kept
    assert read_manifest(tmp_path / "out" / "manifest.jsonl") == utts
    vocab = Vocabulary.load(tmp_path / "out" / "vocab.json")
    train_glosses = {g for row in _rows(real / "train.corpus.csv") for g in row[3].split()}
    assert set(vocab.tokens[1:]) == train_glosses and vocab.tokens[0] == "<blank>"
    assert "__ON__" in vocab.tokens and "__OFF__" in vocab.tokens
    dev_only = {g for row in _rows(real / "dev.corpus.csv") for g in row[3].split()} - train_glosses
    assert dev_only and not dev_only & set(vocab.tokens)


def test_phoenix14_root_is_the_release_folder(phoenix14_release, tmp_path):
    base, with_frames = phoenix14_release
    utts = prepare_phoenix14(base, tmp_path / "out")
    assert len(utts) == 5671 + 540 + 629


def test_phoenix14_wrong_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="phoenix-2014-multisigner"):
        prepare_phoenix14(tmp_path, tmp_path / "out")


# ------------------------------------------------------------------------------------ PHOENIX14-T


def test_phoenix14t_reader(tmp_path, shared_dir):
    real = shared_dir / "data" / "phoenix14t" / "annotations" / "manual"
    base = tmp_path / "PHOENIX-2014-T"
    manual = base / "annotations" / "manual"
    manual.mkdir(parents=True)
    with_frames = {}
    for split in SPLITS:
        shutil.copy(real / f"PHOENIX-2014-T.{split}.corpus.csv", manual)
        shutil.copy(real / f"{split}.num_frames.csv", manual)
        for j, row in enumerate(_rows(real / f"PHOENIX-2014-T.{split}.corpus.csv")[:3]):
            _png_folder(base / "features" / "fullFrame-210x260px" / split / row[0], 3 + j)
            with_frames[row[0]] = 3 + j
    utts = prepare_phoenix14t(tmp_path, tmp_path / "out")

    assert {s: sum(u.split == s for u in utts) for s in SPLITS} == {"train": 7096, "dev": 519, "test": 642}
    by_id = {u.id: u for u in utts}
    row = _rows(real / "PHOENIX-2014-T.train.corpus.csv")[1]
    u = by_id[row[0]]
    assert u.glosses == row[5].split() and u.signer == row[4]
    assert u.extra["translation"] == row[6]
    for uid, n in with_frames.items():
        assert by_id[uid].num_frames == n
    lengths = _num_frames(real / "test.num_frames.csv")
    other = _rows(real / "PHOENIX-2014-T.test.corpus.csv")[20][0]
    assert by_id[other].num_frames == lengths[other]
    vocab = Vocabulary.load(tmp_path / "out" / "vocab.json")
    assert len(vocab) - 1 == len({g for r in _rows(real / "PHOENIX-2014-T.train.corpus.csv") for g in r[5].split()})


# ------------------------------------------------------------------------------------ CSL-Daily


def _csl_daily_release(root: Path, with_map: bool = True) -> Path:
    base = root / "CSL-Daily"
    labels = base / "sentence_label"
    labels.mkdir(parents=True)
    records = [  # name, length, glosses, chars
        ("S000000_P0000_T00", 40, "他 今天 年龄 4", "他 今 天 四 岁 。"),
        ("S000007_P0003_T00", 55, "他 谁", "他 是 谁 ？"),
        ("S000020_P0008_T00", 61, "今天 星期 多少", "今 天 星 期 几 ？"),
        ("S000031_P0001_T00", 30, "我 好", "我 很 好 。"),
    ]
    if with_map:
        lines = ["index|name|length|gloss|char|word|postag"]
        lines += [f"{i}|{n}|{length}|{g}|{c}|{c}|n" for i, (n, length, g, c) in enumerate(records)]
        (labels / "video_map.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        info = [{"name": n, "length": length, "label_gloss": g.split(), "label_char": c.split(),
                 "signer": int(n[9:13]), "time": 0} for n, length, g, c in records]
        (labels / "csl2020ct_v2.pkl").write_bytes(pickle.dumps({"info": info, "gloss_map": []}))
    (labels / "split_1.txt").write_text(
        "name|split\nS000000_P0000_T00|train\nS000007_P0003_T00|train\nS000020_P0008_T00|dev\n", encoding="utf-8")
    frames = base / "sentence" / "frames_512x512"
    for name in ("S000000_P0000_T00", "S000020_P0008_T00"):
        folder = frames / name
        folder.mkdir(parents=True)
        for i in range(5):
            (folder / f"{i:06d}.jpg").write_bytes(b"jpg")
    return base


@pytest.mark.parametrize("with_map", [True, False])
def test_csl_daily_reader(tmp_path, caplog, with_map):
    _csl_daily_release(tmp_path / "data", with_map)
    caplog.set_level(logging.WARNING, logger="preprocess.datasets")
    utts = prepare_csl_daily(tmp_path / "data", tmp_path / "out")
    by_id = {u.id: u for u in utts}
    assert sorted(by_id) == ["S000000_P0000_T00", "S000007_P0003_T00", "S000020_P0008_T00"]
    u = by_id["S000007_P0003_T00"]
    assert u.split == "train" and u.signer == "P0003" and u.glosses == ["他", "谁"]
    assert u.num_frames == 55 and u.fps == 30.0  # no frames here: the label file's length
    assert u.extra["translation"] == "他是谁？"
    assert by_id["S000000_P0000_T00"].num_frames == 5
    assert by_id["S000020_P0008_T00"].split == "dev"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "1 labelled videos are not in split_1.txt" in messages
    assert "1 of 2 frame folders missing" in messages
    assert Vocabulary.load(tmp_path / "out" / "vocab.json").tokens[1:] == tuple(sorted({"他", "今天", "年龄", "4", "谁"}))


def test_csl_daily_refuses_pickled_code(tmp_path):
    base = _csl_daily_release(tmp_path, with_map=False)
    (base / "sentence_label" / "csl2020ct_v2.pkl").write_bytes(pickle.dumps({"info": [np.zeros(2)]}))
    with pytest.raises(ValueError, match="video_map.txt"):
        prepare_csl_daily(tmp_path, tmp_path / "out")


# ------------------------------------------------------------------------------------ CSL


def _csl_release(root: Path, dictionary: bool) -> Path:
    base = root / "CSL_Continuous"
    for sent in ("000000", "000001"):
        folder = base / "color" / sent
        folder.mkdir(parents=True)
        for signer in (1, 40, 41, 50):
            (folder / f"P{signer:02d}_s1_{sent[-2:]}_0._color.avi").write_bytes(b"avi")
    frames = base / "color" / "000001" / "P07_s2_01_3"
    frames.mkdir()
    for i in range(4):
        (frames / f"{i:06d}.jpg").write_bytes(b"jpg")
    (base / "color" / "000001" / "notes.txt").write_text("not a video")
    (base / "corpus.txt").write_text("\ufeff000000 他的同学是警察\n000001 我 爸爸 是 商人\n", encoding="utf-8")
    if dictionary:
        (base / "dictionary.txt").write_text("000000\t他\n000001\t同学\n000002\t警察\n000003\t是\n000004\t的（得）\n",
                                             encoding="utf-8")
    return base


@pytest.mark.parametrize("dictionary", [True, False])
def test_csl_reader(tmp_path, dictionary):
    _csl_release(tmp_path, dictionary)
    utts = prepare_csl(tmp_path, tmp_path / "out")
    by_id = {u.id: u for u in utts}
    assert len(utts) == 9
    u = by_id["000000_P01_s1_00_0"]
    assert u.split == "train" and u.signer == "P01" and u.fps == 30.0 and u.source.endswith("P01_s1_00_0._color.avi")
    expected = ["他", "的", "同学", "是", "警察"] if dictionary else list("他的同学是警察")
    assert u.glosses == expected
    assert by_id["000000_P40_s1_00_0"].split == "train"
    assert by_id["000000_P41_s1_00_0"].split == "test" and by_id["000001_P50_s1_01_0"].split == "test"
    assert by_id["000001_P01_s1_01_0"].glosses == ["我", "爸爸", "是", "商人"]  # pre-segmented line
    assert by_id["000001_P07_s2_01_3"].num_frames == 4
    vocab = Vocabulary.load(tmp_path / "out" / "vocab.json")
    assert "警察" in vocab.tokens if dictionary else "警" in vocab.tokens


# ------------------------------------------------------------------------------------ custom


def _write_corpus(root: Path, rows: list[str], header: str = "id|split|signer|glosses|video") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def test_custom_with_videos(tmp_path, caplog):
    root = tmp_path / "corpus"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"mp4")
    _png_folder(root / "frames" / "b", 6)
    _write_corpus(root, ["a|train|s1|HELLO WORLD|videos/a.mp4", "b|train|s2|HELLO|frames/b",
                         "c|dev|s1|WORLD|videos/missing.mp4", "d|test|s3|HELLO THERE|videos/gone.mp4"])
    caplog.set_level(logging.WARNING, logger="preprocess.datasets")
    utts = prepare_custom(root, tmp_path / "out")
    by_id = {u.id: u for u in utts}
    assert by_id["a"].source == str(root.resolve() / "videos" / "a.mp4") and by_id["a"].num_frames == 0
    assert by_id["b"].num_frames == 6 and by_id["b"].glosses == ["HELLO"]
    assert by_id["a"].keypoints is None
    warnings = [r.getMessage() for r in caplog.records]
    assert any("dev: 1 of 1 videos/frame folders missing" in w for w in warnings)
    assert any("test: 1 of 1" in w for w in warnings)
    assert Vocabulary.load(tmp_path / "out" / "vocab.json").tokens == ("<blank>", "HELLO", "WORLD")


def test_custom_keypoints_only(tmp_path):
    root = tmp_path / "kp_corpus"
    kp_dir = root / "keypoints"
    kp_dir.mkdir(parents=True)
    arr = np.random.default_rng(0).random((12, 543, 3)).astype(np.float32)
    arr[3, 501:522] = np.nan
    np.save(kp_dir / "u1.npy", arr)
    np.savez(kp_dir / "u2.npz", keypoints=arr[:8], mask=np.ones((8, 543), bool))
    save_pose(kp_dir / "u3.pose", np.nan_to_num(arr[:5]), ~np.isnan(arr[:5]).any(-1), "mediapipe_holistic_543",
              fps=29.97, width=640, height=480)
    _write_corpus(root, ["u1|train|s1|A B||", "u2|train|s2|B C||", "u3|dev|s1|A C||"],
                  header="id|split|signer|glosses|video|note")
    utts = prepare_custom(root, tmp_path / "out")
    by_id = {u.id: u for u in utts}
    assert all(u.source is None for u in utts)
    assert [by_id[i].num_frames for i in ("u1", "u2", "u3")] == [12, 8, 5]
    assert by_id["u3"].fps == pytest.approx(29.97, abs=1e-3) and by_id["u1"].fps == 25.0
    assert Path(by_id["u1"].keypoints) == (kp_dir / "u1.npy").resolve()
    assert by_id["u2"].keypoints.endswith("u2.npz") and by_id["u3"].keypoints.endswith("u3.pose")
    assert by_id["u1"].extra == {}


def test_custom_mixed_columns_and_lengths(tmp_path, caplog):
    root = tmp_path / "mixed"
    (root / "keypoints").mkdir(parents=True)
    np.savez(root / "keypoints" / "k.npz", keypoints=np.zeros((7, 21, 2), np.float32))
    (root / "clip.avi").write_bytes(b"avi")
    (root / "num_frames.csv").write_text("id,num_frames\nv,33\n")
    _write_corpus(root, ["v|train|s|X Y|clip.avi|12.5||studio", "k|train|s|Y|clip.avi||||",
                         "n|dev|s|X|||40|"], header="id|split|signer|glosses|video|fps|num_frames|room")
    caplog.set_level(logging.WARNING, logger="preprocess.datasets")
    utts = prepare_custom(root, tmp_path / "out")
    by_id = {u.id: u for u in utts}
    assert by_id["v"].fps == 12.5 and by_id["v"].num_frames == 33 and by_id["v"].extra == {"room": "studio"}
    assert by_id["k"].num_frames == 7 and by_id["k"].source and by_id["k"].keypoints
    assert by_id["n"].num_frames == 40 and by_id["n"].source is None and by_id["n"].keypoints is None
    assert any("neither a video nor keypoints" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "header, rows, match",
    [
        ("id|split|signer|glosses", ["a|train|s|X"], r"lacks columns \['video'\]"),
        ("id|split|signer|glosses|video", ["a|validation|s|X|"], r"corpus.csv:2: split 'validation'"),
        ("id|split|signer|glosses|video", ["a|train|s|X"], r"corpus.csv:2: 4 fields"),
        ("id|split|signer|glosses|video|fps", ["a|train|s|X||fast"], r"corpus.csv:2: fps 'fast'"),
    ],
)
def test_custom_bad_corpus(tmp_path, header, rows, match):
    _write_corpus(tmp_path / "c", rows, header)
    with pytest.raises(ValueError, match=match):
        prepare_custom(tmp_path / "c", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_custom_without_train_split(tmp_path, caplog):
    _write_corpus(tmp_path / "c", ["a|test|s|P Q|", "b|dev|s|R|"])
    (tmp_path / "c" / "keypoints").mkdir()
    caplog.set_level(logging.WARNING, logger="preprocess.datasets")
    prepare_custom(tmp_path / "c", tmp_path / "out")
    assert Vocabulary.load(tmp_path / "out" / "vocab.json").tokens == ("<blank>", "P", "Q", "R")
    assert any("no train split" in r.getMessage() for r in caplog.records)


def test_custom_bad_keypoint_file_is_not_fatal(tmp_path, caplog):
    (tmp_path / "c" / "keypoints").mkdir(parents=True)
    (tmp_path / "c" / "keypoints" / "a.npy").write_bytes(b"broken")
    _write_corpus(tmp_path / "c", ["a|train|s|X|"])
    caplog.set_level(logging.WARNING, logger="preprocess.datasets")
    utts = prepare_custom(tmp_path / "c", tmp_path / "out")
    assert utts[0].num_frames == 0 and utts[0].keypoints.endswith("a.npy")
    assert any("a.npy" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------ synthsign


@pytest.fixture
def fake_synthsign(monkeypatch):
    """Stand-in generator with the agreed API (SynthConfig, PRESETS, generate) that counts calls."""

    @dataclasses.dataclass(frozen=True)
    class SynthConfig:
        num_train: int = 3
        seed: int = 0

    calls = []

    def generate(cfg, out, progress=True):
        calls.append(cfg)
        out = Path(out)
        _write_corpus(out, [f"g{i}|{'train' if i < cfg.num_train else 'dev'}|s|A B|" for i in range(cfg.num_train + 1)])
        (out / "keypoints").mkdir(exist_ok=True)
        for i in range(cfg.num_train + 1):
            np.savez(out / "keypoints" / f"g{i}.npz", keypoints=np.zeros((4, 543, 3), np.float16))
        (out / ".done").write_text("ok")
        return out

    presets = {"tiny": {"num_train": 2}, "default": {}}

    def preset(name, **overrides):
        if name not in presets:
            raise ValueError(f"unknown synthsign preset {name!r}; known: {sorted(presets)}")
        return SynthConfig(**{**presets[name], **overrides})

    def is_complete(out, cfg):
        return (Path(out) / ".done").is_file() and bool(calls) and calls[-1] == cfg

    module = types.ModuleType("preprocess.synthsign")
    module.SynthConfig, module.generate, module.preset, module.is_complete = SynthConfig, generate, preset, is_complete
    monkeypatch.setitem(sys.modules, "preprocess.synthsign", module)
    monkeypatch.setattr(preprocess, "synthsign", module, raising=False)
    return calls


def test_synthsign_generates_once(tmp_path, fake_synthsign):
    root = tmp_path / "synthsign"
    utts = prepare_synthsign(root, tmp_path / "out", generator={"preset": "tiny", "seed": 5})
    assert fake_synthsign[0].num_train == 2 and fake_synthsign[0].seed == 5
    assert len(utts) == 3 and all(u.keypoints and u.num_frames == 4 for u in utts)
    prepare_synthsign(root, tmp_path / "out2", generator={"preset": "tiny", "seed": 5})
    prepare_synthsign(root, tmp_path / "out2")
    assert len(fake_synthsign) == 1  # finished corpus of the same config: read, not regenerated
    utts = prepare_synthsign(root, tmp_path / "out3", generator={"preset": "default"})
    assert len(fake_synthsign) == 2 and len(utts) == 4  # another config: regenerated


def test_synthsign_bad_generator_options(tmp_path, fake_synthsign):
    with pytest.raises(ValueError, match="unknown synthsign preset 'huge'"):
        prepare_synthsign(tmp_path / "s", tmp_path / "out", generator={"preset": "huge"})
    with pytest.raises(ValueError, match=r"unknown synthsign generator options \['colour'\]"):
        prepare_synthsign(tmp_path / "s", tmp_path / "out", generator={"colour": "red"})


def test_synthsign_config_runs_generator(tmp_path, fake_synthsign, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_dataset_config("synthsign")
    assert cfg.root == tmp_path / "data" / "synthsign"
    assert cfg.features["rgb_size"] == 64 and cfg.features["landmarks"] == "file"
    assert cfg.features["flow"] == {"method": "dis", "size": 32}
    utts = prepare_dataset(cfg, tmp_path / "cache" / "synthsign")
    assert fake_synthsign and len(utts) == 4
    assert (tmp_path / "cache" / "synthsign" / "manifest.jsonl").is_file()


def test_synthsign_real_generator(tmp_path):
    """The real generator, at a few utterances: videos + keypoints read as a custom corpus."""
    generator = {"preset": "tiny", "num_train": 3, "num_dev": 1, "num_test": 1}
    utts = prepare_synthsign(tmp_path / "synthsign", tmp_path / "out", generator=generator)
    assert [sum(u.split == s for u in utts) for s in SPLITS] == [3, 1, 1]
    for u in utts:
        assert Path(u.source).is_file() and Path(u.keypoints).is_file() and u.num_frames > 0 and u.glosses


# ------------------------------------------------------------------------------------ configs


def test_every_builtin_config_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs are found relative to the package, not the cwd
    names = available_datasets()
    assert set(names) >= {"phoenix14", "phoenix14t", "csl-daily", "csl", "custom", "synthsign"}
    for name in names:
        cfg = load_dataset_config(name)
        assert isinstance(cfg, DatasetConfig) and cfg.name == name and cfg.reader in READERS
        assert cfg.root.is_absolute() and cfg.root.is_relative_to(tmp_path)
        assert isinstance(cfg.features, dict) and cfg.features
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.reader = "csl"


def test_builtin_features_are_valid_extractor_options():
    from preprocess.features import FeatureConfig

    for name in available_datasets():
        cfg = FeatureConfig.from_dict(load_dataset_config(name).features)
        assert cfg.landmarks in ("auto", "mediapipe", "file", "none")
    synth = FeatureConfig.from_dict(load_dataset_config("synthsign").features)
    assert (synth.rgb_size, synth.flow.method, synth.flow.size, synth.landmarks) == (64, "dis", 32, "file")


def test_data_root_overrides(tmp_path, monkeypatch):
    assert load_dataset_config("phoenix14", data_root=str(tmp_path)).root == tmp_path
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "env"))
    assert load_dataset_config("phoenix14").root == tmp_path / "env"
    assert load_dataset_config("phoenix14", data_root=tmp_path / "arg").root == tmp_path / "arg"


def test_user_yaml_custom_corpus(tmp_path, monkeypatch):
    _write_corpus(tmp_path / "my_corpus", ["x|train|s|HI|", "y|test|s|HI BYE|"])
    (tmp_path / "my_corpus" / "keypoints").mkdir()
    np.save(tmp_path / "my_corpus" / "keypoints" / "x.npy", np.zeros((3, 5, 2), np.float32))
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text("reader: custom\nroot: my_corpus\nfeatures:\n  landmarks: file\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_dataset_config(str(yaml_path))
    assert cfg.name == "mine" and cfg.root == tmp_path / "my_corpus" and cfg.features == {"landmarks": "file"}
    utts = prepare_dataset(cfg, tmp_path / "cache" / cfg.name)
    assert [u.id for u in utts] == ["x", "y"] and utts[0].num_frames == 3
    assert main(["mine.yaml", "--out", str(tmp_path / "cli")]) == 0
    assert read_manifest(tmp_path / "cli" / "manifest.jsonl") == utts


@pytest.mark.parametrize(
    "text, match",
    [
        ("reader: kinect\nroot: x\n", r"unknown reader 'kinect'; known readers: \['csl', 'csl-daily', 'custom'"),
        ("root: x\n", "unknown reader None"),
        ("reader: custom\nroot: x\nfeature: {}\n", r"unknown keys \['feature'\]"),
        ("reader: custom\nroot: x\nfeatures: [1, 2]\n", "features must be a mapping"),
        ("reader: custom\n", "no root"),
        ("- reader\n", "expected a mapping"),
        ("reader: [custom\n", "not valid YAML"),
    ],
)
def test_bad_yaml(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_dataset_config(str(path))


def test_unknown_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'phoenix15'; known: \[.*'csl', 'csl-daily'"):
        load_dataset_config("phoenix15")
    with pytest.raises(FileNotFoundError):
        load_dataset_config(str(tmp_path / "absent.yaml"))
    with pytest.raises(ValueError, match="unknown dataset reader 'kinect'"):
        prepare("kinect", tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match=r"takes no options \['speed'\]"):
        prepare("custom", tmp_path, tmp_path / "out", speed=2)


def test_cli_reports_errors(tmp_path, capsys):
    assert main(["custom", "--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "nothing")]) == 2
    assert "corpus.csv" in capsys.readouterr().err


def test_write_text_if_changed_leaves_identical_files_alone(tmp_path):
    import os

    from preprocess.files import write_text_if_changed

    path = tmp_path / "sub" / "m.jsonl"
    assert write_text_if_changed(path, "a\n") is True and path.read_text() == "a\n"
    os.utime(path, ns=(1, 1))
    assert write_text_if_changed(path, "a\n") is False and path.stat().st_mtime_ns == 1  # untouched
    assert write_text_if_changed(path, "b\n") is True and path.read_text() == "b\n"
    assert write_text_if_changed(path, "bé\n") is True and path.read_text(encoding="utf-8") == "bé\n"
