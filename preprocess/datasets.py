"""Dataset readers and dataset configs: every corpus becomes the same manifest + vocabulary.

One ``prepare_<name>(root, out_dir) -> list[Utterance]`` per corpus, all writing
``<out_dir>/manifest.jsonl`` and ``<out_dir>/vocab.json`` (built from the train split), so
nothing downstream ever branches on the corpus. A corpus is selected by a small YAML in
``configs/datasets/`` (or a user's own YAML with ``reader: custom``), which also carries the
feature-extractor overrides for that corpus.

Readers never decode media: a row whose video or frame folder is missing is kept (the
feature extractor reports it per file) and each split logs one warning line with the count.
"""
from __future__ import annotations

import argparse
import inspect
import io
import logging
import os
import pickle
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from preprocess.commandline import add_out, command, prog
from preprocess.configs import UserError, check_keys, load_yaml, preset_dir, preset_names, preset_path
from preprocess.keypoint_io import (KEYPOINT_SUFFIXES, KeypointFileError, keypoint_fps, keypoint_frame_size,
                                   keypoint_num_frames)
from preprocess.manifest import SPLITS, Utterance, write_manifest
from preprocess.video import IMAGE_SUFFIXES
from preprocess.vocab import Vocabulary

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv"})


# ------------------------------------------------------------------------------ shared helpers


def count_frames(folder: str | os.PathLike) -> int:
    """Image files directly inside ``folder`` (0 when it does not exist)."""
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    except (FileNotFoundError, NotADirectoryError):
        return 0


def _read_num_frames_csv(path: Path) -> dict[str, int]:
    """``id,num_frames`` table shipped beside some corpora (empty when absent)."""
    if not path.is_file():
        return {}
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.strip().split(",")
            if len(parts) != 2 or (n == 1 and not parts[1].isdigit()):
                continue  # header or blank line
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                raise ValueError(f"{path}:{n}: expected 'id,num_frames', got {line.strip()!r}") from None
    return out


def _read_table(path: Path, columns: tuple[str, ...], sep: str = "|") -> list[tuple[int, dict[str, str]]]:
    """Rows of a ``sep``-separated file with a header holding at least ``columns``.

    Returns (line number, row) pairs; extra columns are kept, the last column may contain
    ``sep`` (free-text translations do).
    """
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                        "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    if not lines:
        raise ValueError(f"{path}: empty file; expected a header {sep.join(columns)}")
    header = [c.strip() for c in lines[0].split(sep)]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: header {lines[0]!r} lacks columns {missing}; expected {sep.join(columns)}")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split(sep, len(header) - 1)
        if len(parts) != len(header):
            raise ValueError(f"{path}:{n}: {len(parts)} fields but the header has {len(header)} ({sep.join(header)})")
        rows.append((n, dict(zip(header, (p.strip() for p in parts)))))
    return rows


def _find_release(root: str | os.PathLike, folder: str, marker: str) -> Path:
    """The corpus folder ``folder`` whether ``root`` is it, contains it, or contains it one level down.

    ``marker`` is a path inside the corpus folder that identifies it.
    """
    root = Path(root).expanduser()
    candidates = [root / folder, root]
    if root.is_dir():
        candidates += sorted(p / folder for p in root.iterdir() if p.is_dir())
    for c in candidates:
        if (c / marker).exists():
            return c
    raise FileNotFoundError(
        f"{root}: no {folder}/{marker} here; set DATA_ROOT to the folder that contains {folder} (or to {folder} itself)"
    )


def _warn_missing(dataset: str, split: str, missing: list[str], total: int, what: str) -> None:
    if missing:
        log.warning("%s %s: %d of %d %s missing (first: %s); the feature extractor will report each",
                    dataset, split, len(missing), total, what, missing[0])
        for m in missing:
            log.debug("%s %s: missing %s", dataset, split, m)


