"""Cross-validation folds of a cached corpus, as ordinary datasets of the same cache.

Corpora without a dev split (RWTH-BOSTON-104's training release, CSL) are tuned by k-fold
cross-validation. Fold ``i`` becomes a dataset folder ``<cache>/<name>/`` beside the parent:
its ``train`` split is the other folds, its ``test`` split is fold ``i``, and (optionally) a
``dev`` split is carved out of the training part, so every trainer, the distillation recipes
and ``evaluate.eval`` run on a fold unchanged. Cache files are hard links (a copy where the
file system refuses), so a view costs no disk. The fold's vocabulary is built from its
training part only: glosses seen only in the held-out fold stay out of it and are counted.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from preprocess import cache as cache_lib
from preprocess.configs import UserError
from preprocess.files import write_text_if_changed
from preprocess.manifest import Utterance, read_manifest, write_manifest
from preprocess.vocab import Vocabulary

GROUP_BY = ("none", "sentence", "signer")  # what must never be split across folds ("none": each utterance on its own)


@dataclass(frozen=True)
class FoldView:
    """One fold materialised as a dataset of the cache."""

    name: str  # dataset name of the view (``<cache>/<name>``)
    fold: int  # index of the held-out fold
    train: tuple[str, ...]  # utterance ids trained on
    dev: tuple[str, ...]  # ids carved out of the training part for model selection (may be empty)
    test: tuple[str, ...]  # held-out ids, scored
    unseen_tokens: int  # held-out gloss tokens whose gloss the fold's training part never shows
    test_tokens: int  # held-out gloss tokens in all


def _groups(utts: Sequence[Utterance], group_by: str) -> list[str]:
    if group_by == "sentence":  # the same gloss sentence signed twice stays on one side
        return [" ".join(u.glosses) for u in utts]
    if group_by == "signer":
        return [u.signer or "?" for u in utts]
    return [u.id for u in utts]


def assign_folds(utts: Sequence[Utterance], k: int, group_by: str = "none", seed: int = 0) -> list[int]:
    """Fold index of every utterance: groups (see ``GROUP_BY``) never straddle two folds.

    Groups are shuffled with ``seed`` and dealt by scikit-learn's ``GroupKFold`` (which
    balances fold sizes); with ``group_by="signer"`` and k = number of signers this is
    leave-one-signer-out.

    Raises:
        UserError: when there are fewer groups than folds.
    """
    from sklearn.model_selection import GroupKFold

    if group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
    if k < 2:
        raise UserError(f"cross-validation needs at least 2 folds, got {k}")
    groups = _groups(utts, group_by)
    distinct = sorted(set(groups))
    if len(distinct) < k:
        raise UserError(f"{len(utts)} utterances form {len(distinct)} {group_by} group(s), fewer than "
                         f"the {k} folds asked for; use --folds {max(2, len(distinct))} or fewer")
    # GroupKFold is deterministic in the group sizes; relabelling groups at random gives seeded folds.
    perm = np.random.default_rng(seed).permutation(len(distinct))
    label = {g: int(perm[i]) for i, g in enumerate(distinct)}
    folds = [0] * len(utts)
    for i, (_, held) in enumerate(GroupKFold(n_splits=k).split(np.zeros(len(utts)), groups=[label[g] for g in groups])):
        for j in held:
            folds[j] = i
    return folds


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        if dst.stat().st_ino == src.stat().st_ino or dst.read_bytes() == src.read_bytes():
            return
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_fold_view(cache_root: str | os.PathLike, dataset: str, fold: int, k: int, group_by: str = "none",
                   seed: int = 0, dev_frac: float = 0.0, split: str = "train", parent_vocab: bool = False) -> FoldView:
    """Materialise fold ``fold`` of ``k`` of ``dataset``'s ``split`` as ``<cache>/<view name>``.

    Idempotent: re-running rewrites nothing that is already right.

    Args:
        dev_frac: fraction of the training part's groups held out as the view's dev split
            (best.pt is then chosen on it; 0 = no dev split, best.pt by training loss).
        parent_vocab: keep ``dataset``'s vocabulary instead of the training part's, so models of
            the view can teach a model of ``dataset`` (out-of-fold teachers; the view's name ends
            in ``_pv``). Glosses the training part never shows are then never trained.
    """
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in [0, {k}), got {fold}")
    if not 0.0 <= dev_frac < 0.5:
        raise ValueError(f"dev_frac must be in [0, 0.5), got {dev_frac}")
    src = cache_lib.dataset_dir(cache_root, dataset)
    utts = read_manifest(src / "manifest.jsonl", split=split)
    if not utts:
        raise UserError(f"{src / 'manifest.jsonl'}: split {split!r} is empty; nothing to cross-validate")
    folds = assign_folds(utts, k, group_by, seed)
    held = [u for u, f in zip(utts, folds) if f == fold]
    rest = [u for u, f in zip(utts, folds) if f != fold]
    dev_ids: set[str] = set()
    if dev_frac > 0:  # whole groups of the training part, drawn with the fold's own seed
        groups = _groups(rest, group_by)
        distinct = sorted(set(groups))
        rng = np.random.default_rng(seed * 1000 + fold)
        n_dev = max(1, int(round(dev_frac * len(distinct))))
        chosen = set(rng.choice(distinct, size=n_dev, replace=False).tolist())
        dev_ids = {u.id for u, g in zip(rest, groups) if g in chosen}

    name = f"{dataset}_cv{k}{'' if group_by == 'none' else '_' + group_by}_s{seed}_f{fold}"
    if dev_frac > 0:
        name += f"_dev{int(round(dev_frac * 100))}"
    if parent_vocab:
        name += "_pv"
    dst = cache_lib.dataset_dir(cache_root, name)
    held_ids = {u.id for u in held}
    view: list[Utterance] = []
    for u in utts:
        new_split = "test" if u.id in held_ids else ("dev" if u.id in dev_ids else "train")
        view.append(replace(u, split=new_split))
        cached = cache_lib.utt_path(cache_root, dataset, split, u.id)
        if cached.is_file():
            _link(cached, cache_lib.utt_path(cache_root, name, new_split, u.id))
    where = {(u.split, u.id) for u in view}
    for stale in dst.glob("*/*.npz"):  # files of an earlier assignment under another split
        if (stale.parent.name, stale.stem) not in where:
            stale.unlink()
    dst.mkdir(parents=True, exist_ok=True)
    write_manifest(dst / "manifest.jsonl", view)
    if parent_vocab:
        vocab = Vocabulary.load(src / "vocab.json")
    else:
        vocab = Vocabulary.build([u.glosses for u in view if u.split == "train"])
    vocab.save(dst / "vocab.json")
    meta = cache_lib.read_meta(cache_root, dataset)
    meta = {**meta, "dataset": name,
            "fold": {"parent": dataset, "fold": fold, "folds": k, "group_by": group_by, "seed": seed,
                     "dev_frac": dev_frac, **({"parent_vocab": True} if parent_vocab else {})}}
    write_text_if_changed(dst / "meta.json", json.dumps(meta, indent=2, default=str))
    return _fold_view(name, fold, view)


def own_splits_view(cache_root: str | os.PathLike, dataset: str) -> FoldView:
    """A dataset's own train/dev/test splits as one "fold" (multi-seed runs without CV)."""
    utts = read_manifest(cache_lib.dataset_dir(cache_root, dataset) / "manifest.jsonl")
    if not any(u.split == "test" for u in utts):
        raise UserError(f"{dataset} has no test split to score; cross-validate it (--folds 5)")
    return _fold_view(dataset, 0, utts)


def _fold_view(name: str, fold: int, utts: Sequence[Utterance]) -> FoldView:
    """The ids of each split, and the test glosses the train split never shows."""
    ids = {s: tuple(u.id for u in utts if u.split == s) for s in ("train", "dev", "test")}
    seen = {g for u in utts if u.split == "train" for g in u.glosses}
    test = [g for u in utts if u.split == "test" for g in u.glosses]
    return FoldView(name=name, fold=fold, train=ids["train"], dev=ids["dev"], test=ids["test"],
                    unseen_tokens=sum(g not in seen for g in test), test_tokens=len(test))
