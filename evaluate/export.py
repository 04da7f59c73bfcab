"""ONNX export of any contract model, with its vocabulary and configs inside, and int8 quantisation.

``python -m evaluate.export --ckpt exp/x/best.pt --out exp/x/model.onnx [--int8] [--level main]``

The exported graph is ``(*inputs, lengths) -> (logits, out_lengths)`` with named inputs
(``keypoints``, ``keypoints_mask``, ``rgb``, ``flow``, ``lengths``), dynamic batch and time
axes, and ``metadata_props`` that make the file self-describing (icefall style): the
vocabulary, the model config, the input spec, the time reduction, the exported logits level,
the preprocessing a deployer must repeat and the project version. ``evaluate.infer`` needs
nothing but the .onnx file.

The int8 model uses ONNX Runtime's dynamic quantisation: int8 weights, and the activations
entering each quantised op rounded to uint8 with a range measured per call (no calibration set
needed). Only ops with constant weights are quantised: MatMul (Linear layers) and LSTM, plus
Conv for convolution-heavy models (see ``INT8_OPS``); attention's activation x activation
MatMuls stay in float (MatMulConstBOnly). The file shrinks about 4x for those weights; accuracy is checked
by comparing greedy outputs with the fp32 model (``compare_int8``) on real cached utterances of the
checkpoint's cache (``--cache``; random inputs only when no cache is found, and then said so), not assumed.

Every export also writes a model card beside the model (``model.card.md`` + ``model.card.json``):
vocabulary, inputs and normalisation, training data and recipe, the run's WERs when its
``results.json`` is there, file sizes, onnxruntime latency on a 128-frame clip and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from models.base import TIME_REDUCTION, InputSpec
from models.build import ExportWrapper
from models.checkpoint import Checkpoint, model_input_names
from models.onnx_meta import MIN_FRAMES, ort_session
from preprocess.commandline import add_cache, add_out, command, prog

PROJECT = "signdistill"
INPUT_ORDER = ("rgb", "keypoints", "keypoints_mask", "flow")  # positional order in every export
OUTPUT_NAMES = ("logits", "out_lengths")
# Weight-carrying ops to quantise. "Gemm" is not in the dynamic quantiser's registry (Linear
# layers on [B, T, D] export as MatMul + Add, which it does quantise). Conv is the trade-off:
# onnxruntime's ConvInteger runs slower on CPU than its fused float Conv (landmark student, 200
# frames, 1 thread: about +1 ms per clip), which is worth it only where convolutions hold most
# of the weights (CNN students such as LRINet, whose file would otherwise barely shrink).
# ``auto_int8_ops`` decides per model.
INT8_OPS = ("MatMul", "LSTM")
INT8_ALL_OPS = ("MatMul", "LSTM", "Conv")


def _project_version() -> str:
    try:
        from importlib.metadata import version

        return version(PROJECT)
    except Exception:  # an un-installed checkout still exports
        return "unknown"


def example_inputs(input_names: Sequence[str], spec: InputSpec, lengths: Sequence[int],
                   seed: int = 0) -> dict[str, Tensor]:
    """Random inputs shaped like a padded batch from the cache (see ``models.base``).

    Args:
        input_names: which tensors to make.
        spec: sizes (K, rgb side, flow side).
        lengths: valid frames per batch row; T = max(lengths).

    Returns:
        name -> tensor: keypoints float [B, T, K, 3] in [0, 1], keypoints_mask bool [B, T, K]
        (about 90% True), rgb float [B, T, 3, S, S] in [0, 1], flow float [B, T, 2, s, s] pixels.
    """
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    out: dict[str, Tensor] = {}
    for name in input_names:
        if name == "keypoints":
            out[name] = torch.rand(b, t, spec.num_keypoints, 3, generator=g)
        elif name == "keypoints_mask":
            out[name] = torch.rand(b, t, spec.num_keypoints, generator=g) < 0.9
        elif name == "rgb":
            out[name] = torch.rand(b, t, 3, spec.rgb_size, spec.rgb_size, generator=g)
        elif name == "flow":
            out[name] = torch.randn(b, t, 2, spec.flow_size, spec.flow_size, generator=g) * 2.0
        else:
            raise ValueError(f"unknown input name {name!r}; choose from {INPUT_ORDER}")
    return out


def export_onnx(
    model: nn.Module,
    spec: InputSpec,
    vocab_tokens: Sequence[str],
    config_dict: Mapping[str, Any],
    out_path: str | os.PathLike,
    input_names: Sequence[str] | None = None,
    opset: int = 17,
    level: str = "main",
    preprocess: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model`` to ONNX with named inputs/outputs, dynamic axes and self-describing metadata.

    Args:
        model: a ``models.base`` contract model (left in the mode it came in).
        spec: the cache's InputSpec the model was built for.
        vocab_tokens: id -> gloss (index 0 the blank), stored as the ``vocabulary`` metadata.
        config_dict: the model's config dict (ModelConfig or StudentConfig), stored as ``model_config``.
        out_path: the .onnx file to write (atomically: temp file + rename).
        input_names: input tensors in positional order (default: from ``config_dict``).
        opset: ONNX opset.
        level: logits level to export (``main`` is the decoded one).
        preprocess: what a deployer must repeat before the model (e.g. the cache's RGB resize),
            stored as JSON.

    Returns:
        The written path.
    """
    out_path = Path(out_path)
    names = tuple(input_names) if input_names is not None else model_input_names(config_dict)
    if len(vocab_tokens) < 2:
        raise ValueError(f"vocabulary has {len(vocab_tokens)} token(s); need the blank and at least one gloss")
    example = example_inputs(names, spec, [64, 45])  # T=64 traced; a shorter row exercises the masks
    lengths = torch.tensor([64, 45])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe = model(example, lengths)
        if level not in probe.logits:
            raise ValueError(f"logits level {level!r} not in the model's outputs {sorted(probe.logits)}")
        vocab_size = probe.logits[level].shape[-1]
        if vocab_size != len(vocab_tokens):
            raise ValueError(f"the model outputs {vocab_size} classes but the vocabulary has "
                             f"{len(vocab_tokens)} tokens; export with the checkpoint's own vocabulary")
        wrapper = ExportWrapper(model, names, level).eval()
        axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "time"} for n in names}
        axes["lengths"] = {0: "batch"}
        axes["logits"] = {0: "batch", 1: "time_out"}
        axes["out_lengths"] = {0: "batch"}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and legacy-exporter notices; checked below instead
                torch.onnx.export(
                    wrapper,
                    tuple(example[n] for n in names) + (lengths,),
                    tmp,
                    dynamo=False,  # torch 2.14 defaults to the dynamo exporter (needs onnxscript)
                    opset_version=opset,
                    input_names=[*names, "lengths"],
                    output_names=list(OUTPUT_NAMES),
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
            _set_metadata(tmp, {
                "vocabulary": json.dumps(list(vocab_tokens), ensure_ascii=False),
                "model_config": json.dumps(dict(config_dict), sort_keys=True),
                "input_spec": json.dumps(asdict(spec), sort_keys=True),
                "input_names": json.dumps(list(names)),
                "time_reduction": str(TIME_REDUCTION),
                "level": level,
                "blank": "0",
                "min_frames": str(MIN_FRAMES),
                "preprocess": json.dumps(dict(preprocess or {}), sort_keys=True),
                "version": _project_version(),
                "torch": torch.__version__,
            })
            os.replace(tmp, out_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        model.train(was_training)
    return out_path


def _set_metadata(path: str | os.PathLike, props: Mapping[str, str], drop_value_info: bool = False) -> None:
    """Rewrite ``path`` with ``props`` as metadata; ``drop_value_info`` removes the optional shape
    annotations the quantiser's shape inference adds (onnxruntime infers them again at load)."""
    import onnx

    proto = onnx.load(str(path))
    if drop_value_info:
        del proto.graph.value_info[:]
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = PROJECT
    onnx.save(proto, str(path))


def _feed(inputs: Mapping[str, Tensor], lengths: Tensor) -> dict[str, np.ndarray]:
    feed = {k: v.numpy() for k, v in inputs.items()}
    feed["lengths"] = lengths.numpy().astype(np.int64)
    return feed


def verify_onnx(
    onnx_path: str | os.PathLike,
    model: nn.Module,
    spec: InputSpec,
    input_names: Sequence[str],
    lengths: Sequence[int] = (37, 21, 50),
    level: str = "main",
    seed: int = 1,
) -> float:
    """onnx.checker, then onnxruntime vs torch on random inputs of another T and batch size than traced.

    Returns:
        The largest absolute logit difference (out_lengths must match exactly).
    """
    import onnx

    onnx.checker.check_model(str(onnx_path))
    inputs = example_inputs(input_names, spec, lengths, seed=seed)
    lens = torch.tensor(list(lengths))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(inputs, lens)
    finally:
        model.train(was_training)
    logits, out_lengths = ort_session(onnx_path).run(list(OUTPUT_NAMES), _feed(inputs, lens))
    if not np.array_equal(out_lengths, ref.out_lengths.numpy()):
        raise AssertionError(f"{onnx_path}: out_lengths {out_lengths.tolist()} != torch {ref.out_lengths.tolist()}")
    want = ref.logits[level].numpy()
    if logits.shape != want.shape:
        raise AssertionError(f"{onnx_path}: logits shape {logits.shape} != torch {want.shape}")
    return float(np.abs(logits - want).max())


def auto_int8_ops(onnx_path: str | os.PathLike, conv_share: float = 0.5) -> tuple[str, ...]:
    """``INT8_OPS``, plus Conv when convolution weights are at least ``conv_share`` of all weights."""
    import onnx

    proto = onnx.load(str(onnx_path))
    sizes = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    total = sum(sizes.values())
    conv = sum(sizes.get(n.input[1], 0) for n in proto.graph.node if n.op_type == "Conv" and len(n.input) > 1)
    return INT8_ALL_OPS if total and conv >= conv_share * total else INT8_OPS


def quantize_int8(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike,
                  op_types: Sequence[str] | None = None) -> Path:
    """Dynamic int8 quantisation (int8 weights) of an exported model; metadata is carried over.

    Args:
        op_types: op types to quantise (subset of ``INT8_ALL_OPS``); None: ``auto_int8_ops``.

    The result is loaded once with onnxruntime so a model that quantises into an op the CPU
    provider cannot run fails here, not in deployment.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    op_types = tuple(op_types) if op_types is not None else auto_int8_ops(onnx_in)
    bad = [o for o in op_types if o not in INT8_ALL_OPS]
    if bad or not op_types:
        raise ValueError(f"int8 op types {list(op_types)} invalid; choose from {list(INT8_ALL_OPS)}")
    props = {p.key: p.value for p in onnx.load(str(onnx_in), load_external_data=False).metadata_props}
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=onnx_out.parent, prefix=f".{onnx_out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        import logging

        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantiser's "consider pre-processing" note
        try:
            quantize_dynamic(onnx_in, tmp, op_types_to_quantize=list(op_types), weight_type=QuantType.QInt8,
                             per_channel=False, reduce_range=False)
        finally:
            logging.getLogger().setLevel(quiet)
        _set_metadata(tmp, {**props, "quantization": "dynamic int8 weights (" + ",".join(op_types) + ")"},
                      drop_value_info=True)
        ort_session(tmp)  # refuses ops the CPU provider lacks
        os.replace(tmp, onnx_out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return onnx_out


def quantized_ops(onnx_path: str | os.PathLike) -> dict[str, int]:
    """Count of integer (quantised) op types in a model, e.g. ``{"MatMulInteger": 9, "DynamicQuantizeLSTM": 2}``."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(onnx_path)).graph.node:
        if "Integer" in node.op_type or node.op_type.startswith("DynamicQuantize"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def compare_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                 inputs: Mapping[str, Tensor], lengths: Tensor) -> dict[str, float]:
    """How far the int8 model is from fp32 on ``inputs``: largest |logit| difference and greedy agreement.

    Returns:
        ``max_abs_diff``, ``frame_agreement`` (share of valid output steps with the same argmax) and
        ``sequence_agreement`` (share of rows whose greedy gloss sequence is identical).
    """
    from evaluate.core.decode import greedy_decode

    feed = _feed(inputs, lengths)
    a, a_len = ort_session(fp32_path).run(list(OUTPUT_NAMES), feed)
    b, _ = ort_session(int8_path).run(list(OUTPUT_NAMES), feed)
    valid = np.arange(a.shape[1])[None, :] < a_len[:, None]  # [B, T']
    same_frame = (a.argmax(-1) == b.argmax(-1))[valid]
    la = torch.from_numpy(a_len)
    seq_a = greedy_decode(torch.from_numpy(a), la)
    seq_b = greedy_decode(torch.from_numpy(b), la)
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "frame_agreement": float(same_frame.mean()) if same_frame.size else 1.0,
        "sequence_agreement": float(np.mean([x == y for x, y in zip(seq_a, seq_b)])),
    }


# --- checkpoints -----------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, with everything export and inference need."""

    model: nn.Module  # eval mode, CPU
    spec: InputSpec  # cache inputs it was built for
    vocab: tuple[str, ...]  # id -> gloss
    config: dict[str, Any]  # ModelConfig or StudentConfig dict
    input_names: tuple[str, ...]  # model inputs in export order
    preprocess: dict[str, Any]  # what a deployer repeats before the model (see ``preprocess_info``)


def preprocess_info(ckpt: Checkpoint) -> dict[str, Any]:
    """Deployment preprocessing from a checkpoint: RGB resized like the cache, then centre-cropped to the spec."""
    cache_cfg, spec = ckpt.cache_config, ckpt.spec
    info: dict[str, Any] = {}
    if spec.rgb_size:
        info["rgb_resize"] = int(cache_cfg.get("rgb_size") or spec.rgb_size)
        info["rgb_crop"] = spec.rgb_size
    if spec.num_keypoints:
        info["landmark_source"] = str(cache_cfg.get("landmark_source") or "")
    return info


def load_checkpoint_model(path: str | os.PathLike) -> LoadedModel:
    """Rebuild a teacher (``ModelConfig``) or a student (``StudentConfig``: its config has ``kind``, or
    the checkpoint a ``student_config`` entry)."""
    from models.checkpoint import load_model

    model, ckpt = load_model(path)
    return LoadedModel(model, ckpt.spec, ckpt.vocab, ckpt.config, ckpt.input_names, preprocess_info(ckpt))


def cached_inputs(ckpt_path: str | os.PathLike, cache: str | os.PathLike, split: str = "dev",
                  max_utts: int = 16) -> tuple[dict[str, Tensor], Tensor, str]:
    """Up to ``max_utts`` real utterances of a cached split, batched as the model reads them
    (its streams and evaluation crop); returns (inputs, lengths, where they came from)."""
    from models.checkpoint import load_checkpoint
    from models.data import collate

    ds = load_checkpoint(ckpt_path).dataset_split(cache, split)
    if len(ds) == 0:
        raise ValueError(f"{ds.root}: split {split!r} has no cached utterances to compare int8 on; "
                         "pass --compare-split or --cache")
    n = min(max_utts, len(ds))
    inputs, lengths, _, _, _ = collate([ds[i] for i in range(n)])
    return inputs, lengths, f"{n} cached {split} utterances of {ds.dataset}"


def measure_latency(onnx_path: str | os.PathLike, input_names: Sequence[str], spec: InputSpec, frames: int = 128,
                    repeats: int = 20, threads: int = 1) -> dict[str, float]:
    """Median and 90th-percentile milliseconds of one onnxruntime run on a ``frames``-long clip (batch 1)."""
    import time

    sess = ort_session(onnx_path, threads)
    feed = _feed(example_inputs(input_names, spec, [frames], seed=3), torch.tensor([frames]))
    sess.run(list(OUTPUT_NAMES), feed)  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        sess.run(list(OUTPUT_NAMES), feed)
        times.append(1000 * (time.perf_counter() - t0))
    return {"frames": frames, "threads": threads, "repeats": len(times),
            "median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


def machine_info() -> dict[str, Any]:
    """Where the latency was measured."""
    import platform

    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def _run_results(ckpt_path: Path) -> dict[str, Any] | None:
    """WERs of the run the checkpoint belongs to: the ``results.json`` beside it or in a parent run folder."""
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        f = folder / "results.json"
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            table = {}
            for split, r in (data.get("splits") or {}).items():  # distill.train's results
                if isinstance(r, dict) and "wer" in r:
                    table[split] = {k: r[k] for k in ("wer", "sub", "del", "ins", "n_ref") if k in r}
            for label, r in (data.get("wer") or {}).items():  # the demo's table: model -> split -> WER
                if isinstance(r, dict):
                    table[label] = r
            return {"file": str(f), "beam": data.get("beam"), "wer": table} if table else None
    return None


def model_card(ckpt_path: str | os.PathLike, loaded: "LoadedModel", files: Mapping[str, Path],
               latency: Mapping[str, Mapping[str, float]], int8: Mapping[str, Any] | None,
               tflite: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a deployer needs to know about an exported model, as one JSON-able dict."""
    from models.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt_path)
    cache_cfg, train_cfg = state.cache_config, state.train_config
    return {
        "model": Path(ckpt_path).parent.name,
        "checkpoint": str(ckpt_path),
        "epoch": state.epoch,
        "dev_wer_at_selection": state.best,
        "kind": state.kind,
        "config": loaded.config,
        "vocabulary_size": len(loaded.vocab),
        "blank": loaded.vocab[0],
        "inputs": list(loaded.input_names) + ["lengths"],
        "input_spec": {k: getattr(loaded.spec, k) for k in ("num_keypoints", "keypoint_layout", "rgb_size", "flow_size")},
        "preprocessing": loaded.preprocess,
        # landmark selection/normalisation runs inside the graph; these settings say which
        "normalisation": {k: v for k, v in loaded.config.items() if k.startswith("keypoint_") and k != "keypoint_dim"},
        "time_reduction": TIME_REDUCTION,
        "training_data": {"dataset": state.dataset,
                          **{k: cache_cfg[k] for k in ("landmark_source", "rgb_size", "keypoint_layout", "config_hash",
                                                       "flow") if k in cache_cfg}},
        "recipe": state.raw.get("recipe") or {k: train_cfg[k] for k in ("epochs", "batch_size", "lr", "optimizer",
                                                                     "schedule", "level_weights", "rules")
                                          if k in train_cfg},
        "results": _run_results(Path(ckpt_path)),
        "files": {name: {"path": str(p), "bytes": p.stat().st_size} for name, p in files.items()},
        "latency": dict(latency),
        "int8_vs_fp32": dict(int8) if int8 else None,
        "tflite_vs_onnx_fp32": {k: ({kk: vv for kk, vv in v.items() if kk != "path"} if isinstance(v, dict) else v)
                                for k, v in tflite.items()} if tflite else None,
        "machine": machine_info(),
        "exported_by": f"signdistill {_project_version()}",
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card as a short Markdown page."""
    lines = [f"# Model card: {card['model']} ({card['kind']})", "",
             f"- checkpoint: `{card['checkpoint']}` (epoch {card['epoch']}, dev WER at selection "
             f"{card['dev_wer_at_selection'] if card['dev_wer_at_selection'] is not None else 'n/a'})",
             f"- vocabulary: {card['vocabulary_size']} entries, index 0 = `{card['blank']}` (CTC blank)",
             f"- inputs: {', '.join(card['inputs'])}; output steps = frames // {card['time_reduction']}",
             f"- input spec: {json.dumps(card['input_spec'])}",
             f"- preprocessing: {json.dumps(card['preprocessing']) if card['preprocessing'] else 'none'}",
             f"- normalisation: {json.dumps(card['normalisation']) if card['normalisation'] else 'inside the graph'}",
             f"- training data: {json.dumps(card['training_data'])}",
             f"- recipe: {json.dumps(card['recipe'], default=str)}", "", "## Files", "",
             "| file | size |", "|---|---|"]
    lines += [f"| {n}: `{Path(f['path']).name}` | {f['bytes'] / 1e6:.2f} MB |" for n, f in card["files"].items()]
    lines += ["", "## Latency (batch 1; onnxruntime for .onnx, LiteRT for .tflite)", "",
              "| model | frames | threads | median ms | p90 ms |",
              "|---|---|---|---|---|"]
    lines += [f"| {n} | {v['frames']} | {v['threads']} | {v['median_ms']:.2f} | {v['p90_ms']:.2f} |"
              for n, v in card["latency"].items()]
    m = card["machine"]
    lines += ["", f"Measured on {m['cpu']} ({m['cores']} cores), {m['system']}, onnxruntime {m['onnxruntime']}."]
    if card["int8_vs_fp32"]:
        q = card["int8_vs_fp32"]
        lines += ["", "## int8 vs fp32", "", f"On {q['inputs']}: max |logit diff| {q['max_abs_diff']:.3f}, frame argmax "
                  f"agreement {q['frame_agreement']:.1%}, greedy sequence agreement {q['sequence_agreement']:.0%}."]
    if card.get("tflite_vs_onnx_fp32"):
        t = card["tflite_vs_onnx_fp32"]
        lines += ["", "## TFLite (LiteRT) vs ONNX fp32", "", f"On {t['inputs']}:", "",
                  "| model | max abs logit diff | frame argmax agreement | greedy sequence agreement |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {t[k]['max_abs_diff']:.2e} | {t[k]['frame_agreement']:.1%} | {t[k]['sequence_agreement']:.0%} |"
                  for k in ("float32", "int8")]
    res = card["results"]
    lines += ["", "## WER", ""]
    if res:
        lines += [f"From `{res['file']}`" + (f" (beam {res['beam']})" if res.get("beam") else "") + ":", "",
                  "| model / split | WER (%) |", "|---|---|"]
        for name, r in res["wer"].items():
            cells = r.get("wer") if "wer" in r else ", ".join(f"{k} {v:.2f}" for k, v in r.items())
            lines.append(f"| {name} | {cells:.2f} |" if isinstance(cells, float) else f"| {name} | {cells} |")
    else:
        lines.append("No results.json beside the checkpoint; score it with `python -m evaluate.eval`.")
    return "\n".join(lines) + "\n"


def write_model_card(onnx_path: str | os.PathLike, card: Mapping[str, Any]) -> tuple[Path, Path]:
    """``model.onnx`` -> ``model.card.json`` and ``model.card.md`` beside it."""
    from preprocess.files import atomic_write_text

    p = Path(onnx_path)
    js, md = p.with_name(p.stem + ".card.json"), p.with_name(p.stem + ".card.md")
    atomic_write_text(js, json.dumps(card, indent=2, default=str) + "\n")
    atomic_write_text(md, card_markdown(card))
    return js, md


def int8_path_for(onnx_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".int8" + (p.suffix or ".onnx"))


TFLITE_ENV = Path(__file__).resolve().parents[1] / ".venv-tflite"  # built by `make tflite-env`


def tflite_python() -> Path:
    """The interpreter of the isolated TFLite converter environment (``TFLITE_PYTHON`` overrides)."""
    py = Path(os.environ.get("TFLITE_PYTHON") or TFLITE_ENV / "bin" / "python")
    if not py.is_file():
        raise FileNotFoundError(f"{py}: no TFLite converter environment; build it with `make tflite-env` "
                                "(onnx2tf + TensorFlow + LiteRT, about 2.6 GB) or set TFLITE_PYTHON")
    return py


def window_inputs(inputs: Mapping[str, Tensor], lengths: Tensor, frames: int) -> dict[str, np.ndarray]:
    """A padded batch cut or zero-padded to exactly ``frames`` (the static TFLite window); lengths clipped."""
    out = {}
    for name, v in inputs.items():
        a = v.numpy()[:, :frames]
        if a.shape[1] < frames:
            pad = np.zeros((a.shape[0], frames - a.shape[1], *a.shape[2:]), dtype=a.dtype)  # mask False there
            a = np.concatenate([a, pad], axis=1)
        out[name] = a
    out["lengths"] = np.minimum(lengths.numpy(), frames).astype(np.int64)
    return out


def export_tflite(onnx_path: Path, loaded: "LoadedModel", inputs: Mapping[str, Tensor], lengths: Tensor,
                  frames: int = 128, repeats: int = 20) -> dict[str, Any]:
    """Convert the exported landmark model to float32 and int8 ``.tflite`` beside it and check them against
    onnxruntime on ``inputs`` (see ``evaluate.tflite``, run in its own environment); returns its report."""
    import subprocess

    if set(loaded.input_names) != {"keypoints", "keypoints_mask"}:
        raise ValueError(f"TFLite export is for landmark models (keypoints, keypoints_mask); this one takes "
                         f"{', '.join(loaded.input_names)}")
    py = tflite_python()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="tflite-inputs-") as tmp:
        npz = Path(tmp) / "inputs.npz"
        np.savez(npz, **window_inputs(inputs, lengths, frames))
        env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run([str(py), "-m", "evaluate.tflite", "--onnx", str(onnx_path), "--frames", str(frames),
                               "--inputs", str(npz), "--repeats", str(repeats)],
                              cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ValueError(f"{onnx_path}: TFLite conversion failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _checkpoint_cache(ckpt_path: str | os.PathLike) -> str | None:
    """The cache root the checkpoint was trained from, as its training config recorded it."""
    from models.checkpoint import load_checkpoint

    return (load_checkpoint(ckpt_path).raw.get("data_config") or {}).get("cache")


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.2f} MB"


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("evaluate.export"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint (best.pt) of a teacher or a student")
    add_out(parser, "fp32 .onnx file to write", required=True)
    parser.add_argument("--int8", action="store_true", help="also write <out stem>.int8.onnx (dynamic int8)")
    parser.add_argument("--int8-ops", default="auto",
                        help=f"op types to quantise, from {','.join(INT8_ALL_OPS)} (default auto: "
                             f"{','.join(INT8_OPS)}, plus Conv for convolution-heavy models)")
    parser.add_argument("--level", default="main", help="logits level to export (default: main)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch check")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest fp32 logit difference accepted")
    add_cache(parser, "feature cache root whose utterances int8 is compared on "
                      "(default: the one the checkpoint was trained from, if present)")
    parser.add_argument("--compare-split", default="dev", help="cached split int8 is compared on (default dev)")
    parser.add_argument("--compare-utts", type=int, default=16, help="utterances int8 is compared on")
    parser.add_argument("--tflite", action="store_true",
                        help="also write float32 and int8 .tflite (landmark models; needs `make tflite-env`)")
    parser.add_argument("--tflite-frames", type=int, default=128, help="static window of the TFLite graphs")
    parser.add_argument("--no-card", action="store_true", help="skip the model card (and its latency runs)")
    parser.add_argument("--latency-repeats", type=int, default=20, help="timed runs per model for the card")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_checkpoint_model(args.ckpt)
    out = export_onnx(loaded.model, loaded.spec, loaded.vocab, loaded.config, args.out,
                      loaded.input_names, args.opset, args.level, loaded.preprocess)
    print(f"wrote {out} ({_mb(out)}); inputs {', '.join(loaded.input_names)}, lengths; "
          f"outputs {', '.join(OUTPUT_NAMES)}; vocabulary {len(loaded.vocab)}")
    if not args.no_verify:
        diff = verify_onnx(out, loaded.model, loaded.spec, loaded.input_names, level=args.level)
        print(f"onnx.checker ok; onnxruntime vs torch max |logit diff| {diff:.2e}")
        if diff > args.atol:
            print(f"error: {out}: onnxruntime differs from torch by {diff:.2e} > {args.atol:.0e}; "
                  "an op exported wrongly (try another --opset)", file=sys.stderr)
            return 1
    files = {"fp32": out}
    int8_stats = None
    if args.int8:
        ops = None if args.int8_ops == "auto" else tuple(o.strip() for o in args.int8_ops.split(",") if o.strip())
        q = quantize_int8(out, int8_path_for(out), ops)
        ops = ", ".join(f"{k} x{v}" for k, v in quantized_ops(q).items()) or "none"
        print(f"wrote {q} ({_mb(q)}); quantised ops: {ops}")
        cache = args.cache or (_checkpoint_cache(args.ckpt))
        if cache and Path(cache).is_dir():
            inputs, lengths, where = cached_inputs(args.ckpt, cache, args.compare_split, args.compare_utts)
        else:
            lengths = torch.tensor([200, 150])
            inputs = example_inputs(loaded.input_names, loaded.spec, lengths.tolist(), seed=2)
            where = "random inputs (no cache found: pass --cache for real ones)"
        int8_stats = {**compare_int8(out, q, inputs, lengths), "inputs": where}
        print(f"int8 vs fp32 on {where}: max |logit diff| {int8_stats['max_abs_diff']:.3f}, "
              f"frame argmax agreement {int8_stats['frame_agreement']:.1%}, "
              f"greedy sequence agreement {int8_stats['sequence_agreement']:.0%}")
        files["int8"] = q
    tflite = None
    if args.tflite:
        cache = args.cache or _checkpoint_cache(args.ckpt)
        if cache and Path(cache).is_dir():
            inputs, lengths, where = cached_inputs(args.ckpt, cache, args.compare_split, args.compare_utts)
        else:
            lengths = torch.tensor([args.tflite_frames] * 2)
            inputs = example_inputs(loaded.input_names, loaded.spec, lengths.tolist(), seed=2)
            where = "random inputs (no cache found: pass --cache for real ones)"
        tflite = {**export_tflite(out, loaded, inputs, lengths, args.tflite_frames, args.latency_repeats),
                  "inputs": f"{where}, cut to {args.tflite_frames}-frame windows"}
        for kind in ("float32", "int8"):
            r = tflite[kind]
            files[f"tflite {kind}"] = Path(r["path"])
            print(f"wrote {r['path']} ({r['bytes'] / 1e6:.2f} MB); LiteRT vs onnxruntime fp32 on {tflite['inputs']}: "
                  f"max |logit diff| {r['max_abs_diff']:.2e}, frame argmax agreement {r['frame_agreement']:.1%}, "
                  f"greedy sequence agreement {r['sequence_agreement']:.0%}; {r['median_ms']:.2f} ms per "
                  f"{tflite['frames']}-frame window (1 thread)")
    if not args.no_card:
        latency = {name: measure_latency(f, loaded.input_names, loaded.spec, repeats=args.latency_repeats)
                   for name, f in files.items() if f.suffix == ".onnx"}
        for kind in ("float32", "int8") if tflite else ():
            latency[f"tflite {kind}"] = {"frames": tflite["frames"], "threads": 1, "repeats": args.latency_repeats,
                                         "median_ms": tflite[kind]["median_ms"],
                                         "p90_ms": tflite[kind].get("p90_ms", tflite[kind]["median_ms"])}
        js, md = write_model_card(out, model_card(args.ckpt, loaded, files, latency, int8_stats, tflite))
        print(f"model card: {md} (+ {js.name}); latency " + ", ".join(
            f"{n} {v['median_ms']:.2f} ms" for n, v in latency.items()) + f" per {latency['fp32']['frames']}-frame clip")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