def _finish(dataset: str, utts: list[Utterance], out_dir: str | os.PathLike) -> list[Utterance]:
    """Write the manifest and the vocabulary (train split; all utterances when there is none)."""
    if not utts:
        raise ValueError(f"{dataset}: the corpus has no utterances; check DATA_ROOT and the annotation files")
    out_dir = Path(out_dir)
    write_manifest(out_dir / "manifest.jsonl", utts)
    train = [u.glosses for u in utts if u.split == "train"]
    if not train:
        log.warning("%s: no train split; building the vocabulary from all %d utterances", dataset, len(utts))
        train = [u.glosses for u in utts]
    vocab = Vocabulary.build(train)
    vocab.save(out_dir / "vocab.json")
    counts = defaultdict(int)
    for u in utts:
        counts[u.split] += 1
    log.info("%s: %s utterances, %d glosses -> %s", dataset,
             " / ".join(f"{counts[s]} {s}" for s in SPLITS if counts[s]), len(vocab) - 1, out_dir)
    return utts


# ------------------------------------------------------------------------------ PHOENIX


def _phoenix(dataset: str, base: Path, corpus_file: str, columns: tuple[str, ...], id_col: str,
             folder_col: str, signer_col: str, gloss_col: str, extra_cols: tuple[str, ...]) -> list[Utterance]:
    """Shared body of the two PHOENIX readers (same frame-folder layout, different columns)."""
    manual = base / "annotations" / "manual"
    frames_root = base / "features" / "fullFrame-210x260px"
    utts: list[Utterance] = []
    for split in SPLITS:
        path = manual / corpus_file.format(split=split)
        if not path.is_file():
            log.warning("%s: %s not found; split %s skipped", dataset, path, split)
            continue
        known_lengths = _read_num_frames_csv(manual / f"{split}.num_frames.csv")
        missing = []
        rows = _read_table(path, columns)
        for _, row in rows:
            # the folder column is a glob such as "<id>/1/*.png"; the frames are its directory
            rel = Path(row[folder_col])
            if "*" in rel.name:
                rel = rel.parent
            folder = frames_root / split / rel
            n = count_frames(folder)
            if n == 0:
                missing.append(str(folder))
                n = known_lengths.get(row[id_col], 0)
            utts.append(Utterance(
                id=row[id_col], split=split, signer=row[signer_col], glosses=row[gloss_col].split(),
                source=str(folder), num_frames=n, fps=25.0,
                extra={c: row[c] for c in extra_cols},
            ))
        _warn_missing(dataset, split, missing, len(rows), "frame folders")
    return utts


def prepare_phoenix14(root: str | os.PathLike, out_dir: str | os.PathLike) -> list[Utterance]:
    """RWTH-PHOENIX-Weather 2014 (multisigner), official train/dev/test split.

    Layout read (``root`` is ``phoenix-2014-multisigner`` or a folder containing it)::

        phoenix-2014-multisigner/annotations/manual/{split}.corpus.csv   id|folder|signer|annotation
        phoenix-2014-multisigner/features/fullFrame-210x260px/{split}/{id}/1/*.png   (25 fps)

    Glosses are the annotation as released (``__ON__``/``__OFF__`` and the other special
    glosses stay: the official scoring cleans hypothesis and reference alike). An optional
    ``annotations/manual/{split}.num_frames.csv`` (``id,num_frames``) gives lengths when the
    frames are absent.
    """
    base = _find_release(root, "phoenix-2014-multisigner", "annotations/manual")
    utts = _phoenix("phoenix14", base, "{split}.corpus.csv", ("id", "folder", "signer", "annotation"),
                    "id", "folder", "signer", "annotation", ())
    return _finish("phoenix14", utts, out_dir)


def prepare_phoenix14t(root: str | os.PathLike, out_dir: str | os.PathLike) -> list[Utterance]:
    """RWTH-PHOENIX-Weather 2014 T, official train/dev/test split (recognition: ``orth`` glosses).

    Layout read (``root`` is ``PHOENIX-2014-T`` or a folder containing it)::

        PHOENIX-2014-T/annotations/manual/PHOENIX-2014-T.{split}.corpus.csv
            name|video|start|end|speaker|orth|translation
        PHOENIX-2014-T/features/fullFrame-210x260px/{split}/{name}/*.png   (25 fps)

    The German translation is kept in ``extra["translation"]``; optional
    ``annotations/manual/{split}.num_frames.csv`` as for PHOENIX14.
    """
    base = _find_release(root, "PHOENIX-2014-T", "annotations/manual")
    utts = _phoenix("phoenix14t", base, "PHOENIX-2014-T.{split}.corpus.csv",
                    ("name", "video", "start", "end", "speaker", "orth", "translation"),
                    "name", "video", "speaker", "orth", ("translation",))
    return _finish("phoenix14t", utts, out_dir)


