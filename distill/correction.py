"""KD-MSLRT text error correction: a small gloss-to-gloss model that repairs recognizer output.

A recognizer's decoded glosses contain insertions, deletions and substitutions, but gloss
sentences are far from random: a model of the training transcripts can often tell which gloss
is out of place. The corrector is a tiny transformer encoder-decoder trained to map training
transcripts *corrupted* by random edits (``corrupt``) back to the originals; it is then applied
to a recognizer's hypotheses (``correct``). It needs no video and trains in minutes on a CPU.

Because it is trained on synthetic errors, it can also damage a correct hypothesis. So a
correction is only accepted when the model prefers it to copying the input unchanged by more
than ``accept_margin`` nats of sequence log-probability (both scored by the same model).

Token ids: the recognizer's :class:`~preprocess.vocab.Vocabulary` is reused as is, so ids
1..V-1 are its glosses. Index 0 (the CTC blank, never a gloss in a transcript) serves as PAD;
``V`` is BOS and ``V + 1`` is EOS, so the model has ``V + 2`` embeddings and output classes
(PAD and BOS can never be predicted).

Command line::

    python -m distill.correction train --manifest cache/<ds>/manifest.jsonl \\
        --vocab cache/<ds>/vocab.json --out exp/corrector.pt [--confusion-hyp train_hyp.txt]
    python -m distill.correction apply --ckpt exp/corrector.pt --hyp hyp.txt --out fixed.txt
"""
from __future__ import annotations

import argparse
import logging
import math
import random
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preprocess.commandline import add_out, command, prog
from preprocess.configs import UserError, from_dict
from preprocess.vocab import BLANK, Vocabulary

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "gloss_corrector"  # marks a corrector checkpoint (not a recognizer's)
PAD = 0  # the vocabulary's CTC blank index, unused in gloss text, doubles as padding
UNKNOWN_MODES = ("error", "keep")


class Diverged(UserError, FloatingPointError):
    """The corrector's training loss is not finite; the message names the setting to lower."""


