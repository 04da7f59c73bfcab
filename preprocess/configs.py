"""Typed configs from YAML/JSON dicts, and the error type every command prints as one line.

Every layer reads small YAML presets into frozen dataclasses. :func:`from_dict` is the one
place that refuses unknown keys and checks each value against the field's annotation, so a
typo or ``epochs: 2.5`` stops with ``<file>: train.epochs: ...`` before anything runs instead
of a traceback later. PyYAML reads ``1e-3`` (no dot) as a string; a float field accepts it.

:class:`UserError` marks problems the user can fix (bad input file, bad config, missing
cache). Command-line ``main`` functions print it as one line on stderr and exit 2; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping


class UserError(ValueError):
    """Bad input the user can fix; the message is one line naming the file and the fix.

    A ValueError, so code written before this class existed still catches it.
    """

    def __str__(self) -> str:  # one line, also for subclasses mixed with KeyError (which quotes)
        return " ".join(str(self.args[0]).split()) if self.args else type(self).__name__


class ConfigError(UserError):
    """A config file or dict that cannot be used (unknown key, wrong type, invalid YAML)."""


class MissingEntryError(UserError, KeyError):
    """A named entry (cache array, vocabulary gloss) is missing; also a KeyError for old callers."""


class WriteError(UserError, OSError):
    """A file could not be written (full disk, no permission); nothing half-written is left."""


def write_error(path: str | os.PathLike, e: BaseException, what: str = "file") -> WriteError:
    """One line naming ``path``, the system's reason and the fix, for a failed write of ``path``."""
    path = Path(path)
    reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:120]
    err = WriteError(f"{path}: could not write the {what} ({reason}); free disk space in {path.parent} "
                     "(or fix its permissions) and run the command again")
    if isinstance(e, OSError):
        err.errno = e.errno
    return err


