"""`make features`: fill the per-video cache (RGB, landmarks, optical flow) for one dataset.

Stages per utterance: decode (or read the dataset's keypoint file) -> landmarks -> flow ->
one atomic ``.npz`` write. The driver is idempotent: a file whose stored config hash matches
is skipped, a stale one is rebuilt, and a failure of one utterance is reported on one line,
logged to ``failures.jsonl`` and never touches files already written, so killing a run and
starting it again ends with the same bytes as an uninterrupted run.

Heavy modules (decord, MediaPipe, torch) are imported only where an utterance really needs
them, so a re-run over a finished cache costs little more than reading the file headers.

Modules: ``config`` (FeatureConfig, the Plan every worker shares, the per-utterance Result),
``extract`` (one utterance's stages and the worker-side jobs), ``plan`` (manifest, keypoint
layout, config hash, meta.json), ``driver`` (selection, skipping, failure records, one run),
``cli`` (``python -m preprocess.features``); the crash-tolerant process pool is
``preprocess.pool``.
"""
from __future__ import annotations

from preprocess.features.cli import build_parser, main
from preprocess.features.config import FeatureConfig, Result, UtteranceError
from preprocess.features.driver import run, select
from preprocess.features.extract import check_arrays

__all__ = ["FeatureConfig", "Result", "UtteranceError", "build_parser", "check_arrays", "main", "run", "select"]