@dataclass(frozen=True)
class CorrectionConfig:
    # --- model: transformer encoder-decoder over gloss ids
    d_model: int = 128  # width of embeddings and every transformer layer
    nhead: int = 4  # attention heads (must divide d_model)
    encoder_layers: int = 2  # transformer layers reading the hypothesis
    decoder_layers: int = 2  # transformer layers writing the correction
    ff_dim: int = 256  # feed-forward width inside each layer
    dropout: float = 0.1  # dropout in the transformer layers (training only)
    max_len: int = 64  # longest sequence read or written; longer hypotheses pass through unchanged
    max_grow: int = 4  # a correction may be at most this many glosses longer than its input
    # --- corruption of training transcripts (what errors the model learns to undo)
    p_ins: float = 0.1  # probability of inserting a random gloss into each of the n+1 gaps
    p_del: float = 0.1  # probability of deleting each gloss
    p_sub: float = 0.1  # probability of substituting each gloss (exclusive with deletion)
    p_confusable: float = 0.5  # share of substitutions drawn from the caller's confusable pairs
    #   (when the gloss has any), the rest uniformly over the other glosses
    p_clean: float = 0.2  # share of training pairs left uncorrupted, so copying is learned too
    # --- applying the model
    accept_margin: float = 1.0  # nats: keep the input unless the correction's log-probability
    #   beats the identity copy's by more than this (inf: never change anything)
    # --- training
    epochs: int = 40  # passes over the training transcripts (freshly corrupted every epoch)
    lr: float = 1e-3  # AdamW peak learning rate (linear warm-up, then cosine decay)
    weight_decay: float = 0.01  # AdamW weight decay
    batch_size: int = 64  # sentence pairs per step (also the batch size of ``correct``)
    grad_clip: float = 1.0  # max gradient norm
    seed: int = 0  # seeds the corruption and the weights: same seed, same model

    def __post_init__(self) -> None:
        for name in ("d_model", "nhead", "encoder_layers", "decoder_layers", "ff_dim", "max_len",
                     "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"CorrectionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.nhead:
            raise ValueError(f"CorrectionConfig.d_model={self.d_model} is not divisible by nhead={self.nhead}")
        if self.max_grow < 0:
            raise ValueError(f"CorrectionConfig.max_grow must be >= 0, got {self.max_grow}")
        for name in ("dropout", "p_ins", "p_del", "p_sub", "p_confusable", "p_clean"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CorrectionConfig.{name} must be in [0, 1], got {v}")
        if self.dropout >= 1.0:
            raise ValueError(f"CorrectionConfig.dropout must be < 1, got {self.dropout}")
        if self.p_del + self.p_sub > 1.0:
            raise ValueError(f"CorrectionConfig.p_del + p_sub must be <= 1, got {self.p_del} + {self.p_sub}")
        if math.isnan(self.accept_margin):
            raise ValueError("CorrectionConfig.accept_margin must be a number, got nan")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.grad_clip > 0):
            raise ValueError(f"CorrectionConfig: need lr > 0, weight_decay >= 0, grad_clip > 0; got "
                             f"lr={self.lr}, weight_decay={self.weight_decay}, grad_clip={self.grad_clip}")

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "CorrectionConfig":
        return from_dict(CorrectionConfig, d, what="CorrectionConfig field(s)")


Confusions = Mapping[str, Mapping[str, float]]  # gloss -> {gloss it is mistaken for: weight}


def corrupt(glosses: Sequence[str], vocab: Sequence[str], cfg: CorrectionConfig, rng: random.Random,
            confusions: Confusions | None = None) -> list[str]:
    """Apply random recognizer-like edits to a gloss sentence.

    Each gloss is deleted with ``p_del``, else substituted with ``p_sub``, else kept; then each
    of the n+1 gaps (before the first gloss, after every gloss) receives an inserted gloss with
    ``p_ins``. Expected counts for n glosses: ``p_del*n`` deletions, ``p_sub*n`` substitutions,
    ``p_ins*(n+1)`` insertions. A substitute differs from the original: with ``p_confusable`` it
    is drawn from ``confusions[gloss]`` by weight (when that gloss has entries), otherwise
    uniformly from the other entries of ``vocab``. Insertions are uniform over ``vocab``.

    Args:
        glosses: the clean sentence.
        vocab: the glosses to draw from (the vocabulary's tokens without the blank).
        cfg: corruption rates.
        rng: the only source of randomness, so a seeded ``random.Random`` makes this repeatable.
        confusions: optional confusable pairs, e.g. a recognizer's substitution counts.
    """
    out: list[str] = []
    if rng.random() < cfg.p_ins:
        out.append(vocab[rng.randrange(len(vocab))])
    for g in glosses:
        u = rng.random()
        if u < cfg.p_del:
            pass
        elif u < cfg.p_del + cfg.p_sub:
            out.append(_substitute(g, vocab, cfg, rng, confusions))
        else:
            out.append(g)
        if rng.random() < cfg.p_ins:
            out.append(vocab[rng.randrange(len(vocab))])
    return out


def _substitute(g: str, vocab: Sequence[str], cfg: CorrectionConfig, rng: random.Random,
                confusions: Confusions | None) -> str:
    pairs = {k: w for k, w in (confusions or {}).get(g, {}).items() if k != g and w > 0}
    if pairs and rng.random() < cfg.p_confusable:
        return rng.choices(list(pairs), weights=list(pairs.values()))[0]
    if len(vocab) < 2:
        raise ValueError(f"cannot substitute {g!r}: the gloss list has {len(vocab)} entries; set p_sub=0")
    while True:  # rejection: about one draw, without building a "vocab minus g" list per call
        s = vocab[rng.randrange(len(vocab))]
        if s != g:
            return s


def confusions_from_hypotheses(refs: Mapping[str, Sequence[str]],
                               hyps: Mapping[str, Sequence[str]]) -> dict[str, dict[str, int]]:
    """Substitution counts ``{reference gloss: {recognized gloss: count}}`` from aligned pairs.

    Align a recognizer's training-set hypotheses to their references (sclite costs) so that the
    corrector practises on the substitutions that recognizer actually makes. Ids missing from
    either side are skipped.
    """
    from evaluate.core.align import align

    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for uid in sorted(set(refs) & set(hyps)):
        for op, r, h in align(refs[uid], hyps[uid], case_sensitive=True).ops:
            if op == "S":
                counts[r][h] = counts[r].get(h, 0) + 1
    return dict(counts)


class GlossCorrector(nn.Module):
    """Transformer encoder-decoder from a gloss sequence to its corrected gloss sequence.

    Pre-norm layers (stable for small, quickly trained models) and learned positions.
    """

    def __init__(self, cfg: CorrectionConfig, vocab: Vocabulary) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.bos = len(vocab)
        self.eos = len(vocab) + 1
        self.num_classes = len(vocab) + 2
        d = cfg.d_model
        self.embed = nn.Embedding(self.num_classes, d, padding_idx=PAD)
        self.pos = nn.Embedding(cfg.max_len + 2, d)  # room for BOS/EOS around max_len glosses
        enc = nn.TransformerEncoderLayer(d, cfg.nhead, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True)
        dec = nn.TransformerDecoderLayer(d, cfg.nhead, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, cfg.encoder_layers, norm=nn.LayerNorm(d),
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, cfg.decoder_layers, norm=nn.LayerNorm(d))
        self.out = nn.Linear(d, self.num_classes)
        never = torch.zeros(self.num_classes, dtype=torch.bool)
        never[PAD] = never[self.bos] = True
        self.register_buffer("never", never, persistent=False)

    def _embed(self, ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.embed(ids) + self.pos(pos).unsqueeze(0)  # [B, L, d]

    def encode(self, src: Tensor) -> Tensor:
        """Args: src [B, S] ids ending in EOS, PAD after. Returns memory [B, S, d]."""
        return self.encoder(self._embed(src), src_key_padding_mask=src == PAD)

    def decode(self, tgt_in: Tensor, memory: Tensor, src: Tensor) -> Tensor:
        """Args: tgt_in [B, T] ids starting with BOS (PAD after), memory [B, S, d], src [B, S].

        Returns logits [B, T, V+2]; position t predicts the token after tgt_in[:, :t+1].
        """
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).triu(1)  # True: may not attend
        h = self.decoder(self._embed(tgt_in), memory, tgt_mask=causal,
                         tgt_key_padding_mask=tgt_in == PAD, memory_key_padding_mask=src == PAD)
        return self.out(h).masked_fill(self.never, float("-inf"))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            src: [B, S] source ids, each row ``glosses + EOS`` then PAD.
            tgt_in: [B, T] decoder input, each row ``BOS + glosses`` then PAD.

        Returns:
            logits [B, T, V+2] (PAD and BOS at -inf).
        """
        return self.decode(tgt_in, self.encode(src), src)

    # --- batching helpers -------------------------------------------------------------------
    def _pad(self, rows: Sequence[Sequence[int]]) -> Tensor:
        device = self.never.device
        width = max(1, max((len(r) for r in rows), default=1))
        x = torch.full((len(rows), width), PAD, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(list(r), dtype=torch.long, device=device)
        return x

    def source(self, seqs: Sequence[Sequence[int]]) -> Tensor:
        return self._pad([[*s, self.eos] for s in seqs])  # [B, S]

    def targets(self, seqs: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """(decoder input ``BOS + y``, decoder target ``y + EOS``), both [B, T], PAD after."""
        return self._pad([[self.bos, *s] for s in seqs]), self._pad([[*s, self.eos] for s in seqs])

    @torch.no_grad()
    def sequence_logprob(self, src_seqs: Sequence[Sequence[int]], tgt_seqs: Sequence[Sequence[int]]) -> Tensor:
        """log p(tgt + EOS | src) per pair, summed over tokens: [B] (what the fallback compares)."""
        src = self.source(src_seqs)
        tgt_in, tgt_out = self.targets(tgt_seqs)
        logp = self(src, tgt_in).log_softmax(-1)  # [B, T, V+2]
        tok = logp.gather(-1, tgt_out.unsqueeze(-1)).squeeze(-1)  # [B, T]
        return tok.masked_fill(tgt_out == PAD, 0.0).sum(1)

    @torch.no_grad()
    def greedy(self, src_seqs: Sequence[Sequence[int]]) -> list[list[int] | None]:
        """Greedy decoding; a row that does not end within ``len(src) + max_grow`` glosses
        (capped by ``max_len``) gives None, i.e. no correction."""
        src = self.source(src_seqs)
        memory = self.encode(src)
        caps = torch.tensor([min(self.cfg.max_len, len(s) + self.cfg.max_grow) for s in src_seqs],
                            device=src.device)
        b = len(src_seqs)
        ys = torch.full((b, 1), self.bos, dtype=torch.long, device=src.device)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        overflow = torch.zeros_like(done)
        for step in range(int(caps.max()) + 1):
            nxt = self.decode(ys, memory, src)[:, -1].argmax(-1)  # [B]
            over = ~done & (step >= caps) & (nxt != self.eos)
            overflow |= over
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            nxt = torch.where(over, torch.full_like(nxt, self.eos), nxt)
            ys = torch.cat([ys, nxt.unsqueeze(1)], 1)
            done |= nxt == self.eos
            if bool(done.all()):
                break
        out: list[list[int] | None] = []
        for i, row in enumerate(ys[:, 1:].tolist()):
            out.append(None if overflow[i] else row[: row.index(self.eos)] if self.eos in row else None)
        return out


def _lr_factor(step: int, total: int) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), disable=not enabled, transient=False)


def _checkpoint(model: GlossCorrector) -> dict[str, Any]:
    return {"kind": CHECKPOINT_KIND, "config": asdict(model.cfg), "vocab": list(model.vocab.tokens),
            "model": model.state_dict()}


def train_corrector(train_sentences: Sequence[Sequence[str]], vocab: Vocabulary, cfg: CorrectionConfig,
                    out_path: str | Path | None, progress: bool = True,
                    confusions: Confusions | None = None) -> GlossCorrector:
    """Train a corrector on freshly corrupted copies of ``train_sentences`` every epoch.

    Saves ``{kind, config, vocab, model}`` atomically to ``out_path`` (unless None) and returns
    the model in eval mode. Sentences longer than ``cfg.max_len`` are skipped (with a log line);
    a gloss missing from ``vocab`` raises KeyError naming the sentence.
    """
    from models.checkpoint import save_checkpoint

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    sents = [list(s) for s in train_sentences]
    for i, s in enumerate(sents):
        vocab.encode(s, where=f"training sentence {i}")
        if BLANK in s:
            raise ValueError(f"training sentence {i} contains the CTC blank {BLANK!r}; it is not a gloss")
    long = sum(len(s) > cfg.max_len for s in sents)
    sents = [s for s in sents if len(s) <= cfg.max_len]
    if long:
        log.warning("skipped %d training sentences longer than max_len=%d", long, cfg.max_len)
    if not sents:
        raise ValueError("no training sentences to learn from (empty split, or all longer than max_len)")
    pool = list(vocab.tokens[1:])
    idx = vocab.index
    model = GlossCorrector(cfg, vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(sents) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    step = 0
    model.train()
    with _progress(progress) as bar:
        task = bar.add_task("corrector", total=total, info="")
        for epoch in range(cfg.epochs):
            order = list(range(len(sents)))
            rng.shuffle(order)
            loss_sum = 0.0
            for b0 in range(0, len(order), cfg.batch_size):
                tgt, src = [], []
                for j in order[b0: b0 + cfg.batch_size]:
                    s = sents[j]
                    noisy = s if rng.random() < cfg.p_clean else corrupt(s, pool, cfg, rng, confusions)
                    src.append([idx[g] for g in noisy[: cfg.max_len]])
                    tgt.append([idx[g] for g in s])
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * _lr_factor(step, total)
                tgt_in, tgt_out = model.targets(tgt)
                logits = model(model.source(src), tgt_in)  # [B, T, V+2]
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD)
                if not torch.isfinite(loss):
                    raise Diverged(f"corrector loss is {loss.item()} at epoch {epoch + 1}, step {step}; "
                                   "lower the learning rate (--lr)")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                loss_sum += loss.item()
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f}")
            log.info("corrector epoch %d/%d: loss %.4f", epoch + 1, cfg.epochs, loss_sum / steps_per_epoch)
    model.eval()
    if out_path is not None:
        save_checkpoint(out_path, _checkpoint(model))
    return model


def load_corrector(path: str | Path, device: str | torch.device = "cpu") -> GlossCorrector:
    """Rebuild a corrector from its own saved config and vocabulary; eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: corrector checkpoint not found; train one with "
                                "`python -m distill.correction train`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); retrain it") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path}: not a gloss-corrector checkpoint (a recognizer checkpoint?); "
                         "pass the file written by `python -m distill.correction train`")
    model = GlossCorrector(CorrectionConfig.from_dict(ckpt["config"]), Vocabulary(tuple(ckpt["vocab"])))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def correct(model: GlossCorrector, hyps: Mapping[str, Sequence[str]], margin: float | None = None,
            batch_size: int | None = None, unknown: str = "error") -> dict[str, list[str]]:
    """Correct recognizer hypotheses, conservatively.

    Each hypothesis is decoded greedily; the result replaces it only when
    ``logp(result | hyp) - logp(hyp | hyp) > margin`` (default ``model.cfg.accept_margin``).
    Hypotheses longer than ``max_len`` are returned unchanged.

    Args:
        model: a trained corrector.
        hyps: utterance id -> decoded glosses.
        margin: override of the acceptance margin in nats.
        batch_size: sequences per batch (default ``model.cfg.batch_size``).
        unknown: a gloss outside the corrector's vocabulary is an error ("error", the default:
            the hypotheses come from another vocabulary) or leaves that utterance unchanged ("keep").

    Returns:
        utterance id -> glosses, same ids as ``hyps``.
    """
    if unknown not in UNKNOWN_MODES:
        raise ValueError(f"unknown={unknown!r}; choose one of {UNKNOWN_MODES}")
    margin = model.cfg.accept_margin if margin is None else float(margin)
    if math.isnan(margin):
        raise ValueError("margin must be a number, got nan")
    batch_size = batch_size or model.cfg.batch_size
    idx = model.vocab.index
    idx.pop(BLANK, None)
    out = {uid: list(h) for uid, h in hyps.items()}
    todo: list[tuple[str, list[int]]] = []
    for uid, h in hyps.items():
        bad = next((g for g in h if g not in idx), None)
        if bad is not None:
            if unknown == "error":
                raise ValueError(f"hypothesis {uid!r}: gloss {bad!r} is not in the corrector's vocabulary "
                                 f"({len(idx)} glosses); train the corrector on the recognizer's vocabulary "
                                 "or pass unknown='keep' (--unknown keep) to leave such utterances unchanged")
            continue
        if len(h) <= model.cfg.max_len:
            todo.append((uid, [idx[g] for g in h]))
    todo.sort(key=lambda t: len(t[1]))  # similar lengths share a batch: less padding
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(todo), batch_size):
            batch = todo[b0: b0 + batch_size]
            srcs = [s for _, s in batch]
            cands = model.greedy(srcs)
            pick = [i for i, c in enumerate(cands) if c is not None and c != srcs[i]]
            if not pick:
                continue
            src_p = [srcs[i] for i in pick]
            gain = (model.sequence_logprob(src_p, [cands[i] for i in pick])
                    - model.sequence_logprob(src_p, src_p))
            for i, g in zip(pick, gain.tolist()):
                if g > margin:
                    out[batch[i][0]] = model.vocab.decode(cands[i])
    finally:
        model.train(was_training)
    return out