# ------------------------------------------------------------------------------ CSL-Daily


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler for the CSL-Daily label file that refuses every global (dicts/lists/str only)."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _csl_daily_labels(labels: Path) -> list[dict[str, Any]]:
    """Label records (name, length, gloss list, text, signer) from video_map.txt or the pickle."""
    video_map = labels / "video_map.txt"
    if video_map.is_file():
        out = []
        for n, row in _read_table(video_map, ("name", "length", "gloss")):
            try:
                length = int(row["length"])
            except ValueError:
                raise ValueError(f"{video_map}:{n}: length {row['length']!r} is not a number") from None
            out.append({"name": row["name"], "length": length, "gloss": row["gloss"].split(),
                        "text": "".join(row.get("char", "").split()), "signer": None})
        return out
    pkl = labels / "csl2020ct_v2.pkl"
    if not pkl.is_file():
        raise FileNotFoundError(f"{labels}: neither video_map.txt nor csl2020ct_v2.pkl; is this the CSL-Daily release?")
    try:
        data = _PlainUnpickler(io.BytesIO(pkl.read_bytes())).load()
        info = data["info"] if isinstance(data, dict) else data
        return [{"name": r["name"], "length": int(r.get("length", 0)), "gloss": list(r["label_gloss"]),
                 "text": "".join(r.get("label_char", [])), "signer": r.get("signer")} for r in info]
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as e:
        raise ValueError(f"{pkl}: unexpected label file ({e}); provide sentence_label/video_map.txt instead") from None


def prepare_csl_daily(root: str | os.PathLike, out_dir: str | os.PathLike) -> list[Utterance]:
    """CSL-Daily (USTC), official split ``split_1.txt`` (18401 train / 1077 dev / 1176 test).

    Layout read (``root`` is ``CSL-Daily`` or a folder containing it)::

        CSL-Daily/sentence/frames_512x512/{name}/*.jpg      frame folders (30 fps)
        CSL-Daily/sentence_label/video_map.txt              index|name|length|gloss|char|word|postag
        CSL-Daily/sentence_label/split_1.txt                name|split
        CSL-Daily/sentence_label/csl2020ct_v2.pkl           labels, read only without video_map.txt

    Glosses are the space-separated ``gloss`` column; the signer is the ``P....`` part of
    the name (``S000007_P0003_T00`` -> ``P0003``); the Chinese sentence goes to
    ``extra["translation"]``. Names absent from the split file are skipped with a warning.
    """
    base = _find_release(root, "CSL-Daily", "sentence_label")
    labels = base / "sentence_label"
    split_file = labels / "split_1.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file}: split file not found; it ships in CSL-Daily/sentence_label")
    split_of = {row["name"]: row["split"] for _, row in _read_table(split_file, ("name", "split"))}
    frames_root = base / "sentence" / "frames_512x512"
    by_split: dict[str, list[Utterance]] = defaultdict(list)
    missing: dict[str, list[str]] = defaultdict(list)
    unsplit = []
    for rec in _csl_daily_labels(labels):
        split = split_of.get(rec["name"])
        if split not in SPLITS:
            unsplit.append(rec["name"])
            continue
        folder = frames_root / rec["name"]
        n = count_frames(folder)
        if n == 0:
            missing[split].append(str(folder))
            n = rec["length"]
        m = re.search(r"_(P\d+)_", rec["name"])
        signer = m.group(1) if m else ("" if rec["signer"] is None else str(rec["signer"]))
        by_split[split].append(Utterance(
            id=rec["name"], split=split, signer=signer, glosses=rec["gloss"], source=str(folder),
            num_frames=n, fps=30.0, extra={"translation": rec["text"]} if rec["text"] else {},
        ))
    if unsplit:
        log.warning("csl-daily: %d labelled videos are not in %s and were skipped (first: %s)",
                    len(unsplit), split_file.name, unsplit[0])
    for split in SPLITS:
        _warn_missing("csl-daily", split, missing[split], len(by_split[split]), "frame folders")
    return _finish("csl-daily", [u for s in SPLITS for u in by_split[s]], out_dir)


