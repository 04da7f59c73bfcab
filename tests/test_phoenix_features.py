"""`make features DATASET=phoenix14 DATA_ROOT=<fixture>` end to end on a release-layout fixture.

The fixture holds the first real rows of each split of the official PHOENIX14 corpus files and,
for each, a frame folder made of the real PHOENIX sample frames (a real signer at 210x260), so
the reader, real MediaPipe, DIS flow and the cache writer all run on the real format.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from preprocess.cache import load_utt, read_meta, utt_path
from preprocess.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_SPLIT = 2
FRAMES = 4


def _fixture(shared: Path, dest: Path) -> dict[str, list[str]]:
    src = shared / "data" / "phoenix14" / "annotations" / "manual"
    frames = sorted((shared / "data" / "phoenix14t" / "sample").glob("*.png"))
    release = dest / "phoenix-2014-multisigner"
    ann = release / "annotations" / "manual"
    ann.mkdir(parents=True)
    ids: dict[str, list[str]] = {}
    for split in ("train", "dev", "test"):
        lines = (src / f"{split}.corpus.csv").read_text(encoding="utf-8").splitlines()
        (ann / f"{split}.corpus.csv").write_text("\n".join(lines[: 1 + ROWS_PER_SPLIT]) + "\n", encoding="utf-8")
        ids[split] = [line.split("|")[0] for line in lines[1 : 1 + ROWS_PER_SPLIT]]
        for utt in ids[split]:
            folder = release / "features" / "fullFrame-210x260px" / split / utt / "1"
            folder.mkdir(parents=True)
            for k in range(FRAMES):  # alternate the two real frames: real signer, real motion
                shutil.copy(frames[k % len(frames)], folder / f"images{k + 1:04d}.png")
    return ids


def test_make_features_on_a_phoenix14_release_fixture(shared_dir, tmp_path):
    ids = _fixture(shared_dir, tmp_path / "data")
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "preprocess.features", "--dataset", "phoenix14", "--data-root", str(tmp_path / "data"),
           "--cache", str(cache), "--workers", "1", "--flow-size", "56"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    utts = read_manifest(cache / "phoenix14" / "manifest.jsonl")
    assert {u.id for u in utts} == {i for split in ids.values() for i in split}
    vocab = json.loads((cache / "phoenix14" / "vocab.json").read_text())["tokens"]
    train_glosses = {g for u in utts if u.split == "train" for g in u.glosses}
    assert vocab[0] == "<blank>" and set(vocab[1:]) == train_glosses

    meta = read_meta(cache, "phoenix14")
    assert meta["keypoint_layout"] == "mediapipe_holistic_543"
    for split, split_ids in ids.items():
        for utt_id in split_ids:
            arrays = load_utt(utt_path(cache, "phoenix14", split, utt_id))
            assert arrays["rgb"].shape == (FRAMES, 256, 256, 3) and arrays["rgb"].dtype == np.uint8
            assert arrays["keypoints"].shape == (FRAMES, 543, 3) and arrays["keypoints"].dtype == np.float16
            assert arrays["flow"].shape == (FRAMES, 2, 56, 56)
            # a real signer: MediaPipe finds the body on every frame
            assert arrays["keypoints_mask"][:, :33].all(axis=1).mean() == 1.0

    files = sorted((cache / "phoenix14").rglob("*.npz"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps  # a finished cache is skipped, not rebuilt


def test_missing_frame_folder_is_reported_and_the_rest_cached(shared_dir, tmp_path):
    ids = _fixture(shared_dir, tmp_path / "data")
    gone = ids["dev"][0]
    shutil.rmtree(tmp_path / "data" / "phoenix-2014-multisigner" / "features" / "fullFrame-210x260px" / "dev" / gone)
    cache = tmp_path / "cache"
    run = subprocess.run(
        [sys.executable, "-m", "preprocess.features", "--dataset", "phoenix14", "--data-root", str(tmp_path / "data"),
         "--cache", str(cache), "--workers", "1", "--flow", "none", "--rgb-size", "64"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1  # a failed utterance fails the stage; the others are cached
    assert f"FAILED {gone}" in run.stdout + run.stderr
    assert not utt_path(cache, "phoenix14", "dev", gone).exists()
    assert utt_path(cache, "phoenix14", "dev", ids["dev"][1]).exists()
