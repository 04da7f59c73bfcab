"""What every command shares: the ``--cache``/``--out``/``--device`` options and the one error wrapper.

Each stage keeps its own parser in its module's ``main(argv)`` (so ``python -m <module>`` and the
``signdistill <command>`` dispatcher run the same code); the options every stage has are defined
here once, so they are spelled, typed and documented the same way everywhere.

:func:`command` wraps a ``main``: bad input becomes one ``error: ...`` line on stderr and exit
status 2, while a bug keeps its traceback. Bad input is

- a :class:`~preprocess.configs.UserError` (config, video, keypoint file, cache, device, a write
  that failed for want of disk space, ...);
- an ``OSError`` that names a file (missing, no permission): the system's message names the
  path the user gave;
- a ``ValueError`` or ``OSError`` raised by a ``raise`` statement in this project's own code: the
  input checks written as plain ``ValueError``/``FileNotFoundError`` (torchaudio style) say what
  is wrong with which value or file.

A ``KeyError``, ``TypeError`` or ``IndexError``, and a ``ValueError`` raised inside a library
(numpy, torch, ...) or by a builtin call, are bugs and are not caught.
"""
from __future__ import annotations

import argparse
import functools
import linecache
from typing import Callable, Sequence

from preprocess.configs import UserError, print_user_error
from preprocess.device import DEVICE_CHOICES, is_device_name

PACKAGES = ("preprocess", "models", "distill", "evaluate")  # the project's top-level packages

Main = Callable[[Sequence[str] | None], int]
invoked_as: str | None = None  # "signdistill <command>" while the dispatcher runs a command


def prog(module: str) -> str:
    """The name a command's usage line shows: ``signdistill <command>``, or ``python -m <module>``."""
    return invoked_as or f"python -m {module}"


def command(main: Main) -> Main:
    """Decorate a command's ``main(argv) -> exit status``: bad input is one line and exit 2."""

    @functools.wraps(main)
    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except (UserError, OSError, ValueError) as e:
            if not is_user_error(e):
                raise
            return print_user_error(e)

    return run


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is bad input the user can fix (see the module docstring), not a bug."""
    if isinstance(e, UserError):
        return True
    if isinstance(e, OSError) and e.filename is not None:
        return True
    if not isinstance(e, (ValueError, OSError)) or e.__traceback__ is None:
        return False
    tb = e.__traceback__
    while tb.tb_next is not None:  # the frame that raised it
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    ours = module == "__main__" or module.split(".")[0] in PACKAGES
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip()
    return ours and line.startswith("raise")


def device_arg(text: str) -> str:
    """argparse ``type`` of a device option: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; choose one of {', '.join(DEVICE_CHOICES)} "
                                         "(or cuda:N)")
    return text


def add_device(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "device to run on",
               default: str | None = "auto", flag: str = "--device", dest: str | None = None) -> None:
    """``--device`` (``auto``: CUDA when a GPU is visible, else CPU); resolved by ``resolve_device``."""
    p.add_argument(flag, dest=dest or flag.lstrip("-").replace("-", "_"), default=default, type=device_arg,
                   metavar="{" + ",".join(DEVICE_CHOICES) + ",cuda:N}",
                   help=what + (f" (default {default}; " if default is not None else " (")
                   + "auto: CUDA when a GPU is visible, else CPU)")


def add_cache(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "feature cache root",
              default: str | None = None, required: bool = False) -> None:
    """``--cache``: the feature-cache root (``<cache>/<dataset>/...``, written by ``features``)."""
    p.add_argument("--cache", default=default, required=required, metavar="DIR",
                   help=what + (f" (default {default})" if default is not None else ""))


def add_out(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str, default: str | None = None,
            required: bool = False) -> None:
    """``--out``: where the command writes its result (a folder or a file, said by ``what``)."""
    p.add_argument("--out", default=default, required=required, metavar="PATH",
                   help=what + (f" (default {default})" if default is not None else ""))
