"""Planning a run: the manifest, the effective config, the dataset's keypoint layout, meta.json."""
from __future__ import annotations

import functools
import json
import logging
import tempfile
from collections import Counter
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

from preprocess import cache
from preprocess.features.config import FeatureConfig, Plan
from preprocess.features.extract import landmark_source, resolve_path
from preprocess.flow import flow_scale
from preprocess.layouts import HOLISTIC_543
from preprocess.files import atomic_write_bytes
from preprocess.manifest import Utterance, read_manifest


VERSIONED_PACKAGES = ("mediapipe", "opencv-contrib-python", "torch", "torchvision", "numpy", "decord", "av")
KEYPOINT_PROBES = 8  # keypoint files read up front to learn the dataset's layout (majority vote)


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Replace ``dst`` by ``src`` only when the bytes differ (a re-run must write nothing)."""
    data = src.read_bytes()
    if dst.is_file() and dst.read_bytes() == data:
        return
    atomic_write_bytes(dst, data)


def prepare_manifest(ds, out_dir: Path) -> list[Utterance]:
    """Run the dataset's reader into a scratch folder and publish manifest/vocab if they changed.

    Preparing aside and comparing keeps a re-run from touching any file, and lets shards on
    several machines publish the same manifest into one cache without a torn write.
    """
    from preprocess.datasets import prepare_dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    # A scratch folder outside the cache: a killed run leaves no debris among the cache files.
    with tempfile.TemporaryDirectory(prefix="signdistill-prepare-") as tmp:
        reader_log = logging.getLogger("preprocess.datasets")
        show_real_dir = _RenameInLog(tmp, str(out_dir))  # the reader's notes name the scratch folder
        reader_log.addFilter(show_real_dir)
        try:
            prepare_dataset(ds, tmp)
        finally:
            reader_log.removeFilter(show_real_dir)
        for name in ("manifest.jsonl", "vocab.json"):
            if (Path(tmp) / name).is_file():
                _copy_if_changed(Path(tmp) / name, out_dir / name)
    return read_manifest(out_dir / "manifest.jsonl")


class _RenameInLog(logging.Filter):
    """Rewrites one path in log records (keeps every record)."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__()
        self.old, self.new = old, new

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.old in message:
            record.msg, record.args = message.replace(self.old, self.new), None
        return True


def _probe_layout(utts: Sequence[Utterance], cfg: FeatureConfig, root: str,
                  previous: Mapping[str, Any] | None = None) -> tuple[str | None, int, str]:
    """(layout, num_keypoints, landmark_source) the whole dataset's cache will have.

    Keypoint files are read up front (a majority of the first few that load) so that one odd
    file fails on its own instead of setting the layout for everyone. ``previous`` is the
    meta.json of an earlier run: when it was written with the same extractor config and
    landmark sources its layout is reused, which keeps a re-run over a finished cache cheap.
    """
    if cfg.landmarks == "none":
        return None, 0, "none"
    sources = Counter(landmark_source(u, cfg) for u in utts)
    uses_file, uses_mp = sources["file"] > 0, sources["mediapipe"] > 0
    kind = "+".join(k for k in ("file", "mediapipe") if sources[k]) or "none"
    if not uses_file:
        return (HOLISTIC_543, 543, kind) if uses_mp else (None, 0, "none")
    if (previous and previous.get("extractor") == json.loads(json.dumps(cfg.hashed()))
            and previous.get("landmark_source") == kind and previous.get("keypoint_layout")
            and int(previous.get("num_keypoints") or 0) > 0):
        return str(previous["keypoint_layout"]), int(previous["num_keypoints"]), kind
    from preprocess.keypoint_io import KeypointFileError, load_keypoints

    votes: Counter = Counter()
    for u in utts:
        if landmark_source(u, cfg) != "file" or not u.keypoints:
            continue
        try:
            kp, _, layout = load_keypoints(str(resolve_path(u.keypoints, root)))
        except KeypointFileError:
            continue
        if kp.ndim == 3:
            votes[(layout, int(kp.shape[1]))] += 1
        if sum(votes.values()) >= KEYPOINT_PROBES:
            break
    if not votes:  # no file loads: every file-backed utterance will fail with its own message
        return (HOLISTIC_543, 543, kind) if uses_mp else ("unknown", -1, kind)
    (layout, k), _ = votes.most_common(1)[0]
    return layout, k, kind


def build_plan(ds, utts: Sequence[Utterance], cfg: FeatureConfig, cache_root: str,
               reuse_meta: bool = True) -> tuple[Plan, dict]:
    """The effective config, its hash, the keypoint layout and the meta.json content."""
    has_video = any(u.source for u in utts)
    note = None
    if not has_video and (cfg.rgb_size or cfg.flow.enabled):
        note = "keypoint-only corpus (no videos): RGB and flow are not stored"
        cfg = replace(cfg, rgb_size=0, flow=replace(cfg.flow, method="none"))
    previous = None
    if reuse_meta:
        try:
            previous = json.loads((cache.dataset_dir(cache_root, ds.name) / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    layout, k, lm_kind = _probe_layout(utts, cfg, str(ds.root), previous)
    mp_cfg = None
    if cfg.landmarks in ("auto", "mediapipe"):  # from the config, not the data: --limit/--splits keep the hash
        from preprocess.landmarks import HolisticConfig  # cheap: mediapipe itself loads lazily

        mp_cfg = HolisticConfig().to_dict()
    chash = cache.config_hash({"extractor": cfg.hashed(), "keypoint_layout": layout, "mediapipe": mp_cfg})
    plan = Plan(cache_root=str(cache_root), dataset=ds.name, cfg=cfg, chash=chash, layout=layout,
                num_keypoints=k, root=str(ds.root), use_mediapipe="mediapipe" in lm_kind)
    streams = (["rgb"] if cfg.rgb_size else []) + (["keypoints", "keypoints_mask"] if layout else []) + \
              (["flow"] if cfg.flow.enabled else [])
    flow_meta = None
    if cfg.flow.enabled:
        flow_meta = {**cfg.hashed()["flow"], "scale": float(flow_scale(cfg.flow)),
                     "device": cfg.flow.device if cfg.flow.is_raft else None}
    meta = {
        "dataset": ds.name,
        "extractor": cfg.hashed(),
        "config_hash": chash,
        "streams": streams,
        "keypoint_layout": layout,
        "num_keypoints": k if layout else 0,
        "landmark_source": lm_kind,
        "mediapipe": {"solution": "holistic (legacy solutions API)", **mp_cfg} if "mediapipe" in lm_kind else None,
        "rgb_size": cfg.rgb_size,
        "rgb_storage": "uint8 array" if cfg.rgb_size else None,
        "flow": flow_meta,
        "max_frames": cfg.max_frames,
        "keypoint_only": not has_video,
        "note": note,
        "versions": dict(_versions()),
    }
    return plan, meta


def write_meta_if_changed(cache_root: str, dataset: str, meta: dict) -> None:
    path = cache.dataset_dir(cache_root, dataset) / "meta.json"
    wanted = json.loads(json.dumps({"cache_format": cache.CACHE_FORMAT_VERSION, **meta}, default=str))
    try:
        if json.loads(path.read_text(encoding="utf-8")) == wanted:
            return
    except (OSError, ValueError):
        pass
    cache.write_meta(cache_root, dataset, meta)