# ------------------------------------------------------------------------------ CSL


def _csl_words(dictionary: Path) -> list[str]:
    """Words of the CSL dictionary (``index<TAB>word``; ``word（alt、alt）`` lists synonyms)."""
    words = []
    with open(dictionary, encoding="utf-8-sig") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if len(parts) == 2:
                words += [w for w in re.split(r"[（）()、]", parts[1]) if w.strip()]
    return words


def _segment(sentence: str, words: Iterable[str]) -> list[str]:
    """Forward maximum matching: the longest dictionary word at each position, else one character."""
    vocab = set(words)
    longest = max((len(w) for w in vocab), default=1)
    out, i = [], 0
    while i < len(sentence):
        for size in range(min(longest, len(sentence) - i), 0, -1):
            if size == 1 or sentence[i : i + size] in vocab:
                out.append(sentence[i : i + size])
                i += size
                break
    return out


CSL_TRAIN_SIGNERS = 40  # split I (signer independent): P01-P40 train, P41-P50 test


def prepare_csl(root: str | os.PathLike, out_dir: str | os.PathLike) -> list[Utterance]:
    """CSL (USTC continuous Chinese Sign Language, 100 sentences x 50 signers x 5 repetitions).

    Layout read (``root`` holds ``color/`` and ``corpus.txt``, or contains such a folder)::

        color/{sentence:06d}/P{signer:02d}_s{session}_{sentence:02d}_{rep}._color.avi   videos (30 fps)
            (a sub-folder of frames in place of a video file is read the same way)
        corpus.txt        "{sentence:06d} {sentence}"  one line per sentence
        dictionary.txt    optional "{index}<TAB>{word}" word list used to segment sentences

    Glosses: a corpus sentence already split by spaces is used as is; otherwise it is
    segmented by forward maximum matching over ``dictionary.txt`` words, or into characters
    when there is no dictionary. Split protocol: split I, signer independent -- signers
    P01-P40 are train (20000 videos), P41-P50 test (5000); the release has no dev split.
    Utterance id: ``{sentence}_{video stem}``, e.g. ``000000_P01_s1_00_0``.
    """
    root = Path(root).expanduser()
    candidates = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    base = next((c for c in candidates if (c / "corpus.txt").is_file() and (c / "color").is_dir()), None)
    if base is None:
        raise FileNotFoundError(f"{root}: no corpus.txt beside a color/ folder here or one level down; "
                                "set DATA_ROOT to the CSL release folder")
    color = base / "color"
    dictionary = base / "dictionary.txt"
    words = _csl_words(dictionary) if dictionary.is_file() else []
    sentences: dict[str, list[str]] = {}
    with open(base / "corpus.txt", encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(f"{base / 'corpus.txt'}:{n}: expected '<sentence id> <sentence>', "
                                 f"got {line.strip()!r}")
            if len(parts) > 2:  # already segmented into glosses
                sentences[parts[0]] = parts[1:]
            else:
                sentences[parts[0]] = _segment(parts[1], words) if words else list(parts[1])
    utts: list[Utterance] = []
    unknown, unlabelled = [], []
    for sent_dir in sorted(p for p in color.iterdir() if p.is_dir()):
        if sent_dir.name not in sentences:
            unlabelled.append(sent_dir.name)
            continue
        for entry in sorted(sent_dir.iterdir()):
            is_video = entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES
            if not (is_video or entry.is_dir()):
                continue
            stem = re.sub(r"\.?_color$", "", entry.stem if is_video else entry.name)
            m = re.match(r"P(\d+)", stem)
            if not m:
                unknown.append(str(entry))
                continue
            signer = int(m.group(1))
            utts.append(Utterance(
                id=f"{sent_dir.name}_{stem}", split="train" if signer <= CSL_TRAIN_SIGNERS else "test",
                signer=f"P{signer:02d}", glosses=list(sentences[sent_dir.name]), source=str(entry),
                num_frames=0 if is_video else count_frames(entry), fps=30.0,
            ))
    if unlabelled:
        log.warning("csl: %d sentence folders have no corpus.txt line and were skipped (first: %s)",
                    len(unlabelled), unlabelled[0])
    if unknown:
        log.warning("csl: %d videos without a P<signer> name were skipped (first: %s)", len(unknown), unknown[0])
    return _finish("csl", utts, out_dir)


# ------------------------------------------------------------------------------ custom


CUSTOM_COLUMNS = ("id", "split", "signer", "glosses", "video")


def _keypoint_file(root: Path, utt_id: str) -> Path | None:
    for suffix in KEYPOINT_SUFFIXES:
        p = root / "keypoints" / f"{utt_id}{suffix}"
        if p.is_file():
            return p
    return None


def _custom(dataset: str, root: str | os.PathLike, out_dir: str | os.PathLike) -> list[Utterance]:
    root = Path(root).expanduser().resolve()
    corpus = root / "corpus.csv"
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus}: not found; a custom corpus needs corpus.csv with header "
                                f"{'|'.join(CUSTOM_COLUMNS)}")
    known_lengths = _read_num_frames_csv(root / "num_frames.csv")
    utts: list[Utterance] = []
    missing: dict[str, list[str]] = defaultdict(list)
    no_source: dict[str, list[str]] = defaultdict(list)
    first_line: dict[str, int] = {}
    for n, row in _read_table(corpus, CUSTOM_COLUMNS):
        where = f"{corpus}:{n}"
        if not row["id"]:
            raise UserError(f"{where}: empty id")
        if row["id"] in first_line:
            raise UserError(f"{where}: duplicate id {row['id']!r} (first on line {first_line[row['id']]}); "
                            "ids must be unique: rename or remove one of the rows")
        first_line[row["id"]] = n
        if row["split"] not in SPLITS:
            raise UserError(f"{where}: split {row['split']!r} is not one of {list(SPLITS)}")
        meta = {k: _number(row, k, where) for k in META_COLUMNS}  # fps, num_frames, width, height (0 = not given)
        source = None
        if row["video"]:
            src = Path(row["video"]).expanduser()
            src = src if src.is_absolute() else root / src
            source = str(src)
            if src.is_dir():
                meta["num_frames"] = count_frames(src)
            if not src.exists() or (src.is_dir() and meta["num_frames"] == 0):
                missing[row["split"]].append(source)
            elif not (meta["fps"] and meta["num_frames"]):  # headers only; rows that give both skip this
                _fill_from_video(meta, src)
        kp = _keypoint_file(root, row["id"])
        if source is None and kp is None:
            no_source[row["split"]].append(row["id"])
        meta["num_frames"] = meta["num_frames"] or known_lengths.get(row["id"], 0)
        if kp is not None:
            try:
                meta["num_frames"] = meta["num_frames"] or keypoint_num_frames(kp)
                meta["fps"] = meta["fps"] or keypoint_fps(kp) or 0.0
                if not meta["width"]:
                    meta["width"], meta["height"] = keypoint_frame_size(kp) or (0, 0)
            except KeypointFileError as e:  # reported again, per file, by the extractor
                log.warning("%s", e)
        extra = {k: v for k, v in row.items() if k not in CUSTOM_COLUMNS + META_COLUMNS and v}
        utts.append(Utterance(
            id=row["id"], split=row["split"], signer=row["signer"], glosses=row["glosses"].split(),
            source=source, num_frames=int(meta["num_frames"]), keypoints=str(kp) if kp else None,
            fps=float(meta["fps"] or 25.0), extra=extra, width=int(meta["width"]), height=int(meta["height"]),
        ))
    for split in SPLITS:
        total = sum(u.split == split for u in utts)
        _warn_missing(dataset, split, missing[split], total, "videos/frame folders")
        if no_source[split]:
            log.warning("%s %s: %d of %d rows have neither a video nor keypoints/<id>.npy|.npz|.pose (first: %s)",
                        dataset, split, len(no_source[split]), total, no_source[split][0])
    return _finish(dataset, utts, out_dir)


