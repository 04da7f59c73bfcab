"""synthsign: the built-in generated sign language corpus.

Why it exists: ``make demo`` must run every stage on a fresh machine with no data, and the
distillation methods need a corpus where each modality matters. So the generator renders a
cartoon signer with OpenCV and writes, per utterance, an mp4 video plus landmarks in the
MediaPipe Holistic layout that agree with the drawing, as a *custom corpus*:

    <out>/corpus.csv              id|split|signer|glosses|video|fps|num_frames
    <out>/videos/<id>.mp4         mp4v, ``fps``, frame_size x frame_size
    <out>/keypoints/<id>.npz      keypoints float32 [T, 543, 3], mask bool [T, 543]
    <out>/alignments.jsonl        true gloss spans per utterance (for checking CTC alignments)
    <out>/synthsign.json          generator config, format version, lexicon, statistics
    <out>/.done                   written last

A gloss is (dominant hand shape, movement, location, orientation, use of the other hand,
mouthing). The lexicon contains pairs that differ only in hand shape (fine finger detail,
small in low-resolution video) or only in movement, sentences come from a small weighted
grammar, and signers differ in body, colours, tempo and amplitude. Detection noise (jitter,
dropped hand detections, more often during fast movement) keeps landmarks imperfect and video
noise keeps RGB imperfect, so neither stream alone solves the task. Everything derives from
the seed: the same config gives byte-identical keypoint files and corpus.csv.

Modules, in pipeline order: ``config`` (SynthConfig, presets), ``lexicon`` (phonology, glosses,
grammar), ``signer``, ``geometry`` (hand skeleton, face mesh), ``motion`` (per-frame state of a
sentence), ``skeleton`` (state -> keypoints), ``detector`` (landmark noise), ``painter`` and
``camera`` (the video), ``writer`` (the corpus folder), ``cli`` (``python -m preprocess.synthsign``).
"""
from __future__ import annotations

from preprocess.synthsign.cli import main
from preprocess.synthsign.config import FORMAT_VERSION, SynthConfig, preset
from preprocess.synthsign.detector import detect
from preprocess.synthsign.geometry import hand_points
from preprocess.synthsign.lexicon import HAND_SHAPES, build_lexicon, minimal_pairs
from preprocess.synthsign.motion import gloss_geometry
from preprocess.synthsign.writer import generate, is_complete, plan_corpus

__all__ = ["FORMAT_VERSION", "HAND_SHAPES", "SynthConfig", "build_lexicon", "detect", "generate", "gloss_geometry",
           "hand_points", "is_complete", "main", "minimal_pairs", "plan_corpus", "preset"]