def print_user_error(e: BaseException, prog: str | None = None) -> int:
    """Print ``e`` as one ``error: ...`` line on stderr; returns the exit status 2."""
    msg = " ".join(str(e).split()) or type(e).__name__
    print(f"{prog + ': ' if prog else ''}error: {msg}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------------- presets

PRESETS_ENV = "SIGNDISTILL_CONFIGS"
_REPO = Path(__file__).resolve().parents[1]
_PACKAGED = Path(__file__).resolve().parent / "presets"  # configs/ as a wheel ships it (pyproject package-dir)


def preset_roots() -> list[Path]:
    """Folders that may hold the presets, in search order.

    ``$SIGNDISTILL_CONFIGS`` (a user's own copy), then the checkout's ``configs/`` (source tree and
    editable install; only where a ``pyproject.toml`` marks the checkout), then the copy a wheel
    install ships inside this package.
    """
    env = os.environ.get(PRESETS_ENV)
    roots = []
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise ConfigError(f"{PRESETS_ENV}={env}: not a folder; point it at a folder laid out like "
                              "the repository's configs/ (datasets/, recipes/, teachers/) or unset it")
        roots.append(root)
    if (_REPO / "pyproject.toml").is_file():
        roots.append(_REPO / "configs")
    roots.append(_PACKAGED)
    return roots


def preset_dir(kind: str) -> Path:
    """The first folder ``<root>/<kind>`` (``datasets``, ``recipes``, ``teachers``, ``synthsign``) found."""
    roots = preset_roots()
    for root in roots:
        if (root / kind).is_dir():
            return root / kind
    raise ConfigError(f"no {kind} presets in {', '.join(str(r) for r in roots)}; set {PRESETS_ENV}=<folder "
                      f"holding {kind}/> (a copy of the repository's configs/) or reinstall signdistill")


def preset_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists; a relative ``configs/<kind>/<file>`` that does not is found among
    the presets, so the repository-relative paths in recipes, the Makefile and the README also work
    from another directory and from a wheel install. Anything else comes back unchanged."""
    path = Path(path).expanduser()
    if path.exists() or path.is_absolute() or len(path.parts) < 3 or path.parts[0] != "configs":
        return path
    rest = Path(*path.parts[1:])
    for root in preset_roots():
        if (root / rest).is_file():
            return root / rest
    return path


def preset_names(kind: str) -> list[str]:
    """The preset names of ``kind``: the YAML file stems of :func:`preset_dir`."""
    return sorted(p.stem for p in preset_dir(kind).glob("*.yaml"))


# ------------------------------------------------------------------------------------ YAML


def load_yaml(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file; a missing file, bad bytes or bad YAML is one ConfigError line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found; check the path") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason}); save the file as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values ({what}), got a {type(raw).__name__}")
    return raw


# ------------------------------------------------------------------------ dataclass from dict


def check_keys(data: Mapping[str, Any], known: Iterable[str], where: str, what: str) -> None:
    """Refuse keys of ``data`` outside ``known``: ``<where>: unknown <what> [...]; known: [...]``."""
    known = set(known)
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ConfigError(f"{_prefix(where)}unknown {what} {unknown}; known: {sorted(known)}")


def from_dict(cls: type, data: Mapping[str, Any] | None, where: str = "", section: str = "",
              what: str | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys refused, values checked by annotation.

    Args:
        cls: a dataclass; ``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[X, ...]``,
            ``list[X]``, ``dict[K, V]`` and nested dataclass fields are checked and coerced
            (a float field accepts ``"1e-3"``; an int field refuses ``2.5``; lists become tuples
            for tuple fields); other annotations pass values through.
        data: the mapping (None = all defaults).
        where: file (or ``file:line``) named in errors.
        section: dotted prefix of the keys in errors (``train`` -> ``train.epochs``).
        what: noun for the unknown-key error (default ``"<section> option(s)"``).

    Raises:
        ConfigError: one line naming ``where``, the key and what to write instead.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_prefix(where)}{section or cls.__name__} must be a mapping of keys to values, "
                          f"got {data!r}")
    flds = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, flds, where, what or (f"{section} option(s)" if section else "option(s)"))
    hints = _hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{section}.{name}" if section else name
        tp = hints.get(name, Any)
        kwargs[name] = coerce(value, tp, key, where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # the dataclass's own __post_init__ checks
        msg = " ".join(str(e).split())
        raise ConfigError(f"{_prefix(where)}{msg}") from None


def coerce(value: Any, tp: Any, key: str, where: str = "") -> Any:
    """``value`` checked against annotation ``tp`` (see :func:`from_dict`); ConfigError names ``key``."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return coerce(value, member, key, where)
            except ConfigError as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(where, key, value, "true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(where, key, value, "a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _bad(where, key, value, "a whole number", hint=_int_hint(value))
    if tp is float:
        if isinstance(value, bool):
            raise _bad(where, key, value, "a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # "1e-3": YAML 1.1 wants a dot to call it a float
            except ValueError:
                pass
        raise _bad(where, key, value, "a number (e.g. 0.001 or 1e-3)")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(where, key, value, "a string")
    if origin in (tuple, list):
        if isinstance(value, str):
            raise ConfigError(f"{_prefix(where)}{key}: expected a list (e.g. [{value}]), got the string {value!r}")
        if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
            raise _bad(where, key, value, "a list (e.g. [a, b])")
        items = list(value)
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            if len(items) != len(args):
                raise _bad(where, key, value, f"a list of {len(args)} values")
            return tuple(coerce(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(items, args)))
        member = args[0] if args else Any
        out = [coerce(v, member, f"{key}[{i}]", where) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _bad(where, key, value, "a mapping (key: value)")
        if not args:
            return dict(value)
        kt, vt = args
        return {coerce(k, kt, f"{key}", where): coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise _bad(where, key, value, f"one of {list(args)}")
        return value
    return value


def _hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations (string annotations under ``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation naming a TYPE_CHECKING-only import: resolve field by field
        module = sys.modules.get(cls.__module__)
        ns = dict(vars(module)) if module else {}
        out = {}
        for f in dataclasses.fields(cls):
            try:
                out[f.name] = eval(f.type, ns) if isinstance(f.type, str) else f.type  # noqa: S307
            except Exception:
                out[f.name] = Any
        return out


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _int_hint(value: Any) -> str:
    if isinstance(value, float):
        return f"; write {int(value)} or {int(value) + 1}"
    return ""


def _bad(where: str, key: str, value: Any, expected: str, hint: str = "") -> ConfigError:
    return ConfigError(f"{_prefix(where)}{key}: expected {expected}, got {value!r}{hint}")