META_COLUMNS = ("fps", "num_frames", "width", "height")  # optional corpus.csv columns; read from the media otherwise


def _number(row: Mapping[str, str], key: str, where: str) -> float:
    """An optional numeric column (0 when empty or absent); fps may be fractional, the rest are whole."""
    text = (row.get(key) or "").strip()
    if not text:
        return 0
    try:
        value = float(text) if key == "fps" else int(text)
    except ValueError:
        kind = "a number" if key == "fps" else "a whole number"
        raise UserError(f"{where}: {key} {text!r} is not {kind}; fix the {key} column or leave it empty") from None
    if value < 0 or (key == "fps" and value == 0 and text):
        raise UserError(f"{where}: {key} must be positive, got {text!r}; fix the {key} column or leave it empty")
    return value


def _fill_from_video(meta: dict[str, float], src: Path) -> None:
    """fps, frame count and size from the video's headers where the row leaves them empty."""
    from preprocess.video import VideoError, probe_video

    try:
        info = probe_video(src)
    except VideoError as e:  # the extractor reports the file itself
        log.debug("%s", e)
        return
    meta["fps"] = meta["fps"] or info.fps
    meta["num_frames"] = meta["num_frames"] or info.num_frames
    if not meta["width"]:
        meta["width"], meta["height"] = info.width, info.height