def _train_main(args: argparse.Namespace) -> int:
    from evaluate.core.formats import read_transcripts
    from preprocess.manifest import read_manifest

    overrides = {k: v for k, v in {
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "d_model": args.d_model,
        "encoder_layers": args.layers, "decoder_layers": args.layers, "p_ins": args.p_ins, "p_del": args.p_del,
        "p_sub": args.p_sub, "accept_margin": args.margin, "max_len": args.max_len, "seed": args.seed,
    }.items() if v is not None}
    cfg = replace(CorrectionConfig(), **overrides)
    vocab = Vocabulary.load(args.vocab)
    utts = read_manifest(args.manifest, split=args.split)
    if not utts:
        raise ValueError(f"{args.manifest}: no utterances in split {args.split!r}; pass --split")
    confusions = None
    if args.confusion_hyp:
        refs = {u.id: u.glosses for u in utts}
        hyps = read_transcripts(args.confusion_hyp, fmt=args.format)
        if not set(hyps) & set(refs):
            raise ValueError(f"{args.confusion_hyp}: no id in common with the {args.split} split of "
                             f"{args.manifest}; pass the recognizer's hypotheses on that split")
        confusions = confusions_from_hypotheses(refs, hyps)
        log.info("confusions: %d substitution pairs from %s",
                 sum(len(v) for v in confusions.values()), args.confusion_hyp)
    sents = [u.glosses for u in utts]
    for u in utts:
        vocab.encode(u.glosses, where=f"{args.manifest}: utterance {u.id}")
    train_corrector(sents, vocab, cfg, args.out, progress=not args.no_progress, confusions=confusions)
    print(f"corrector trained on {len(sents)} {args.split} transcripts -> {args.out}")
    return 0


