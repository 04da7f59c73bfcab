"""Cache dataset, augmentation, padding and the bucket sampler, on a tiny cache built here."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from models.data import AugmentConfig, BucketBatchSampler, CacheDataset, collate, input_spec, meta_config
from preprocess import cache as cache_lib
from preprocess.layouts import HOLISTIC_543, LEFT_HAND, RIGHT_HAND
from preprocess.manifest import Utterance, write_manifest
from preprocess.vocab import Vocabulary

DATASET = "tiny"
GLOSSES = ("A", "B", "C", "D", "E")
K = 543
RGB, FLOW = 16, 8
FLOW_SCALE = 0.25  # pixels per int8 step


def make_tiny_cache(root: Path, n_train: int = 8, n_dev: int = 4, seed: int = 0,
                    frames: tuple[int, int] = (12, 24)) -> Path:
    """A cache in the real layout: manifest, vocab, meta and npz files with all three streams.

    Each gloss g has its own keypoint/rgb/flow signature, so a model can learn something.
    """
    rng = np.random.default_rng(seed)
    # meta.json as `make features` writes it: top-level facts plus a nested flow block
    meta = {"rgb_size": RGB, "keypoint_layout": HOLISTIC_543, "num_keypoints": K,
            "streams": ["rgb", "keypoints", "keypoints_mask", "flow"],
            "flow": {"method": "dis", "size": FLOW, "dtype": "int8", "scale": FLOW_SCALE}}
    chash = cache_lib.config_hash(meta)
    utts = []
    for split, n in (("train", n_train), ("dev", n_dev)):
        for i in range(n):
            uid = f"{split}{i:02d}"
            n_gl = int(rng.integers(1, 4))
            glosses = [GLOSSES[j] for j in rng.integers(0, len(GLOSSES), n_gl)]
            t = int(rng.integers(*frames))
            seg = np.minimum(np.arange(t) * n_gl // t, n_gl - 1)  # gloss index of each frame
            code = np.array([GLOSSES.index(glosses[s]) for s in seg], dtype=np.float32)  # [T]
            kp = rng.random((t, K, 3), dtype=np.float32) * 0.1 + 0.45
            kp[:, LEFT_HAND[0]:RIGHT_HAND[1], 0] += code[:, None] * 0.05
            mask = rng.random((t, K)) > 0.1
            rgb = (rng.random((t, RGB, RGB, 3)) * 60 + code[:, None, None, None] * 30).astype(np.uint8)
            flow = rng.integers(-20, 20, (t, 2, FLOW, FLOW)).astype(np.int8)
            flow[:, 0] += (code * 10).astype(np.int8)[:, None, None]
            cache_lib.write_npz_atomic(cache_lib.utt_path(root, DATASET, split, uid),
                                       {"rgb": rgb, "keypoints": kp.astype(np.float16), "keypoints_mask": mask,
                                        "flow": flow}, chash)
            utts.append(Utterance(uid, split, f"s{i % 2}", glosses, None, t))
    ddir = cache_lib.dataset_dir(root, DATASET)
    write_manifest(ddir / "manifest.jsonl", utts)
    Vocabulary(("<blank>", *GLOSSES)).save(ddir / "vocab.json")  # every gloss, whatever the draw
    cache_lib.write_meta(root, DATASET, {**meta, "config_hash": chash})
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_tiny_cache(tmp_path_factory.mktemp("cache"))


STREAMS = ("rgb", "keypoints", "flow")


def test_item_shapes_dtypes_and_dequantised_flow(cache):
    ds = CacheDataset(cache, DATASET, "train", STREAMS, augment=None)
    assert len(ds) == 8
    item = ds[0]
    raw = cache_lib.load_utt(cache_lib.utt_path(cache, DATASET, "train", item["id"]))
    t = len(raw["rgb"])
    x = item["inputs"]
    assert x["rgb"].dtype == torch.uint8 and x["rgb"].shape == (t, 3, RGB, RGB)
    assert torch.equal(x["rgb"], torch.from_numpy(raw["rgb"]).permute(0, 3, 1, 2))
    assert x["keypoints"].dtype == torch.float32 and x["keypoints"].shape == (t, K, 3)
    assert x["keypoints_mask"].dtype == torch.bool and torch.equal(x["keypoints_mask"], torch.from_numpy(raw["keypoints_mask"]))
    np.testing.assert_allclose(x["flow"].numpy(), raw["flow"].astype(np.float32) * FLOW_SCALE)
    # masked points are zeroed, visible ones keep their value
    m = raw["keypoints_mask"]
    np.testing.assert_allclose(x["keypoints"].numpy()[m], raw["keypoints"].astype(np.float32)[m])
    assert (x["keypoints"].numpy()[~m] == 0).all()
    vocab = Vocabulary.load(cache / DATASET / "vocab.json")
    utt = next(u for u in ds.utts if u.id == item["id"])
    assert item["targets"].tolist() == vocab.encode(utt.glosses)
    assert ds.lengths[0] == t


def test_collate_pads_and_concatenates_targets(cache):
    ds = CacheDataset(cache, DATASET, "train", STREAMS, augment=None)
    items = [ds[i] for i in range(3)]
    inputs, lengths, targets, target_lengths, ids = collate(items)
    t_max = max(len(it["inputs"]["rgb"]) for it in items)
    assert inputs["rgb"].shape == (3, t_max, 3, RGB, RGB) and inputs["rgb"].dtype == torch.float32
    assert inputs["keypoints"].shape == (3, t_max, K, 3)
    assert inputs["keypoints_mask"].shape == (3, t_max, K) and inputs["flow"].shape == (3, t_max, 2, FLOW, FLOW)
    assert lengths.tolist() == [len(it["inputs"]["rgb"]) for it in items]
    assert ids == [it["id"] for it in items]
    assert target_lengths.tolist() == [len(it["targets"]) for it in items]
    assert targets.tolist() == sum((it["targets"].tolist() for it in items), [])
    for j, it in enumerate(items):
        n = lengths[j]
        torch.testing.assert_close(inputs["rgb"][j, :n], it["inputs"]["rgb"].float() / 255)
        assert inputs["rgb"][j, n:].abs().sum() == 0 and inputs["flow"][j, n:].abs().sum() == 0
        assert not inputs["keypoints_mask"][j, n:].any()


def test_flip_mirrors_keypoints_flow_and_rgb(cache):
    plain = CacheDataset(cache, DATASET, "train", STREAMS, augment=None)[0]["inputs"]
    flipped = CacheDataset(cache, DATASET, "train", STREAMS,
                           AugmentConfig(crop_size=0, flip_prob=1.0, time_scale=0.0))[0]["inputs"]
    torch.testing.assert_close(flipped["rgb"], plain["rgb"].flip(-1))
    torch.testing.assert_close(flipped["flow"][:, 1], plain["flow"][:, 1].flip(-1))
    torch.testing.assert_close(flipped["flow"][:, 0], -plain["flow"][:, 0].flip(-1))
    kp, mk = plain["keypoints"], plain["keypoints_mask"]
    fk, fm = flipped["keypoints"], flipped["keypoints_mask"]
    # Independent check on point pairs: pose 15/16 are the left/right wrists, 501/522 the hand roots.
    for a, b in ((15, 16), (LEFT_HAND[0], RIGHT_HAND[0]), (11, 12)):
        for src, dst in ((a, b), (b, a)):
            vis = mk[:, src]
            assert torch.equal(fm[:, dst], vis)
            torch.testing.assert_close(fk[vis, dst, 0], 1 - kp[vis, src, 0])
            torch.testing.assert_close(fk[vis, dst, 1:], kp[vis, src, 1:])
    nose_vis = mk[:, 0]  # the nose has no mirror partner: stays index 0, x mirrored
    torch.testing.assert_close(fk[nose_vis, 0, 0], 1 - kp[nose_vis, 0, 0])


def test_center_crop_for_eval_and_random_crop_for_train(cache):
    full = CacheDataset(cache, DATASET, "train", STREAMS, augment=None)[1]["inputs"]
    center = CacheDataset(cache, DATASET, "train", STREAMS, augment=None, crop_size=12)[1]["inputs"]
    assert center["rgb"].shape[-2:] == (12, 12) and center["flow"].shape[-2:] == (6, 6)
    torch.testing.assert_close(center["rgb"], full["rgb"][..., 2:14, 2:14])
    torch.testing.assert_close(center["flow"], full["flow"][..., 1:7, 1:7])
    # landmarks move into the crop's coordinates: x' = (x - 2/16) / (12/16)
    vis = full["keypoints_mask"]
    torch.testing.assert_close(center["keypoints"][vis][:, 0], (full["keypoints"][vis][:, 0] - 2 / 16) * 16 / 12)
    aug = AugmentConfig(crop_size=12, flip_prob=0.0, time_scale=0.0)
    ds = CacheDataset(cache, DATASET, "train", STREAMS, aug, seed=3)
    offsets = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        x = ds[1]["inputs"]["rgb"]
        assert x.shape[-2:] == (12, 12)
        hits = [(y, z) for y in range(5) for z in range(5) if torch.equal(x, full["rgb"][..., y:y + 12, z:z + 12])]
        assert len(hits) >= 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # the crop really moves
    spec = input_spec(ds.meta, crop_size=12)
    assert (spec.rgb_size, spec.flow_size, spec.num_keypoints, spec.keypoint_layout) == (12, 6, K, HOLISTIC_543)
    kp_only = CacheDataset(cache, DATASET, "train", ("keypoints",), aug).spec()
    assert (kp_only.rgb_size, kp_only.flow_size, kp_only.num_keypoints) == (0, 0, K)


def test_temporal_rescale_within_bounds_and_shared_by_streams(cache):
    aug = AugmentConfig(crop_size=0, flip_prob=0.0, time_scale=0.2)
    ds = CacheDataset(cache, DATASET, "train", STREAMS, aug, seed=1)
    plain = CacheDataset(cache, DATASET, "train", STREAMS, augment=None)
    lengths = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            t = plain.lengths[i]
            x = ds[i]["inputs"]
            n = len(x["rgb"])
            assert 0.8 * t - 1 <= n <= 1.2 * t + 1
            lengths.add(n - t)
            # recover the frame indices from rgb and check every stream used the same ones
            src = plain[i]["inputs"]
            idx = [next(j for j in range(t) if torch.equal(x["rgb"][k], src["rgb"][j])) for k in range(n)]
            assert idx[0] == 0 and idx[-1] == t - 1 and all(a <= b for a, b in zip(idx, idx[1:]))
            torch.testing.assert_close(x["keypoints"], src["keypoints"][idx])
            step = (t - 1) / (n - 1)
            torch.testing.assert_close(x["flow"], src["flow"][idx] * step)
    assert len(lengths) > 3  # lengths really vary


def test_augmentation_is_reproducible(cache):
    aug = AugmentConfig(crop_size=12, flip_prob=0.5, time_scale=0.2)
    a = CacheDataset(cache, DATASET, "train", STREAMS, aug, seed=7)
    b = CacheDataset(cache, DATASET, "train", STREAMS, aug, seed=7)
    a.set_epoch(2), b.set_epoch(2)
    for i in range(len(a)):
        for k, v in a[i]["inputs"].items():
            assert torch.equal(v, b[i]["inputs"][k])
    b.set_epoch(3)  # another epoch draws other crops/flips/speeds
    differ = [a[i]["inputs"]["rgb"].shape != b[i]["inputs"]["rgb"].shape
              or not torch.equal(a[i]["inputs"]["rgb"], b[i]["inputs"]["rgb"]) for i in range(len(a))]
    assert any(differ)


def test_keypoint_only_stream_loads_no_images(cache):
    ds = CacheDataset(cache, DATASET, "dev", ("keypoints",), augment=None)
    assert set(ds[0]["inputs"]) == {"keypoints", "keypoints_mask"}
    assert len(ds) == 4


def test_missing_and_corrupt_files_are_skipped_with_one_warning(tmp_path, caplog):
    root = make_tiny_cache(tmp_path)
    cache_lib.utt_path(root, DATASET, "train", "train03").unlink()
    cache_lib.utt_path(root, DATASET, "train", "train05").write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING, logger="models.data"):
        ds = CacheDataset(root, DATASET, "train", STREAMS, augment=None)
    assert len(ds) == 6 and {"train03", "train05"}.isdisjoint(u.id for u in ds.utts)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "2 of 8" in lines[0] and "make features" in lines[0]


def test_gloss_missing_from_vocabulary_names_utterance_and_fix(tmp_path):
    root = make_tiny_cache(tmp_path)
    Vocabulary(("<blank>", "A", "B")).save(root / DATASET / "vocab.json")
    with pytest.raises(ValueError, match=r"utterance 'train\d\d'.*glosses missing from .*vocab.json.*rebuild"):
        CacheDataset(root, DATASET, "train", ("keypoints",), augment=None)


def test_meta_config_reads_both_layouts_and_refuses_missing_streams(tmp_path):
    nested = {"rgb_size": 16, "num_keypoints": 0, "flow": {"method": "dis", "size": 8, "scale": 0.5}}
    flat = {"config": {"rgb_size": 16, "num_keypoints": 0, "flow_method": "dis", "flow_size": 8, "flow_scale": 0.5}}
    for meta in (nested, flat):
        cfg = meta_config(meta)
        assert (cfg["rgb_size"], cfg["flow_size"], cfg["flow_scale"], cfg["flow_method"]) == (16, 8, 0.5, "dis")
    root = make_tiny_cache(tmp_path)
    meta = cache_lib.read_meta(root, DATASET)
    meta["streams"] = ["keypoints", "keypoints_mask"]
    cache_lib.write_meta(root, DATASET, meta)
    with pytest.raises(ValueError, match=r"meta.json: the cache has no \['rgb'\].*rebuild it"):
        CacheDataset(root, DATASET, "train", ("rgb", "keypoints"), augment=None)


def test_crop_larger_than_cache_is_refused(cache):
    with pytest.raises(ValueError, match="crop_size 32 is larger than the cached RGB size 16"):
        CacheDataset(cache, DATASET, "train", STREAMS, augment=None, crop_size=32)


@pytest.mark.parametrize("n,batch,replicas", [(10, 3, 1), (10, 3, 2), (7, 2, 3), (5, 8, 2)])
def test_bucket_sampler_covers_every_index_and_shards_evenly(n, batch, replicas):
    lengths = np.random.default_rng(0).integers(5, 100, n).tolist()
    for epoch in range(3):
        shards = []
        for rank in range(replicas):
            s = BucketBatchSampler(lengths, batch, shuffle=True, seed=4, num_replicas=replicas, rank=rank)
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s) and all(1 <= len(b) <= batch for b in batches)
            shards.append(batches)
        assert len({len(b) for b in shards}) == 1  # same number of batches on every rank
        flat = [i for b in shards for batch_ in b for i in batch_]
        assert set(flat) == set(range(n))
        if replicas == 1:
            assert sorted(flat) == list(range(n))  # exactly once
        else:
            assert len(flat) - n < batch * replicas  # only the wrap-around repeats


def test_bucket_sampler_groups_similar_lengths_and_reshuffles():
    lengths = list(range(100, 0, -1))
    s = BucketBatchSampler(lengths, 4, shuffle=True, seed=0, bucket_batches=1)
    first = list(s)
    for b in first:  # bucket of one batch: each batch spans 4 consecutive lengths
        ls = [lengths[i] for i in b]
        assert max(ls) - min(ls) == 3
    s.set_epoch(1)
    assert list(s) != first
    assert sorted(map(sorted, list(s))) == sorted(map(sorted, first))
    plain = list(BucketBatchSampler(lengths, 4, shuffle=False))
    assert [lengths[b[0]] for b in plain] == sorted(lengths[b[0]] for b in plain)
