"""Deployment inference: a video file or a webcam -> gloss sequence, from an exported model or a checkpoint.

``python -m evaluate.infer --model model.onnx --video clip.mp4 [--beam 10]`` decodes a whole
video offline (MediaPipe Holistic for landmark models, resize + centre crop for RGB models).

``python -m evaluate.infer --model model.onnx --webcam 0`` runs live: OpenCV capture (its own
thread) -> MediaPipe Holistic per frame -> a sliding window over the landmark sequence, run
through the landmark model every ``hop`` frames -> CTC decoding -> glosses printed as they
become final. ``--video clip.mp4 --stream`` feeds a file frame by frame through the very same
loop, which is how the live path is tested without a camera.

MediaPipe is nearly the whole cost of live recognition (40-70 ms of one core per frame on this
CPU, whatever the input size; the int8 model needs ~3 ms per 128-frame window, run every
``hop`` frames) and one Holistic graph keeps one core busy, so ``--workers`` graphs (default:
one per core, at most 2) run on threads and take the frames round-robin, each tracking across
its own frames. Measured on the ten ../shared/clips, two graphs give detection rates within
0.03 of one graph's, with mean landmark offsets of ~1e-3 of the frame for pose and face and a
few 1e-3 for hands.

The pieces live in ``evaluate.live``: ``runtime`` (ONNX/PyTorch models behind one interface),
``offline`` (a whole clip), ``capture`` (camera/file frames), ``mediapipe_pool`` (graphs on
threads) and ``window`` (the sliding window and the live loop); this module is the command
line and re-exports their public names.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from evaluate.live.capture import capture_frames, prefetch
from evaluate.live.mediapipe_pool import FrameExtractor, HolisticWorkers, Landmarks, default_workers, extract_landmarks
from evaluate.live.offline import VideoResult, VideoTooLong, hand_rate, recognize_video, video_inputs, write_timed
from evaluate.live.runtime import (
    OnnxRecognizer,
    Recognizer,
    TorchRecognizer,
    decode,
    load_recognizer,
    require_landmark_model,
    require_mediapipe_layout,
    timed_output,
)
from evaluate.live.window import LandmarkStream, StreamConfig, StreamStats, StreamUpdate, fps_report, stream_glosses
from preprocess.commandline import command, prog

__all__ = [
    "FrameExtractor", "HolisticWorkers", "LandmarkStream", "Landmarks", "OnnxRecognizer", "Recognizer",
    "StreamConfig", "StreamStats", "StreamUpdate", "TorchRecognizer", "VideoResult", "VideoTooLong",
    "capture_frames", "decode", "default_workers", "extract_landmarks", "fps_report", "hand_rate",
    "load_recognizer", "main", "prefetch", "recognize_video", "require_landmark_model",
    "require_mediapipe_layout", "stream_glosses", "timed_output", "video_inputs", "write_timed",
]


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("evaluate.infer"), description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="exported .onnx model (vocabulary and config inside)")
    model.add_argument("--ckpt", help="checkpoint (best.pt), run with PyTorch")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="video file or frame folder")
    source.add_argument("--webcam", type=int, metavar="INDEX", help="camera index for live recognition (OpenCV)")
    parser.add_argument("--stream", action="store_true", help="run --video through the live sliding-window loop")
    parser.add_argument("--beam", type=int, default=10,
                        help="beam width (1: greedy); live windows decode greedily, and with this beam at the "
                             "end when the window covered the whole stream")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the model (default 1)")
    parser.add_argument("--window", type=int, default=StreamConfig.window, help="live: frames per model run")
    parser.add_argument("--hop", type=int, default=StreamConfig.hop, help="live: frames between model runs")
    parser.add_argument("--guard", type=int, default=StreamConfig.guard, help="live: left-context frames")
    parser.add_argument("--max-frames", type=int, default=None, help="live: stop after this many frames")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="live: MediaPipe graphs on parallel threads, frames dealt round-robin "
                             "(default: CPU cores, at most 2)")
    parser.add_argument("--frames-per-second-report", action="store_true",
                        help="print frames/s and the time per stage (live: also every model run)")
    parser.add_argument("--json", metavar="FILE", help="offline: write [{gloss, start_s, end_s, score}] to FILE")
    parser.add_argument("--ctm", metavar="FILE", help="offline: write the timed glosses as a CTM to FILE")
    parser.add_argument("--overlay", metavar="OUT.mp4",
                        help="offline: write the clip with the landmarks drawn and the glosses as timed captions")
    t_start = time.perf_counter()
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's start-up chatter
    try:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        offline_only = [f"--{n}" for n in ("json", "ctm", "overlay") if getattr(args, n)]
        if offline_only and (args.video is None or args.stream):
            raise ValueError(f"{', '.join(offline_only)} need offline decoding of a file: use --video without --stream")
        if args.video is None or args.stream:
            return _live(args, t_start)
        rec = load_recognizer(args.model or args.ckpt, args.threads)
        startup = time.perf_counter() - t_start
        res = recognize_video(args.video, rec, beam=args.beam)
        print(" ".join(res.glosses) if res.glosses else "(no gloss recognised)")
        if res.hand_rate == 0.0:
            print(f"warning: {args.video}: no hand was found on any of its {res.frames} frames; the glosses "
                  "above come from face and body alone (check the hands are in view and lit)", file=sys.stderr)
        write_timed(res, args.video, args.json, args.ctm)
        if args.overlay:
            from preprocess.render import write_overlay

            write_overlay(args.video, args.overlay, res.timed, res.landmarks)
            print(f"overlay: {args.overlay}", file=sys.stderr)
        seconds = {"start-up": startup, **res.seconds}
        total = sum(seconds.values())
        print("time: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in seconds.items())
              + f"; {res.frames} frames, {res.frames / total:.1f} frames/s end to end (start-up included), "
              f"decoder {'greedy' if args.beam <= 1 else f'beam {args.beam}'}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 0


def _live(args: argparse.Namespace, t_start: float) -> int:
    """``--webcam`` / ``--stream``: the live loop, glosses printed as they become final.

    The MediaPipe graphs are built and warmed up on their own threads first, so their start-up
    overlaps loading the model and opening the camera; ``t_start`` (when the command began)
    is where the reported start-up is counted from.
    """
    graphs = HolisticWorkers(args.workers, warm_up=True)
    try:
        rec = load_recognizer(args.model or args.ckpt, args.threads)
        cfg = StreamConfig(args.window, args.hop, args.guard)
        require_landmark_model(rec)
        require_mediapipe_layout(rec)
        source = args.webcam if args.webcam is not None else args.video
        frames = prefetch(capture_frames(source, args.max_frames), keep_latest=args.webcam is not None)
        stats = StreamStats()
        update = StreamUpdate(0, [], [], [])
        updates = stream_glosses(frames, graphs.extractors, rec, cfg, stats, beam=args.beam, started=t_start)
        try:
            for update in updates:
                if update.new:
                    print(" ".join(update.new), flush=True)
                if args.frames_per_second_report and not update.final:
                    print(f"[{update.frame} frames, {stats.fps:.1f} fps] tentative: {' '.join(update.tentative)}",
                          file=sys.stderr, flush=True)
        except KeyboardInterrupt:  # Ctrl+C ends a webcam session: keep what was recognised
            update = StreamUpdate(update.frame, update.committed + update.tentative, [], [], final=True)
        finally:
            updates.close()  # joins the landmark threads before their graphs are closed
    finally:
        graphs.close()
    print("glosses: " + (" ".join(update.committed) or "(none)"))
    if stats.frames and stats.hand_frames == 0:
        print(f"warning: no hand was found on any of the {stats.frames} frames; the glosses above come from "
              "face and body alone (check the hands are in view and lit)", file=sys.stderr)
    if stats.frames <= cfg.window and args.beam > 1:
        how = f"the whole clip in one window, beam {args.beam}: offline decoding's settings"
    elif args.beam > 1:
        how = (f"greedy over {cfg.window}-frame windows: the {stats.frames}-frame stream is longer than the window, "
               f"so offline --beam {args.beam} may differ (--window {stats.frames} decodes it as offline does)")
    else:
        how = "greedy, " + ("the whole clip in one window" if stats.frames <= cfg.window
                            else f"over {cfg.window}-frame windows")
    print(f"decoder: {how}; landmarks from {stats.workers} MediaPipe graph(s)", file=sys.stderr)
    if args.frames_per_second_report:
        print(fps_report(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

