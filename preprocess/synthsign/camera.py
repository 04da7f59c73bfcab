"""The camera: degrades the painted frames (blur, flicker, sensor noise, JPEG) and writes the mp4."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from preprocess.synthsign.config import SynthConfig
from preprocess.synthsign.painter import Painter, background
from preprocess.synthsign.signer import Signer


class Camera:
    """Video degradation scaled by difficulty: blur, flicker of illumination, sensor noise, JPEG."""

    def __init__(self, difficulty: float, size: int, rng: np.random.Generator, t: int) -> None:
        self.d = difficulty
        self.blur = 0.9 * difficulty * size / 128
        walk = np.cumsum(rng.normal(size=(t, 2)), 0) / np.sqrt(np.arange(1, t + 1))[:, None]
        self.gain = 1 + 0.12 * difficulty * np.tanh(walk[:, 0])
        self.bias = 12 * difficulty * np.tanh(walk[:, 1])
        self.quality = int(95 - 50 * difficulty)
        # Sensor noise: one field per utterance, a random window of it per frame (cheap).
        self.margin = 32
        bank = rng.normal(0.0, 6.0 * difficulty, size=(size + self.margin, size + self.margin, 3))
        self.noise = np.round(bank).astype(np.int16)
        self.offsets = rng.integers(0, self.margin, size=(t, 2))
        self.size = size

    def __call__(self, img: np.ndarray, i: int) -> np.ndarray:
        if self.d <= 0:
            return img
        if self.blur > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), self.blur)
        img = cv2.convertScaleAbs(img, alpha=float(self.gain[i]), beta=float(self.bias[i]))
        oy, ox = self.offsets[i]
        img = cv2.add(img, self.noise[oy:oy + self.size, ox:ox + self.size], dtype=cv2.CV_8U)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else img


def render_video(path: Path, kp_clean: np.ndarray, signer: Signer, cfg: SynthConfig,
                 rng: np.random.Generator) -> None:
    """Write the mp4 (mp4v) of one utterance: frame t is drawn from kp_clean[t]."""
    size = cfg.frame_size
    bg = background(rng, size, [signer.shirt, signer.skin])
    painter = Painter(signer, size, kp_clean)
    camera = Camera(cfg.difficulty, size, rng, len(kp_clean))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(cfg.fps), (size, size), True)
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an mp4v writer; check the opencv-contrib-python install")
    try:
        for i in range(len(kp_clean)):
            img = bg.copy()
            painter.draw(img, i)
            writer.write(camera(img, i))
    finally:
        writer.release()
