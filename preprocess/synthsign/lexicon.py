"""What a gloss is: phonology (hand shape, movement, location, ...), the lexicon and the grammar.

The lexicon holds minimal pairs (glosses that differ only in hand shape or only in movement),
so a recogniser must see fine finger detail or the trajectory; the grammar makes sentences
predictable enough for a language model to help but never decisive.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

# ---------------------------------------------------------------------------------------------
# Phonology: hand shapes, movements, locations, orientations
# ---------------------------------------------------------------------------------------------
# Hand shape = (flex index, middle, ring, pinky in 0..1, finger spread 0..1,
#               thumb abduction in degrees from the index side, thumb curl across the palm 0..1).
HAND_SHAPES: dict[str, tuple[float, ...]] = {
    "flat": (0.0, 0.0, 0.0, 0.0, 0.0, 8.0, 0.35),
    "five": (0.0, 0.0, 0.0, 0.0, 1.0, 60.0, 0.0),
    "fist": (1.0, 1.0, 1.0, 1.0, 0.0, 25.0, 1.0),
    "thumb": (1.0, 1.0, 1.0, 1.0, 0.0, 80.0, 0.0),
    "index": (0.0, 1.0, 1.0, 1.0, 0.0, 25.0, 1.0),
    "L": (0.0, 1.0, 1.0, 1.0, 0.0, 85.0, 0.0),
    "U": (0.0, 0.0, 1.0, 1.0, 0.0, 25.0, 1.0),
    "V": (0.0, 0.0, 1.0, 1.0, 1.0, 25.0, 1.0),
    "W": (0.0, 0.0, 0.0, 1.0, 1.0, 25.0, 1.0),
    "Y": (1.0, 1.0, 1.0, 0.0, 0.6, 80.0, 0.0),
    "claw": (0.55, 0.55, 0.55, 0.55, 1.0, 50.0, 0.4),
    "O": (0.6, 0.65, 0.65, 0.7, 0.1, 30.0, 0.65),
}
REST_SHAPE = (0.25, 0.3, 0.35, 0.4, 0.2, 20.0, 0.3)
# Shape-only minimal pairs take a visually close neighbour, so the pair is really confusable.
SHAPE_NEIGHBOURS = {
    "index": ("V", "L"), "V": ("U", "W", "index"), "U": ("V",), "W": ("V",),
    "fist": ("thumb", "index"), "thumb": ("fist", "Y"), "Y": ("thumb",), "L": ("index",),
    "flat": ("five",), "five": ("flat", "claw"), "claw": ("five", "O"), "O": ("claw",),
}
MOVEMENTS = ("still", "circle", "updown", "sideways", "tap", "arc", "diagonal", "twist")
MOVE_NEIGHBOURS = {
    "circle": ("arc", "updown"), "arc": ("circle", "sideways"),
    "updown": ("tap", "sideways", "circle"), "tap": ("updown", "still"),
    "sideways": ("diagonal", "updown", "arc"), "diagonal": ("sideways",),
    "still": ("twist", "tap"), "twist": ("still",),
}
MOVE_DURATION = {"still": 0.8, "circle": 1.2, "updown": 1.1, "sideways": 1.1, "tap": 1.0,
                 "arc": 1.0, "diagonal": 0.9, "twist": 1.0}
# Wrist position of the dominant (right) hand in body units: origin at the shoulder midpoint,
# x towards the image right (the signer's left), y down, 1 = shoulder width.
LOCATIONS: dict[str, tuple[float, float]] = {
    "neutral": (-0.25, 0.78), "chest": (-0.02, 0.50), "chin": (-0.06, -0.05),
    "forehead": (-0.12, -0.40), "cheek": (-0.40, -0.22), "shoulder": (-0.58, 0.32),
    "side": (-0.72, 0.70), "contra": (0.28, 0.45),
    "base": (-0.05, 0.52),  # above the non-dominant palm (two-handed "base" glosses only)
}
# (roll towards the body midline, yaw turning the palm edge-on), degrees.
ORIENTATIONS: dict[str, tuple[float, float]] = {
    "up": (0.0, 0.0), "tilt": (35.0, 0.0), "across": (80.0, 0.0), "edge": (10.0, 70.0),
}
TWO_HAND = ("none", "base", "mirror")
REST_POS = (-0.30, 1.05)  # dominant wrist at rest (lap); the other hand mirrors it
REST_ROLL = 110.0
ND_BASE = ((0.10, 0.80), 95.0)  # non-dominant wrist and roll in "base" glosses (flat hand)


# ---------------------------------------------------------------------------------------------
# Lexicon and grammar
# ---------------------------------------------------------------------------------------------
CATEGORY_POOLS: dict[str, tuple[str, ...]] = {
    "time": ("YESTERDAY", "TOMORROW", "TODAY", "NOW", "MORNING", "EVENING", "WEEK", "LATER"),
    "subject": ("I", "YOU", "MOTHER", "FATHER", "FRIEND", "TEACHER", "DOCTOR", "CHILD",
                "SISTER", "BROTHER", "NEIGHBOUR", "STUDENT"),
    "object": ("BOOK", "CAR", "HOUSE", "WATER", "APPLE", "BALL", "WHEELCHAIR", "COFFEE", "BREAD",
               "LETTER", "PHONE", "BICYCLE", "KEY", "FLOWER", "TABLE", "COMPUTER", "MONEY", "TICKET"),
    "verb": ("GIVE", "SEE", "WANT", "LIKE", "BUY", "READ", "MAKE", "FIND", "BRING", "EAT", "DRINK",
             "OPEN", "LOSE", "SELL", "TAKE", "CARRY"),
    "neg": ("NOT",),
}


def max_vocabulary() -> int:
    return sum(len(p) for p in CATEGORY_POOLS.values())


@dataclass(frozen=True)
class Gloss:
    name: str  # the gloss token written to corpus.csv
    category: str  # grammatical slot: time | subject | object | verb | neg
    shape: str  # dominant hand shape (key of HAND_SHAPES)
    movement: str  # movement of the dominant hand (one of MOVEMENTS)
    location: str  # where the dominant wrist is (key of LOCATIONS)
    orientation: str  # palm orientation (key of ORIENTATIONS)
    two_hand: str  # "none": other hand rests; "base": flat other hand; "mirror": symmetric
    mouth: int  # mouthing pattern 0..3 (0 = none)

    def phonology(self) -> tuple[str, str, str, str, str]:
        return (self.shape, self.movement, self.location, self.orientation, self.two_hand)


def _category_counts(n: int) -> dict[str, int]:
    neg = 1 if n >= 6 else 0
    tim = min(len(CATEGORY_POOLS["time"]), max(1, round(0.15 * n))) if n >= 5 else 0
    rest = n - neg - tim
    subj = max(1, round(0.3 * rest))
    verb = max(1, round(0.3 * rest))
    obj = rest - subj - verb
    counts = {"time": tim, "subject": subj, "object": obj, "verb": verb, "neg": neg}
    # Spill over when a pool is too small (large vocabularies).
    order = ("object", "verb", "subject", "time")
    for cat in order:
        extra = counts[cat] - len(CATEGORY_POOLS[cat])
        if extra > 0:
            counts[cat] -= extra
            for other in order:
                room = len(CATEGORY_POOLS[other]) - counts[other]
                take = min(room, extra)
                counts[other] += take
                extra -= take
    return counts


def build_lexicon(seed: int, num_glosses: int) -> tuple[Gloss, ...]:
    """The vocabulary: ``num_glosses`` glosses, about a third of them in minimal pairs.

    Pairs always share a grammatical category, so the grammar cannot tell them apart and a
    recogniser must see the hand shape (shape pairs) or the trajectory (movement pairs).
    """
    rng = np.random.default_rng([seed, 11])
    counts = _category_counts(num_glosses)
    used: set[tuple[str, ...]] = set()

    def random_gloss(name: str, cat: str) -> Gloss:
        while True:
            two = str(rng.choice(TWO_HAND, p=(0.74, 0.12, 0.14)))
            loc = "base" if two == "base" else str(rng.choice([k for k in LOCATIONS if k != "base"]))
            g = Gloss(name, cat, str(rng.choice(sorted(HAND_SHAPES))), str(rng.choice(MOVEMENTS)),
                      loc, str(rng.choice(sorted(ORIENTATIONS))), two,
                      int(rng.choice(4, p=(0.5, 0.2, 0.15, 0.15))))
            if g.phonology() not in used:
                used.add(g.phonology())
                return g

    def variant(base: Gloss, name: str, kind: str) -> Gloss | None:
        options = SHAPE_NEIGHBOURS[base.shape] if kind == "shape" else MOVE_NEIGHBOURS[base.movement]
        for opt in rng.permutation(options):
            g = replace(base, name=name, **{kind if kind == "shape" else "movement": str(opt)})
            if g.phonology() not in used:
                used.add(g.phonology())
                return g
        return None

    names = {c: [str(x) for x in rng.permutation(p)] for c, p in CATEGORY_POOLS.items()}
    pairs_left = num_glosses // 3
    kinds = ("shape", "movement")
    lexicon: list[Gloss] = []
    # Biggest categories first, so the pairs land where there is room.
    for cat in sorted(counts, key=lambda c: (-counts[c], c)):
        made: list[Gloss] = []
        pool = iter(names[cat][: counts[cat]])
        while len(made) < counts[cat]:
            if pairs_left > 0 and counts[cat] - len(made) >= 2:
                base = random_gloss(next(pool), cat)
                name_b = next(pool)
                made.append(base)
                made.append(variant(base, name_b, kinds[pairs_left % 2]) or random_gloss(name_b, cat))
                pairs_left -= 1
            else:
                made.append(random_gloss(next(pool), cat))
        lexicon.extend(made)
    return tuple(lexicon)


def minimal_pairs(lexicon: Iterable[Gloss]) -> list[tuple[Gloss, Gloss, str]]:
    """Pairs of glosses that differ in exactly hand shape or exactly movement (nothing else)."""
    lex = list(lexicon)
    out = []
    for i, a in enumerate(lex):
        for b in lex[i + 1:]:
            same = (a.location == b.location and a.orientation == b.orientation
                    and a.two_hand == b.two_hand and a.mouth == b.mouth)
            if same and a.shape != b.shape and a.movement == b.movement:
                out.append((a, b, "shape"))
            elif same and a.movement != b.movement and a.shape == b.shape:
                out.append((a, b, "movement"))
    return out


class Grammar:
    """``[TIME] SUBJ [OBJ] VERB [NOT]`` clauses (optionally topicalised ``OBJ SUBJ VERB``).

    Words inside a slot follow Zipf-like weights and verbs prefer some objects, so the gloss
    sequence is predictable enough for a language model to help but never decisive.
    """

    def __init__(self, lexicon: tuple[Gloss, ...], seed: int) -> None:
        rng = np.random.default_rng([seed, 12])
        self.words = {c: [g.name for g in lexicon if g.category == c] for c in CATEGORY_POOLS}
        self.weights = {}
        for c, ws in self.words.items():
            w = 1.0 / (1.0 + rng.permutation(len(ws))) ** 0.7
            self.weights[c] = w / w.sum() if len(ws) else w
        nv, no = len(self.words["verb"]), len(self.words["object"])
        self.affinity = rng.choice([0.25, 1.0, 3.0], size=(nv, max(no, 1)), p=(0.3, 0.45, 0.25))

    def _pick(self, rng: np.random.Generator, cat: str, weights: np.ndarray | None = None) -> str:
        w = self.weights[cat] if weights is None else weights / weights.sum()
        return self.words[cat][int(rng.choice(len(w), p=w))]

    def _clause(self, rng: np.random.Generator, first: bool) -> list[str]:
        out = []
        if first and self.words["time"] and rng.random() < 0.35:
            out.append(self._pick(rng, "time"))
        subj = self._pick(rng, "subject") if rng.random() > 0.1 else None
        obj_i = None
        if self.words["object"] and rng.random() < 0.65:
            obj_i = int(rng.choice(len(self.words["object"]), p=self.weights["object"]))
        vw = self.weights["verb"] * (self.affinity[:, obj_i] if obj_i is not None else 1.0)
        verb = self._pick(rng, "verb", vw)
        obj = self.words["object"][obj_i] if obj_i is not None else None
        order = [obj, subj, verb] if obj and rng.random() < 0.15 else [subj, obj, verb]
        out += [w for w in order if w]
        if self.words["neg"] and rng.random() < 0.2:
            out.append(self._pick(rng, "neg"))
        return out

    def sentence(self, rng: np.random.Generator, min_len: int, max_len: int) -> list[str]:
        words: list[str] = []
        for _ in range(200):
            words = self._clause(rng, True)
            while len(words) < min_len:
                words += self._clause(rng, False)
            if len(words) <= max_len:
                return words
        return words[:max_len]
