"""A local web page for sign recognition: upload a clip (or record one with the webcam), see the
glosses with their times and the clip annotated with its skeleton and captions.

    python -m evaluate.serve --model exp/demo/student/model.onnx [--port 8000] [--max-seconds 60]

FastAPI + uvicorn serve one static HTML page and a JSON endpoint. Gradio would give a page for
free but pulls in a large front-end stack and a websocket protocol a browser test has to wait
on; one HTML page with a plain ``fetch`` is small, has no build step and is driven by a headless
browser like any page. Recognition is ``evaluate.infer.recognize_video`` and the annotated
video is ``preprocess.render.write_overlay``, the same code as the command line.

Bad input never stops the server: a file that is not a video, a clip over the length limit, an
upload over the size limit or a clip with no person gives a one-line message on the page (and
a 4xx status on the API). One clip is recognised at a time (MediaPipe and the model already use
the CPU's cores); later requests wait their turn.
"""

import argparse
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preprocess.commandline import command, prog
from preprocess.configs import UserError

PAGE = Path(__file__).with_name("web") / "index.html"
SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")  # an upload's extension kept on the temp file (decoders sniff it)


@dataclass(frozen=True)
class ServeConfig:
    model: str  # .onnx (or a checkpoint)
    beam: int = 10  # decoding beam (1: greedy)
    max_seconds: float = 60.0  # longest clip accepted
    max_mb: float = 200.0  # largest upload accepted
    threads: int = 1  # model intra-op threads
    keep_results: int = 20  # annotated videos kept on disk (oldest removed first)

    def __post_init__(self) -> None:
        if self.max_seconds <= 0 or self.max_mb <= 0:
            raise ValueError(f"limits must be > 0, got --max-seconds {self.max_seconds} --max-mb {self.max_mb}")
        if self.beam < 1 or self.threads < 1 or self.keep_results < 1:
            raise ValueError("--beam, --threads and --keep-results must be >= 1")


# FFmpeg reads any text file as an "ANSI art" video (format tty) and a few other byte streams as
# text-mode pictures; an upload in one of these is not a clip of a signer.
TEXT_FORMATS = frozenset({"tty", "bin", "xbin", "adf", "idf"})
TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})


def check_video(path: Path, name: str) -> None:
    """Raise :class:`BadInput` unless ``path`` holds a video stream FFmpeg decodes as pictures."""
    import av

    why = None
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                why = "it has no video stream"
            elif c.format.name in TEXT_FORMATS or c.streams.video[0].codec_context.name in TEXT_CODECS:
                why = "it is text, not video"
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        why = str(e).split(": '")[0]
    if why:
        raise BadInput(f"{name}: not a video that can be read ({why}); upload an mp4, webm or mov clip", 415)


class BadInput(Exception):
    """An upload the page explains instead of recognising; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Recognition:
    """The model, one lock and a results folder shared by all requests."""

    def __init__(self, cfg: ServeConfig, results: Path) -> None:
        from evaluate.infer import load_recognizer

        self.cfg = cfg
        self.rec = load_recognizer(cfg.model, cfg.threads)
        self.results = results
        self.lock = threading.Lock()

    def __call__(self, upload: Path, filename: str) -> dict[str, Any]:
        """Recognise one uploaded clip; returns the page's JSON, or raises :class:`BadInput`."""
        from evaluate.infer import VideoTooLong, recognize_video
        from preprocess.landmarks import NoPersonError
        from preprocess.render import write_overlay
        from preprocess.video import VideoError

        def clean(e: Exception) -> str:  # the user knows their file by its name, not our temp path
            return str(e).replace(str(upload), filename)

        check_video(upload, filename)
        with self.lock:
            t0 = time.perf_counter()
            try:
                res = recognize_video(upload, self.rec, beam=self.cfg.beam, max_seconds=self.cfg.max_seconds)
            except VideoTooLong as e:
                raise BadInput(clean(e), 413) from None
            except VideoError as e:
                raise BadInput(f"{filename}: not a video that can be read ({clean(e).split(': ', 1)[-1]}); "
                               "upload an mp4, webm or mov clip", 415) from None
            except NoPersonError:
                raise BadInput(f"{filename}: no person was found in the clip; film the signer from the front, "
                               "upper body in view", 422) from None
            except ValueError as e:  # e.g. a model that needs optical flow
                raise BadInput(clean(e), 422) from None
            key = uuid.uuid4().hex[:16]
            out = self.results / f"{key}.mp4"
            write_overlay(upload, out, res.timed, res.landmarks)
            self._prune()
            warning = None
            if res.hand_rate == 0.0:
                warning = "no hand was found on any frame: the glosses come from face and body alone"
            return {"file": filename, "glosses": res.glosses, "timed": res.timed, "frames": res.frames,
                    "fps": res.fps, "seconds": round(time.perf_counter() - t0, 2), "video": f"/results/{key}.mp4",
                    "warning": warning, "model": Path(self.cfg.model).name,
                    "decoder": "greedy" if self.cfg.beam <= 1 else f"beam {self.cfg.beam}"}

    def _prune(self) -> None:
        files = sorted(self.results.glob("*.mp4"), key=lambda p: p.stat().st_mtime)
        for p in files[: max(0, len(files) - self.cfg.keep_results)]:
            p.unlink(missing_ok=True)


