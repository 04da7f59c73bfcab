"""Gloss n-gram language model for CTC beam search, estimated from the training transcripts.

Gloss corpora are tiny (PHOENIX14 has ~5.6k training sentences), so smoothing matters more than
model order. Two estimators:
- "kn": interpolated Kneser-Ney with one absolute discount; lower orders use continuation counts
  (how many different glosses precede), which is what makes it robust on small corpora.
- "addk": add-k on the highest order only; a simple, transparent baseline.
Both give a proper distribution over the vocabulary + `</s>` + `<unk>` for every history, so the
beam search can add log probabilities without renormalising. ``python -m evaluate.lm`` estimates
one from a manifest or from transcripts.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from typing import Hashable, Iterable, Sequence

from preprocess.files import atomic_write_text

BOS = "<s>"  # sentence start (history padding only, never predicted)
EOS = "</s>"  # sentence end (predicted once per sentence)
UNK = "<unk>"  # any token never seen in training
FORMAT = "signdistill-ngram-lm"  # JSON "format" tag
VERSION = 1

Token = Hashable  # glosses (str) or vocabulary ids (int); JSON keeps either


class NGramLM:
    """An order-n gloss language model.

    Args:
        order: n (1 = unigram).
        smoothing: "kn" (interpolated Kneser-Ney) or "addk".
        discount: absolute discount D of Kneser-Ney, in (0, 1).
        k: pseudo-count of add-k smoothing, > 0.
    """

    def __init__(self, order: int = 3, smoothing: str = "kn", discount: float = 0.75, k: float = 0.1):
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        if smoothing not in ("kn", "addk"):
            raise ValueError(f"smoothing must be 'kn' or 'addk', got {smoothing!r}")
        if not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {discount!r}")
        if not k > 0.0:
            raise ValueError(f"k must be > 0, got {k!r}")
        self.order = order
        self.smoothing = smoothing
        self.discount = discount
        self.k = k
        self.ngrams: Counter[tuple] = Counter()  # raw counts of order-n grams of padded sentences
        self._build()

    # ------------------------------------------------------------------ estimation
    def fit(self, sentences: Iterable[Sequence[Token]]) -> "NGramLM":
        """Count n-grams of the sentences (each padded with n-1 `<s>` and one `</s>`)."""
        n = self.order
        for s in sentences:
            s = list(s)
            bad = [t for t in s if t in (BOS, EOS, UNK)]
            if bad:
                raise ValueError(f"sentence contains reserved token(s) {bad[:3]}: {s[:10]}")
            padded = [BOS] * (n - 1) + s + [EOS]
            for i in range(n - 1, len(padded)):
                self.ngrams[tuple(padded[i - n + 1 : i + 1])] += 1
        self._build()
        return self

    def _build(self) -> None:
        """Derive the per-order tables from the order-n counts.

        With n-1 start pads every position has a full n-gram, so the lower-order grams are exactly
        the suffixes of the counted n-grams and need not be stored.
        """
        n = self.order
        seen = {g[-1] for g in self.ngrams}
        self.vocabulary: tuple[Token, ...] = tuple(sorted(seen | {EOS, UNK}, key=repr))
        self._vocab_set = set(self.vocabulary)
        # tables[m][history of m-1 tokens] = (counts per next token, total, distinct next tokens)
        tables: list[dict[tuple, tuple[dict, int, int]]] = [dict() for _ in range(n + 1)]
        per_order: list[dict[tuple, dict]] = [defaultdict(dict) for _ in range(n + 1)]
        for g, c in self.ngrams.items():
            per_order[n][g[:-1]][g[-1]] = c
        if self.smoothing == "kn":
            for m in range(n - 1, 0, -1):
                types = {g[len(g) - m - 1 :] for g in self.ngrams}  # distinct (m+1)-grams
                for t in types:
                    h, w = t[1:-1], t[-1]
                    per_order[m][h][w] = per_order[m][h].get(w, 0) + 1
        for m in range(1, n + 1):
            for h, counts in per_order[m].items():
                tables[m][h] = (counts, sum(counts.values()), len(counts))
        self._tables = tables
        self._cache: dict[tuple, float] = {}

    # ------------------------------------------------------------------ probabilities
    def _prob(self, h: tuple, w: Token, m: int) -> float:
        if m == 0:
            return 1.0 / len(self.vocabulary)
        entry = self._tables[m].get(h)
        if self.smoothing == "addk":
            if entry is None:
                return 1.0 / len(self.vocabulary)
            counts, total, _ = entry
            return (counts.get(w, 0) + self.k) / (total + self.k * len(self.vocabulary))
        lower = self._prob(h[1:], w, m - 1)
        if entry is None:
            return lower
        counts, total, types = entry
        d = self.discount
        return max(counts.get(w, 0) - d, 0.0) / total + d * types / total * lower

    def history(self, prefix: Sequence[Token]) -> tuple:
        """The n-1 tokens that condition the next one (padded with `<s>`, unknowns -> `<unk>`)."""
        n = self.order
        if n == 1:
            return ()
        tail = [t if t in self._vocab_set else UNK for t in list(prefix)[-(n - 1) :]]
        return tuple([BOS] * (n - 1 - len(tail)) + tail)

    def score(self, prefix: Sequence[Token], token: Token) -> float:
        """Natural-log probability of `token` (a gloss or `</s>`) after `prefix`."""
        h = self.history(prefix)
        w = token if token in self._vocab_set else UNK
        key = (h, w)
        lp = self._cache.get(key)
        if lp is None:
            lp = math.log(self._prob(h, w, self.order))
            self._cache[key] = lp
        return lp

    def sentence_logprob(self, sentence: Sequence[Token]) -> float:
        """log P(sentence, then `</s>`)."""
        s = list(sentence)
        return sum(self.score(s[:i], t) for i, t in enumerate(s)) + self.score(s, EOS)

    def perplexity(self, sentences: Iterable[Sequence[Token]]) -> float:
        total, count = 0.0, 0
        for s in sentences:
            total += self.sentence_logprob(s)
            count += len(s) + 1
        if count == 0:
            raise ValueError("perplexity of no sentences")
        return math.exp(-total / count)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "order": self.order,
            "smoothing": self.smoothing,
            "discount": self.discount,
            "k": self.k,
            "ngrams": [[*g, c] for g, c in sorted(self.ngrams.items(), key=repr)],
        }

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NGramLM":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: LM file not found; build one with `python -m evaluate.lm`"
            ) from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON LM file ({e})") from None
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(
                f"{path}: not a {FORMAT} v{VERSION} file (format={d.get('format')!r}, "
                f"version={d.get('version')!r}); rebuild it with `python -m evaluate.lm`"
            )
        lm = cls(d["order"], d["smoothing"], d["discount"], d["k"])
        for row in d["ngrams"]:
            if len(row) != lm.order + 1:
                raise ValueError(f"{path}: n-gram row {row[:8]} does not have order {lm.order} + count")
            lm.ngrams[tuple(row[:-1])] = int(row[-1])
        lm._build()
        return lm