def prepare_custom(root: str | os.PathLike, out_dir: str | os.PathLike) -> list[Utterance]:
    """A user corpus, described without code.

    Layout read::

        <root>/corpus.csv            id|split|signer|glosses|video  (header; more columns allowed)
        <root>/<video>               a video file or a frame folder, relative to root; may be empty
        <root>/keypoints/<id>.npy|.npz|.pose   optional pre-extracted landmarks
        <root>/num_frames.csv        optional id,num_frames

    ``glosses`` are space-separated; ``split`` is train, dev or test; ids must be unique.
    Optional columns ``fps`` (frames per second of the source, e.g. 29.97), ``num_frames``,
    ``width`` and ``height`` (pixels) override what the media say; any other column lands in
    ``extra``. Where a row leaves them empty they come from the video's headers (nothing is
    decoded; rows giving both fps and num_frames skip even that), a frame folder (its image
    count; 25 fps), ``num_frames.csv``, or a ``.pose`` keypoint file's header; fps is 25 and
    the size 0 (unknown) when nothing says. A keypoint-only corpus leaves ``video`` empty
    everywhere; then only landmark models apply.
    """
    return _custom("custom", root, out_dir)


# ------------------------------------------------------------------------------ synthsign


def _synth_config(synthsign: Any, generator: Mapping[str, Any]) -> Any:
    """A ``SynthConfig`` from the YAML ``generator`` dict: ``preset`` plus field overrides."""
    import dataclasses

    options = dict(generator)
    name = options.pop("preset", "default")
    check_keys(options, {f.name for f in dataclasses.fields(synthsign.SynthConfig)}, "", "synthsign generator options")
    return synthsign.preset(str(name), **options)


def prepare_synthsign(root: str | os.PathLike, out_dir: str | os.PathLike,
                      generator: Mapping[str, Any] | None = None) -> list[Utterance]:
    """The built-in generated corpus, then read with the ``custom`` reader.

    The corpus is generated into ``root`` when ``root/.done`` is missing, or when the YAML's
    ``generator`` options (``preset`` plus ``SynthConfig`` fields) differ from the ones the
    corpus in ``root`` was made with; otherwise the finished corpus is read as it is.
    """
    root = Path(root).expanduser()
    done = (root / ".done").is_file()
    if not done or generator:
        from preprocess import synthsign  # lazy: the renderer is only needed to generate or check

        cfg = _synth_config(synthsign, generator or {})
        if not done or not synthsign.is_complete(root, cfg):
            log.info("synthsign: generating the corpus into %s", root)
            synthsign.generate(cfg, root)
    return _custom("synthsign", root, out_dir)


# ------------------------------------------------------------------------------ registry


READERS: dict[str, Callable[..., list[Utterance]]] = {
    "phoenix14": prepare_phoenix14,
    "phoenix14t": prepare_phoenix14t,
    "csl-daily": prepare_csl_daily,
    "csl": prepare_csl,
    "custom": prepare_custom,
    "synthsign": prepare_synthsign,
}


