"""What an exported ONNX model says about itself, and the onnxruntime session that runs it.

Torch-free on purpose: live recognition with an ONNX model (``evaluate.infer --stream``) reads
its vocabulary and input spec here and decodes on NumPy, so its start-up never pays PyTorch's
import. The metadata is written by ``evaluate.export``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from models.base import TIME_REDUCTION, InputSpec

MIN_FRAMES = TIME_REDUCTION  # traced graphs skip pad_min_time: callers pad shorter clips to this


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported model says about itself (``metadata_props`` parsed)."""

    vocab: tuple[str, ...]  # id -> gloss, index 0 the CTC blank
    config: dict[str, Any]  # the model config dict it was built from
    spec: InputSpec  # cache inputs it expects
    input_names: tuple[str, ...]  # positional model inputs (``lengths`` comes last)
    time_reduction: int = TIME_REDUCTION  # output steps = frames // this
    level: str = "main"  # exported logits level
    min_frames: int = MIN_FRAMES  # shorter clips must be zero-padded to this many frames
    preprocess: dict[str, Any] = field(default_factory=dict)  # e.g. {"rgb_resize": 128}
    version: str = "unknown"  # project version that exported it


def read_metadata(path: str | os.PathLike) -> OnnxMetadata:
    """Parse an exported model's metadata; a file without it gives one line naming the fix."""
    import onnx

    path = _require_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise _unreadable(path, e) from None
    return parse_metadata({p.key: p.value for p in proto.metadata_props}, path)


def _require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX model; export one with `python -m evaluate.export`")
    return path


def _unreadable(path: Path, e: Exception) -> ValueError:
    return ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}); re-export it")


def parse_metadata(props: Mapping[str, str], path: str | os.PathLike) -> OnnxMetadata:
    """:class:`OnnxMetadata` from a model's ``metadata_props`` (from onnx, or an onnxruntime session's
    ``get_modelmeta().custom_metadata_map``); ``path`` names the model in errors."""
    missing = [k for k in ("vocabulary", "model_config", "input_spec") if k not in props]
    if missing:
        raise ValueError(f"{path}: no {', '.join(repr(k) for k in missing)} in the ONNX metadata "
                         "(exported by another tool?); re-export it with `python -m evaluate.export`")
    try:
        vocab = tuple(json.loads(props["vocabulary"]))
        config = dict(json.loads(props["model_config"]))
        spec = InputSpec(**json.loads(props["input_spec"]))
        if "input_names" in props:
            names = tuple(json.loads(props["input_names"]))
        else:  # exports older than the input_names entry
            from models.checkpoint import model_input_names

            names = model_input_names(config)
        preprocess = dict(json.loads(props.get("preprocess", "{}")))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: malformed metadata ({e}); re-export it with `python -m evaluate.export`") from None
    return OnnxMetadata(
        vocab=vocab,
        config=config,
        spec=spec,
        input_names=names,
        time_reduction=int(props.get("time_reduction", TIME_REDUCTION)),
        level=props.get("level", "main"),
        min_frames=int(props.get("min_frames", MIN_FRAMES)),
        preprocess=preprocess,
        version=props.get("version", "unknown"),
    )


def ort_session(path: str | os.PathLike, threads: int = 1):
    """CPU InferenceSession with ``threads`` intra-op threads (1: deterministic, no oversubscription);
    a missing or unreadable file gives one line naming it."""
    import onnxruntime as ort

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    path = _require_file(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a foreign or truncated file
        raise _unreadable(path, e) from None


def open_model(path: str | os.PathLike, threads: int = 1) -> tuple[Any, OnnxMetadata]:
    """An exported model's session and its metadata as the session read it: one parse of the file,
    and no import of the onnx package (see :func:`ort_session` for the errors)."""
    session = ort_session(path, threads)
    return session, parse_metadata(session.get_modelmeta().custom_metadata_map, path)
