"""TFLite (LiteRT) export of an exported landmark model, run inside its own environment.

    make tflite-env                                   # once: .venv-tflite (about 2.6 GB)
    python -m evaluate.export --ckpt best.pt --out model.onnx --tflite

The converters cannot share the project's environment: litert-torch caps torch below the pinned
2.14, and onnx2tf needs TensorFlow, whose numpy/onnx pins differ from ours. So
``evaluate.export --tflite`` hands the finished ONNX file to this module in ``.venv-tflite``
(``TFLITE_PYTHON`` overrides the interpreter), which imports nothing from the project:

1. onnxsim fixes the input shapes (batch 1, a ``--frames`` window: TFLite graphs are static;
   the live recogniser runs fixed windows anyway) and folds the shape arithmetic;
2. onnx2tf converts it (inputs kept in their NTC layout; Erf, which has no TFLite builtin,
   replaced by builtins) to a float32 model and a dynamic-range int8 one (int8 weights, float
   activations: the same scheme as the int8 ONNX model, no calibration set);
3. both are run by the LiteRT interpreter on the inputs ``export`` gives (real cached
   utterances cut to the window) and compared with onnxruntime on the ONNX model: largest
   |logit| difference, frame argmax agreement, greedy sequence agreement; plus size and latency.
The report is one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from preprocess.commandline import command, prog
from preprocess.configs import UserError

OUTPUTS = ("logits", "out_lengths")
INPUT_ARRAYS = ("keypoints", "keypoints_mask", "lengths")  # what --inputs holds


class ConversionError(UserError):
    """onnx2tf did not write a model; its log, printed above, says which op it refused."""


def _greedy(logits: np.ndarray, n: int) -> list[int]:
    best = logits[:n].argmax(-1).tolist()
    return [c for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]


def convert(onnx_path: Path, out_dir: Path, frames: int) -> dict[str, Path]:
    """``model.onnx`` -> ``{"float32": model.float32.tflite, "int8": model.int8.tflite}`` in ``out_dir``."""
    import onnx
    from onnxsim import simplify  # before TensorFlow is loaded: onnxsim crashes in a process that has it

    model = onnx.load(str(onnx_path))
    names = [i.name for i in model.graph.input]
    shapes = {}
    for i in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else None for d in i.type.tensor_type.shape.dim]
        fixed = [1, frames, *dims[2:]] if len(dims) >= 2 else [1]
        if any(d is None for d in fixed):
            raise ValueError(f"{onnx_path}: input {i.name} has unknown sizes {dims} beyond batch and time")
        shapes[i.name] = fixed
    static, ok = simplify(model, overwrite_input_shapes=shapes)
    if not ok:
        raise ValueError(f"{onnx_path}: onnxsim could not check the fixed-shape graph")
    stem = onnx_path.name[: -len(".onnx")] if onnx_path.name.endswith(".onnx") else onnx_path.stem
    import onnx2tf

    with tempfile.TemporaryDirectory(prefix="onnx2tf-") as tmp:
        fixed_path = Path(tmp) / f"{stem}.onnx"
        onnx.save(static, str(fixed_path))
        work = Path(tmp) / "out"
        onnx2tf.convert(input_onnx_file_path=str(fixed_path), output_folder_path=str(work),
                        keep_shape_absolutely_input_names=names, output_dynamic_range_quantized_tflite=True,
                        replace_to_pseudo_operators=["erf"], non_verbose=True)  # lower-case, as its CLI passes it
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {"float32": out_dir / f"{stem}.float32.tflite", "int8": out_dir / f"{stem}.int8.tflite"}
        for kind, src in (("float32", work / f"{stem}_float32.tflite"),
                          ("int8", work / f"{stem}_dynamic_range_quant.tflite")):
            if not src.is_file():
                raise ConversionError(f"onnx2tf wrote no {src.name}; see its log above")
            shutil.copyfile(src, files[kind])
    return files


class LiteRTModel:
    """A .tflite model under the LiteRT interpreter, fed by input name."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.inputs = {d["name"].removeprefix("serving_default_").split(":")[0]: d for d in self.it.get_input_details()}
        outs = self.it.get_output_details()
        # logits are the 3-d output, out_lengths the 1-d one (onnx2tf renames them)
        self.logits = next(d["index"] for d in outs if len(d["shape"]) == 3)
        self.lengths = next(d["index"] for d in outs if len(d["shape"]) == 1)

    def __call__(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        for name, d in self.inputs.items():
            self.it.set_tensor(d["index"], np.ascontiguousarray(feed[name]).astype(d["dtype"]))
        self.it.invoke()
        return self.it.get_tensor(self.logits).copy(), self.it.get_tensor(self.lengths).copy()


def check(onnx_path: Path, files: dict[str, Path], inputs: dict[str, np.ndarray], repeats: int = 20) -> dict:
    """LiteRT vs onnxruntime, one batch row at a time (the TFLite graphs take batch 1)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    rows = len(inputs["lengths"])
    refs = [sess.run(list(OUTPUTS), {k: v[b:b + 1] for k, v in inputs.items()}) for b in range(rows)]
    report: dict = {"rows": rows, "frames": int(inputs["keypoints"].shape[1])}
    for kind, path in files.items():
        m = LiteRTModel(path)
        diffs, same, total, seq_same = [], 0, 0, 0
        for b, (ref, ref_len) in enumerate(refs):
            got, _ = m({k: v[b:b + 1] for k, v in inputs.items()})
            n = int(ref_len[0])
            diffs.append(float(np.abs(got[0, :n] - ref[0, :n]).max()))
            same += int((got[0, :n].argmax(-1) == ref[0, :n].argmax(-1)).sum())
            total += n
            seq_same += _greedy(got[0], n) == _greedy(ref[0], n)
        one = {k: v[:1] for k, v in inputs.items()}
        m(one)  # warm-up
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            m(one)
            times.append(1000 * (time.perf_counter() - t0))
        report[kind] = {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": max(diffs),
                        "frame_agreement": same / max(total, 1), "sequence_agreement": seq_same / rows,
                        "median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)), "threads": 1}
    return report


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("evaluate.tflite"), description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="exported landmark model (evaluate.export)")
    p.add_argument("--out-dir", help="folder for the .tflite files (default: beside the .onnx)")
    p.add_argument("--frames", type=int, default=128, help="the static window the TFLite graphs take")
    p.add_argument("--inputs", help=".npz of keypoints [B, frames, K, 3], keypoints_mask, lengths (for the check)")
    p.add_argument("--convert-only", action="store_true", help="convert and print the files; no check")
    p.add_argument("--repeats", type=int, default=20, help="timed LiteRT runs per model")
    args = p.parse_args(argv)
    if not args.convert_only and not args.inputs:
        p.error("give --inputs (the arrays the check runs on), or --convert-only")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    onnx_path = Path(args.onnx)
    out_dir = Path(args.out_dir) if args.out_dir else onnx_path.parent
    if args.convert_only:
        files = convert(onnx_path, out_dir, args.frames)
        print(json.dumps({k: str(v) for k, v in files.items()}))
        return 0
    data = dict(np.load(args.inputs))
    missing = [k for k in INPUT_ARRAYS if k not in data]
    if missing:
        raise UserError(f"{args.inputs}: no array(s) {missing}; it needs {list(INPUT_ARRAYS)}")
    if data["keypoints"].shape[1] != args.frames:
        raise ValueError(f"{args.inputs}: inputs have {data['keypoints'].shape[1]} frames, not --frames {args.frames}")
    # convert in a child process: a process that loaded TensorFlow would run TF ops (Flex) that
    # the LiteRT interpreter on a phone does not have, so the check here must never load it
    proc = subprocess.run([sys.executable, "-m", "evaluate.tflite", "--convert-only", "--onnx", str(onnx_path),
                           "--out-dir", str(out_dir), "--frames", str(args.frames)],
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise ConversionError(f"{onnx_path}: conversion failed (exit {proc.returncode}); see the log above")
    files = {k: Path(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    report = check(onnx_path, files, data, args.repeats)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
