"""The one place a ``--device`` choice becomes a ``torch.device``.

Every entry point that runs torch code (training, distillation, evaluation, RAFT flow, the
benchmarks) resolves its device here, so ``--device cuda`` on a machine without a GPU fails
the same way everywhere: one line saying what is missing and what to pass instead, before any
work starts.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from preprocess.configs import UserError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def is_device_name(text: str) -> bool:
    """Whether ``text`` is a device :func:`resolve_device` takes: one of DEVICE_CHOICES or ``cuda:N``."""
    return bool(_NAME.fullmatch(text))


class DeviceError(UserError):
    """The requested device is unknown or not present on this machine."""


def resolve_device(name: "str | torch.device", what: str = "--device") -> "torch.device":
    """``auto`` -> cuda when visible else cpu; ``cuda``/``cuda:N`` only when that GPU is visible.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.
        what: the option named in the error message (e.g. ``--flow-device``).

    Raises:
        DeviceError (a ValueError): one line naming the option and the fix.
    """
    import torch

    text = str(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{what} {text!r} is not a device; choose one of {DEVICE_CHOICES} (or cuda:N)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"{what} {text!r}: only {DEVICE_CHOICES} (or cuda:N) are supported")
    if not torch.cuda.is_available():
        raise DeviceError(f"{what} {text}: no CUDA GPU is visible on this machine "
                          "(torch.cuda.is_available() is False); use --device cpu or --device auto")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise DeviceError(f"{what} {text}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1}); "
                          "pick one of those or use --device cuda")
    return dev
