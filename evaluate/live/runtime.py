"""Model runtimes for deployment inference: an exported ONNX model or a checkpoint behind one interface.

Both give batched logits; decoding them into glosses is the same for either (greedy or beam
CTC decoding of log-probabilities), so the application code never asks which runtime it holds.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from models.base import TIME_REDUCTION, InputSpec
from preprocess.layouts import HOLISTIC_543

if TYPE_CHECKING:  # evaluate.core.decode imports torch: loaded only when a clip is decoded
    from evaluate.core.decode import Hypothesis


class Recognizer(Protocol):
    """What inference needs from a model, whichever runtime runs it."""

    name: str  # the model file, for messages
    vocab: tuple[str, ...]  # id -> gloss, index 0 the blank
    spec: InputSpec  # cache inputs the model expects
    input_names: tuple[str, ...]  # model inputs besides ``lengths``
    preprocess: dict[str, Any]  # deployment preprocessing (``rgb_resize``, ``rgb_crop``)

    def __call__(self, inputs: dict[str, np.ndarray], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batched inputs (see ``models.base``) -> (logits [B, T', V], out_lengths [B])."""
        ...


def _pad_time(inputs: dict[str, np.ndarray], min_frames: int) -> dict[str, np.ndarray]:
    """Zero-pad dim 1 to ``min_frames`` (exported graphs skip the model's own short-clip padding)."""
    t = next(iter(inputs.values())).shape[1]
    if t >= min_frames:
        return inputs
    out = {}
    for k, v in inputs.items():
        pad = np.zeros((v.shape[0], min_frames - t, *v.shape[2:]), dtype=v.dtype)
        out[k] = np.concatenate([v, pad], axis=1)
    return out


class OnnxRecognizer:
    """An exported model run by onnxruntime on the CPU; everything else comes from its metadata."""

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        from models.onnx_meta import open_model

        self.session, meta = open_model(path, threads)
        self.name = str(path)
        self.vocab, self.spec, self.input_names = meta.vocab, meta.spec, meta.input_names
        self.preprocess, self.min_frames = meta.preprocess, meta.min_frames
        graph_inputs = tuple(i.name for i in self.session.get_inputs())
        if graph_inputs != (*self.input_names, "lengths"):
            raise ValueError(f"{path}: graph inputs {list(graph_inputs)} disagree with its metadata "
                             f"{[*self.input_names, 'lengths']}; re-export it with `python -m evaluate.export`")

    def __call__(self, inputs: dict[str, np.ndarray], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = _pad_time({k: inputs[k] for k in self.input_names}, self.min_frames)
        feed["lengths"] = np.asarray(lengths, dtype=np.int64)
        logits, out_lengths = self.session.run(["logits", "out_lengths"], feed)
        return logits, out_lengths


class TorchRecognizer:
    """A PyTorch contract model (same interface as :class:`OnnxRecognizer`); see :meth:`from_checkpoint`."""

    def __init__(self, model, vocab: Sequence[str], spec: InputSpec, input_names: Sequence[str],
                 preprocess: dict[str, Any] | None = None, name: str = "<torch model>", level: str = "main") -> None:
        self.model, self.level, self.name = model.eval(), level, name
        self.vocab, self.spec, self.input_names = tuple(vocab), spec, tuple(input_names)
        self.preprocess = dict(preprocess or {})

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, threads: int = 1, level: str = "main") -> "TorchRecognizer":
        import torch

        from evaluate.export import load_checkpoint_model

        torch.set_num_threads(threads)
        m = load_checkpoint_model(path)
        return cls(m.model, m.vocab, m.spec, m.input_names, m.preprocess, str(path), level)

    def __call__(self, inputs: dict[str, np.ndarray], lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in self.input_names}
        with torch.no_grad():
            out = self.model(tensors, torch.as_tensor(np.asarray(lengths), dtype=torch.long))
        return out.logits[self.level].numpy(), out.out_lengths.numpy()


def load_recognizer(path: str | os.PathLike, threads: int = 1) -> Recognizer:
    """``*.onnx`` -> :class:`OnnxRecognizer`; anything else is read as a checkpoint."""
    if str(path).endswith(".onnx"):
        return OnnxRecognizer(path, threads)
    return TorchRecognizer.from_checkpoint(path, threads)


def decode(logits: np.ndarray, out_lengths: np.ndarray, vocab: Sequence[str], beam: int = 1) -> list[list[str]]:
    """A batch of outputs ([B, T', V], [B]) -> gloss strings, through the shared decoder
    (``evaluate.core.decode.decode_outputs``: greedy for ``beam <= 1``, prefix beam search otherwise)."""
    from evaluate.core.decode import decode_outputs

    return [h.glosses for h in decode_outputs(logits, out_lengths, vocab, beam=beam)]


def timed_output(hyp: Hypothesis, vocab: Sequence[str], fps: float, num_frames: int) -> list[dict[str, Any]]:
    """``[{gloss, start_s, end_s, score}]`` of one decoded clip.

    Args:
        hyp: its decoding (ids and the log-probabilities of its valid steps).
        fps: the clip's frame rate; output step j covers frames [j, j + 1) * the time reduction.
        num_frames: the clip's length (the last segment ends there at the latest).
    """
    out = []
    for g in hyp.timed():
        start, end = g.seconds(fps, TIME_REDUCTION, num_frames)
        out.append({"gloss": vocab[g.token], "start_s": round(start, 3), "end_s": round(end, 3),
                    "score": round(g.score, 4)})
    return out


def require_landmark_model(rec: Recognizer) -> None:
    """Refuse, in one line, a model that does not read landmarks alone (the live path feeds only them)."""
    if "keypoints" not in rec.input_names:
        raise ValueError(f"{rec.name} takes {', '.join(rec.input_names)}, not keypoints: live recognition "
                         "runs landmark models; export a landmark student (python -m evaluate.export)")
    others = [n for n in rec.input_names if n not in ("keypoints", "keypoints_mask")]
    if others:
        raise ValueError(f"{rec.name} also needs {', '.join(others)}; live recognition feeds landmarks "
                         "only; export a landmark-only model (a landmark student)")


def require_mediapipe_layout(rec: Recognizer) -> None:
    """Refuse a model whose keypoints are not MediaPipe Holistic's 543 points (what the extractor gives)."""
    if rec.spec.keypoint_layout != HOLISTIC_543:
        raise ValueError(f"{rec.name} expects keypoint layout {rec.spec.keypoint_layout or 'unknown'!r} "
                         f"({rec.spec.num_keypoints} points) but MediaPipe Holistic gives {HOLISTIC_543!r}; "
                         "use a model trained on a MediaPipe landmark cache")