def _apply_main(args: argparse.Namespace) -> int:
    from evaluate.core.formats import read_transcripts, write_text

    model = load_corrector(args.ckpt)
    hyps = read_transcripts(args.hyp, fmt=args.format)
    try:
        fixed = correct(model, hyps, margin=args.margin, batch_size=args.batch_size, unknown=args.unknown)
    except ValueError as e:
        raise ValueError(f"{args.hyp}: {e}") from None
    write_text(args.out, fixed)
    changed = sum(fixed[u] != list(hyps[u]) for u in hyps)
    print(f"corrected {changed} of {len(hyps)} hypotheses -> {args.out}")
    return 0


@command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog("distill.correction"), description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a corrector on a manifest's transcripts")
    t.add_argument("--manifest", required=True, help="manifest.jsonl whose transcripts to learn from")
    t.add_argument("--vocab", required=True, help="the recognizer's vocab.json (the corrector shares it)")
    add_out(t, "checkpoint to write (e.g. exp/corrector.pt)", required=True)
    t.add_argument("--split", default="train", help="manifest split to learn from (default train)")
    t.add_argument("--confusion-hyp", help="a recognizer's hypotheses on that split (`id gloss ...` or CTM): "
                   "its substitutions become the confusable pairs used in corruption")
    t.add_argument("--format", default="auto", choices=("auto", "ctm", "text"), help="format of --confusion-hyp")
    for flag, typ in (("--epochs", int), ("--lr", float), ("--batch-size", int), ("--d-model", int),
                      ("--layers", int), ("--p-ins", float), ("--p-del", float), ("--p-sub", float),
                      ("--margin", float), ("--max-len", int), ("--seed", int)):
        t.add_argument(flag, type=typ, help="override the CorrectionConfig default" if flag != "--layers"
                       else "encoder and decoder layers")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    a = sub.add_parser("apply", help="correct a hypothesis file")
    a.add_argument("--ckpt", required=True, help="corrector checkpoint")
    a.add_argument("--hyp", required=True, help="hypotheses, `id gloss gloss ...` a line (or CTM)")
    add_out(a, "corrected hypotheses, `id gloss ...` a line", required=True)
    a.add_argument("--format", default="auto", choices=("auto", "ctm", "text"), help="format of --hyp")
    a.add_argument("--margin", type=float, help="override the checkpoint's acceptance margin (nats)")
    a.add_argument("--batch-size", type=int, help="sequences per batch")
    a.add_argument("--unknown", default="error", choices=UNKNOWN_MODES,
                   help="a gloss outside the vocabulary: fail (default) or keep that utterance unchanged")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return _train_main(args) if args.cmd == "train" else _apply_main(args)


if __name__ == "__main__":
    sys.exit(main())
