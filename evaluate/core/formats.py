"""Reading and writing hypothesis/reference files: NIST CTM and STM, or plain `id gloss ...` text.

CTM (hypotheses): `file channel start duration word [confidence]`, one word a line.
STM (references): `file channel speaker start end [<label>] words...`, one segment a line.
Both allow `;;` comment lines. The format is detected from the content, so users never have to
say which one they pass; a malformed line is reported with its file and line number.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from preprocess.configs import UserError
from preprocess.files import atomic_write_text

CTM_STEP = 0.01  # synthetic duration of one gloss in a written CTM (glosses are 0.01 s apart)
STM_END = "1.79769e+308"  # segment end used by the official PHOENIX STMs ("until the end")
IGNORE_SEGMENT = "IGNORE_TIME_SEGMENT_IN_SCORING"  # sclite's marker for a segment not scored


class FormatError(UserError):
    """A malformed hypothesis/reference file; the message is `<file>:<line>: <problem>`."""


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _data_lines(path: Path) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank, non-comment line."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the first id
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith(";;"):
            continue
        yield no, s.split()


_CHANNEL = re.compile(r"^(\d+|[A-Za-z])$")  # CTM/STM channel field: "1", "A", ...


def _looks_ctm(f: list[str]) -> bool:
    return (
        len(f) in (5, 6)
        and bool(_CHANNEL.match(f[1]))
        and _is_float(f[2])
        and _is_float(f[3])
        and (len(f) == 5 or _is_float(f[5]))
    )


def _looks_stm(f: list[str]) -> bool:
    return len(f) >= 5 and bool(_CHANNEL.match(f[1])) and _is_float(f[3]) and _is_float(f[4])


def detect_format(path: str | os.PathLike, probe: int = 100) -> str:
    """'ctm', 'stm' or 'text': the format most of the first `probe` data lines have.

    Judging by a majority rather than the first line means a CTM whose first line is broken is
    still read as a CTM, so the broken line is reported with its number instead of the whole file
    silently being read as text.
    """
    n = n_ctm = n_stm = 0
    for _, f in _data_lines(Path(path)):
        n += 1
        n_ctm += _looks_ctm(f)
        n_stm += _looks_stm(f)
        if n >= probe:
            break
    if n and n_ctm * 2 > n and n_ctm >= n_stm:
        return "ctm"
    if n and n_stm * 2 > n:
        return "stm"
    return "text"


def read_ctm(path: str | os.PathLike) -> dict[str, list[str]]:
    """Words per file id, ordered by start time (ties keep file order), ids in file order."""
    path = Path(path)
    words: dict[str, list[tuple[float, int, str]]] = {}
    for no, f in _data_lines(path):
        where = f"{path}:{no}"
        if len(f) not in (5, 6):
            raise FormatError(
                f"{where}: a CTM line has 5 or 6 fields (id channel start duration gloss [conf]), "
                f"got {len(f)}: {' '.join(f)!r}"
            )
        if not (_is_float(f[2]) and _is_float(f[3])):
            raise FormatError(f"{where}: start and duration must be numbers, got {f[2]!r} {f[3]!r}")
        if len(f) == 6 and not _is_float(f[5]):
            raise FormatError(f"{where}: confidence must be a number, got {f[5]!r}")
        words.setdefault(f[0], []).append((float(f[2]), no, f[4]))
    return {k: [w for _, _, w in sorted(v)] for k, v in words.items()}


def read_stm(path: str | os.PathLike) -> dict[str, list[str]]:
    """Reference words per file id. One segment per id (how every CSLR STM is laid out)."""
    path = Path(path)
    refs: dict[str, list[str]] = {}
    for no, f in _data_lines(path):
        where = f"{path}:{no}"
        if len(f) < 5:
            raise FormatError(
                f"{where}: an STM line has at least 5 fields (id channel speaker start end "
                f"[<label>] words...), got {len(f)}: {' '.join(f)!r}"
            )
        if not (_is_float(f[3]) and _is_float(f[4])):
            raise FormatError(f"{where}: start and end must be numbers, got {f[3]!r} {f[4]!r}")
        rest = f[5:]
        if rest and rest[0].startswith("<"):
            if not rest[0].endswith(">"):
                raise FormatError(f"{where}: unterminated label {rest[0]!r} (expected <...>)")
            rest = rest[1:]
        if f[0] in refs:
            raise FormatError(f"{where}: id {f[0]!r} appears twice (one segment per utterance)")
        if rest == [IGNORE_SEGMENT]:
            continue
        refs[f[0]] = rest
    return refs


def read_text(path: str | os.PathLike) -> dict[str, list[str]]:
    """Plain `id gloss gloss ...` lines; a line with only an id is an empty utterance."""
    path = Path(path)
    out: dict[str, list[str]] = {}
    for no, f in _data_lines(path):
        if f[0] in out:
            raise FormatError(f"{path}:{no}: id {f[0]!r} appears twice")
        out[f[0]] = f[1:]
    return out


def read_transcripts(path: str | os.PathLike, fmt: str = "auto") -> dict[str, list[str]]:
    """Read a CTM, STM or plain-text file (auto-detected unless `fmt` says which)."""
    readers = {"ctm": read_ctm, "stm": read_stm, "text": read_text}
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in readers:
        raise ValueError(f"unknown transcript format {fmt!r}; choose auto, ctm, stm or text")
    return readers[fmt](path)


def format_ctm(hyps: Mapping[str, Sequence[str]], step: float = CTM_STEP) -> str:
    """CTM text as the official scripts expect: ids sorted, glosses `step` seconds apart.

    Empty hypotheses get no line at all; the scorer turns missing ids into `[EMPTY]`, exactly as
    the official pipeline does.
    """
    lines = []
    for uid in sorted(hyps):
        for i, g in enumerate(hyps[uid]):
            lines.append(f"{uid} 1 {i * step:.3f} {step:.3f} {g}")
    return "".join(line + "\n" for line in lines)


def write_ctm(path: str | os.PathLike, hyps: Mapping[str, Sequence[str]], step: float = CTM_STEP) -> None:
    atomic_write_text(path, format_ctm(hyps, step))


def format_timed_ctm(segments: Mapping[str, Sequence[tuple[str, float, float, float]]]) -> str:
    """CTM text with real times: ``segments`` maps id -> (gloss, start s, end s, confidence) in order."""
    lines = []
    for uid in sorted(segments):
        for g, start, end, conf in segments[uid]:
            lines.append(f"{uid} 1 {start:.3f} {max(end - start, 0.0):.3f} {g} {conf:.4f}")
    return "".join(line + "\n" for line in lines)


def format_stm(refs: Mapping[str, Sequence[str]], speakers: Mapping[str, str] | None = None) -> str:
    """STM text in the layout of the official PHOENIX references (one open-ended segment per id)."""
    speakers = speakers or {}
    lines = []
    for uid in sorted(refs):
        words = " ".join(refs[uid])
        line = f"{uid} 1 {speakers.get(uid, 'unknown')} 0.0 {STM_END}"
        lines.append(f"{line} {words}" if words else line)
    return "".join(line + "\n" for line in lines)


def write_stm(
    path: str | os.PathLike,
    refs: Mapping[str, Sequence[str]],
    speakers: Mapping[str, str] | None = None,
) -> None:
    atomic_write_text(path, format_stm(refs, speakers))


def write_text(path: str | os.PathLike, utts: Mapping[str, Sequence[str]]) -> None:
    """Plain `id gloss ...` lines, ids sorted."""
    atomic_write_text(path, "".join(" ".join([u, *utts[u]]) + "\n" for u in sorted(utts)))