def create_app(cfg: ServeConfig, results: Path | None = None):
    """The FastAPI app: ``/`` the page, ``POST /api/recognize`` a clip, ``/results/<id>.mp4`` its overlay."""
    from fastapi import FastAPI, File, HTTPException, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    results = Path(results) if results else Path(tempfile.mkdtemp(prefix="signdistill-serve-"))
    results.mkdir(parents=True, exist_ok=True)
    recognise = Recognition(cfg, results)
    app = FastAPI(title="signdistill", docs_url=None, redoc_url=None)
    limit = int(cfg.max_mb * 1e6)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"model": Path(cfg.model).name, "vocabulary": len(recognise.rec.vocab) - 1,
                "max_seconds": cfg.max_seconds, "max_mb": cfg.max_mb}

    @app.post("/api/recognize")
    def recognize(file: UploadFile = File(...)):  # sync: runs on the server thread pool (annotations evaluated, no __future__ import)
        name = Path(file.filename or "upload").name
        suffix = Path(name).suffix.lower()
        with tempfile.TemporaryDirectory(prefix="upload-") as tmp:
            path = Path(tmp) / ("clip" + (suffix if SUFFIX.fullmatch(suffix) else ""))
            try:
                size = _save(file, path, limit)
                if size == 0:
                    raise BadInput(f"{name}: the file is empty", 400)
                if size > limit:
                    raise BadInput(f"{name}: over the {cfg.max_mb:g} MB upload limit", 413)
                return recognise(path, name)
            except BadInput as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.get("/results/{name}")
    def result(name: str):
        path = results / name
        if not re.fullmatch(r"[0-9a-f]{16}\.mp4", name) or not path.is_file():
            raise HTTPException(404, "no such result (results are kept for the last few clips)")
        return FileResponse(path, media_type="video/mp4")

    return app


def _save(file, path: Path, limit: int) -> int:
    """Copy the upload to ``path``, stopping one chunk past ``limit``; returns the bytes seen."""
    size = 0
    with open(path, "wb") as f:
        while chunk := file.file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                break
            f.write(chunk)
    return size


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("evaluate.serve"), description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="exported .onnx model (or a checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--beam", type=int, default=ServeConfig.beam, help="prefix beam width (1: greedy)")
    p.add_argument("--max-seconds", type=float, default=ServeConfig.max_seconds, help="longest clip accepted")
    p.add_argument("--max-mb", type=float, default=ServeConfig.max_mb, help="largest upload accepted")
    p.add_argument("--threads", type=int, default=ServeConfig.threads, help="model intra-op threads")
    p.add_argument("--results", help="folder for the annotated videos (default: a temporary folder)")
    args = p.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        raise UserError("the web page needs the serve extra: pip install -e '.[serve]'") from None
    cfg = ServeConfig(args.model, args.beam, args.max_seconds, args.max_mb, args.threads)
    app = create_app(cfg, Path(args.results) if args.results else None)
    print(f"serving {args.model} on http://{args.host}:{args.port}/ (Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