def _reader(name: str) -> Callable[..., list[Utterance]]:
    if name not in READERS:
        raise ValueError(f"unknown dataset reader {name!r}; known readers: {sorted(READERS)}")
    return READERS[name]


def prepare(dataset: str, root: str | os.PathLike, out_dir: str | os.PathLike, **options: Any) -> list[Utterance]:
    """Run reader ``dataset`` on ``root``; writes ``out_dir/manifest.jsonl`` and ``vocab.json``."""
    reader = _reader(dataset)
    accepted = set(inspect.signature(reader).parameters) - {"root", "out_dir"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        takes = f"; it takes {sorted(accepted)}" if accepted else ""
        raise ValueError(f"reader {dataset!r} takes no options {unknown}{takes}")
    return reader(Path(root), Path(out_dir), **options)


# ------------------------------------------------------------------------------ dataset configs


@dataclass(frozen=True)
class DatasetConfig:
    name: str  # dataset name: cache folder <cache>/<name>, checkpoint and report labels
    reader: str  # key of READERS that parses the corpus
    root: Path  # corpus folder (absolute); DATA_ROOT overrides the YAML value
    features: dict = field(default_factory=dict)  # feature-extractor overrides (rgb_size, flow, landmarks...)
    generator: dict = field(default_factory=dict)  # synthsign only: preset name and SynthConfig overrides
    options: dict = field(default_factory=dict)  # extra keyword arguments of the reader

    def reader_kwargs(self) -> dict[str, Any]:
        return {**self.options, **({"generator": self.generator} if self.generator else {})}


CONFIG_KEYS = frozenset({"name", "reader", "root", "features", "generator", "options", "description"})


def available_datasets() -> list[str]:
    return preset_names("datasets")


def load_dataset_config(name_or_path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> DatasetConfig:
    """A dataset YAML by name (a preset ``datasets/<name>.yaml``, see :func:`preset_dir`) or by path.

    The corpus root is, in order: ``data_root``, the ``DATA_ROOT`` environment variable, the
    YAML's ``root``; a relative root is resolved against the current directory.
    """
    text = str(name_or_path)
    as_path = preset_path(text)
    if text.endswith((".yaml", ".yml")) or os.sep in text or as_path.is_file():
        path = as_path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: dataset config not found")
    else:
        path = preset_dir("datasets") / f"{text}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown dataset {text!r}; known: {available_datasets()} "
                             "(or pass the path to your own YAML with reader: custom)")
    raw = load_yaml(path, "dataset config")
    check_keys(raw, CONFIG_KEYS, str(path), "keys")
    reader = raw.get("reader")
    if reader not in READERS:
        raise ValueError(f"{path}: unknown reader {reader!r}; known readers: {sorted(READERS)}")
    for key in ("features", "generator", "options"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ValueError(f"{path}: {key} must be a mapping, got {raw[key]!r}")
    root = data_root or os.environ.get("DATA_ROOT") or raw.get("root")
    if not root:
        raise ValueError(f"{path}: no root; set root: in the YAML or DATA_ROOT=<corpus folder>")
    root = Path(str(root)).expanduser()
    return DatasetConfig(
        name=str(raw.get("name") or path.stem), reader=reader,
        root=root if root.is_absolute() else Path.cwd() / root,
        features=dict(raw.get("features") or {}), generator=dict(raw.get("generator") or {}),
        options=dict(raw.get("options") or {}),
    )


def prepare_dataset(config: DatasetConfig, out_dir: str | os.PathLike) -> list[Utterance]:
    """Run the config's reader with its options; the manifest goes to ``out_dir``."""
    return prepare(config.reader, config.root, out_dir, **config.reader_kwargs())


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("preprocess.datasets"),
                                     description="Write manifest.jsonl and vocab.json for one dataset.")
    parser.add_argument("dataset", help=f"dataset name ({', '.join(available_datasets())}) or path to a YAML")
    add_out(parser, "output folder (usually <cache>/<dataset>)", required=True)
    parser.add_argument("--data-root", default=None, help="corpus folder (overrides the YAML root and DATA_ROOT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    config = load_dataset_config(args.dataset, args.data_root)
    utts = prepare_dataset(config, args.out)
    print(f"{config.name}: {len(utts)} utterances -> {Path(args.out) / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
