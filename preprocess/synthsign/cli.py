"""``python -m preprocess.synthsign``: generate a corpus from a preset, a YAML file and field overrides."""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any

from preprocess.commandline import add_out, command, prog
from preprocess.synthsign.config import PRESETS, SynthConfig, preset
from preprocess.synthsign.writer import generate, is_complete


def _load_yaml_config(path: str) -> dict[str, Any]:
    from preprocess.configs import check_keys, load_yaml

    data = load_yaml(path, "synthsign config")
    check_keys(data, {f.name for f in fields(SynthConfig)} | {"preset"}, str(path), "synthsign fields")
    return data


@command
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog("preprocess.synthsign"),
                                 description="Generate the synthsign corpus (videos + MediaPipe-layout keypoints).")
    add_out(ap, "output folder", default="data/synthsign")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="size preset (default: default)")
    ap.add_argument("--config", help="YAML file of SynthConfig fields (may name a preset)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in fields(SynthConfig):
        ap.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=None,
                        help=f"override SynthConfig.{f.name} (default {f.default})")
    args = ap.parse_args(argv)
    values: dict[str, Any] = _load_yaml_config(args.config) if args.config else {}
    name = args.preset or values.pop("preset", None) or "default"
    values.pop("preset", None)
    values.update({f.name: getattr(args, f.name) for f in fields(SynthConfig)
                   if getattr(args, f.name) is not None})
    cfg = preset(name, **values)
    if is_complete(args.out, cfg):
        print(f"synthsign: {args.out} is up to date ({cfg.num_train + cfg.num_dev + cfg.num_test} utterances)")
        return 0
    out = generate(cfg, args.out, progress=not args.quiet)
    stats = json.loads((out / "synthsign.json").read_text(encoding="utf-8"))["stats"]
    print(f"synthsign: wrote {out}: {stats['utterances']}, {stats['frames_total']} frames "
          f"(mean {stats['frames_mean']}), hands detected R {stats['right_hand_detected']:.1%} "
          f"L {stats['left_hand_detected']:.1%}, {stats['seconds']} s")
    return 0

