"""Text error correction (KD-MSLRT): corruption statistics, learning a tiny grammar, the
conservative fallback, checkpoints, bad input and the command line."""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distill.correction import (
    CorrectionConfig,
    GlossCorrector,
    confusions_from_hypotheses,
    correct,
    corrupt,
    load_corrector,
    main,
    train_corrector,
)
from preprocess.manifest import Utterance, write_manifest
from preprocess.vocab import Vocabulary

# A tiny grammar of 12 glosses: TIME WEATHER REGION [STARK].
TIME = ["MORGEN", "HEUTE", "ABEND"]
WEATHER = ["REGEN", "SONNE", "SCHNEE", "WIND"]
REGION = ["NORD", "SUED", "OST", "WEST"]


def sentences(seed: int, n: int) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = [rng.choice(TIME), rng.choice(WEATHER), rng.choice(REGION)]
        if rng.random() < 0.5:
            s.append("STARK")
        out.append(s)
    return out


def edit_distance(a: list[str], b: list[str]) -> int:
    """Plain Levenshtein distance (unit costs), independent of the package's aligner."""
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, row = row, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
    return row[-1]


TINY = CorrectionConfig(d_model=32, nhead=4, encoder_layers=1, decoder_layers=1, ff_dim=64, dropout=0.0,
                        max_len=12, epochs=20, lr=5e-3, batch_size=64, seed=0)
NOISE = replace(TINY, p_ins=0.15, p_del=0.15, p_sub=0.15)  # how the test inputs are corrupted


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[GlossCorrector, Path, list[list[str]]]:
    train = sentences(0, 300)
    vocab = Vocabulary.build(train)
    path = tmp_path_factory.mktemp("corrector") / "corrector.pt"
    model = train_corrector(train, vocab, TINY, path, progress=False)
    return model, path, train


@pytest.fixture(scope="module")
def corrupted_set(trained) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(clean references, corrupted hypotheses that each differ from their reference)."""
    model, _, _ = trained
    pool = list(model.vocab.tokens[1:])
    rng = random.Random(7)
    refs, hyps = {}, {}
    for i, s in enumerate(sentences(1, 150)):
        c = corrupt(s, pool, NOISE, rng)
        while c == s:
            c = corrupt(s, pool, NOISE, rng)
        refs[f"u{i}"], hyps[f"u{i}"] = s, c
    return refs, hyps


# --- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("d_model", 30), ("epochs", 0), ("p_ins", 1.5), ("p_del", -0.1), ("dropout", 1.0),
    ("max_grow", -1), ("lr", 0.0), ("accept_margin", float("nan")),
])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CorrectionConfig(**{field: value})


def test_rates_that_cannot_both_happen_are_refused():
    with pytest.raises(ValueError, match="p_del"):
        CorrectionConfig(p_del=0.6, p_sub=0.6)


# --- corruption -------------------------------------------------------------------------------
ORIG = [f"G{i}" for i in range(20)]
POOL = ORIG + [f"X{i}" for i in range(20)]
SAMPLES = 2000


def _only(**rates: float) -> CorrectionConfig:
    return CorrectionConfig(**{"p_ins": 0.0, "p_del": 0.0, "p_sub": 0.0, **rates})


def test_deletion_rate_and_order():
    cfg, rng = _only(p_del=0.2), random.Random(0)
    deleted = 0
    for _ in range(SAMPLES):
        out = corrupt(ORIG, POOL, cfg, rng)
        assert out == [g for g in ORIG if g in out]  # only removals, order kept
        deleted += len(ORIG) - len(out)
    assert deleted / (SAMPLES * len(ORIG)) == pytest.approx(0.2, abs=0.01)


def test_insertion_rate_covers_every_gap():
    cfg, rng = _only(p_ins=0.15), random.Random(1)
    inserted, gaps = 0, Counter()
    for _ in range(SAMPLES):
        out = corrupt(ORIG, POOL, cfg, rng)
        kept = [g for g in out if g in ORIG and out.count(g) == 1]
        assert len(out) >= len(ORIG)
        inserted += len(out) - len(ORIG)
        if kept == ORIG:  # locate unambiguous insertions by the originals around them
            pos = 0
            for g in out:
                if pos < len(ORIG) and g == ORIG[pos]:
                    pos += 1
                else:
                    gaps[pos] += 1
    assert inserted / (SAMPLES * (len(ORIG) + 1)) == pytest.approx(0.15, abs=0.01)
    assert set(gaps) == set(range(len(ORIG) + 1))  # before the first, between all, after the last


def test_substitution_rate_and_uniform_choice():
    cfg, rng = _only(p_sub=0.25), random.Random(2)
    changed, drawn = 0, Counter()
    for _ in range(SAMPLES):
        out = corrupt(ORIG, POOL, cfg, rng)
        assert len(out) == len(ORIG)
        for a, b in zip(ORIG, out):
            if a != b:
                changed += 1
                drawn[(POOL.index(b) - POOL.index(a)) % len(POOL)] += 1  # offset of the substitute
    assert changed / (SAMPLES * len(ORIG)) == pytest.approx(0.25, abs=0.01)
    # uniform over the other glosses: every nonzero offset, never the original, equally often
    assert set(drawn) == set(range(1, len(POOL)))
    expect = changed / (len(POOL) - 1)
    assert max(abs(c - expect) for c in drawn.values()) < 0.25 * expect


def test_confusable_substitutions_follow_the_weights():
    cfg, rng = _only(p_sub=1.0, p_confusable=1.0), random.Random(3)
    conf = {"G0": {"X1": 3.0, "X2": 1.0, "G0": 5.0}}  # a self-pair is ignored
    drawn = Counter(corrupt(["G0"], POOL, cfg, rng, conf)[0] for _ in range(SAMPLES))
    assert set(drawn) == {"X1", "X2"}
    assert drawn["X1"] / SAMPLES == pytest.approx(0.75, abs=0.03)
    # glosses without confusable pairs still fall back to uniform substitution
    assert corrupt(["G5"], POOL, cfg, random.Random(0), conf)[0] != "G5"


def test_combined_rates_give_the_expected_length():
    cfg, rng = _only(p_ins=0.1, p_del=0.1, p_sub=0.1), random.Random(4)
    lengths = [len(corrupt(ORIG, POOL, cfg, rng)) for _ in range(SAMPLES)]
    n = len(ORIG)
    assert sum(lengths) / SAMPLES == pytest.approx(n * 0.9 + (n + 1) * 0.1, abs=0.1)


def test_corruption_is_deterministic_from_the_seed():
    cfg = _only(p_ins=0.2, p_del=0.2, p_sub=0.2)
    a = [corrupt(ORIG, POOL, cfg, random.Random(5)) for _ in range(3)]
    b = [corrupt(ORIG, POOL, cfg, random.Random(5)) for _ in range(3)]
    c = corrupt(ORIG, POOL, cfg, random.Random(6))
    assert a[0] == a[1] == b[0] and c != a[0]


# --- learning the grammar ---------------------------------------------------------------------
def test_correction_reduces_edit_distance(trained, corrupted_set):
    model, _, _ = trained
    refs, hyps = corrupted_set
    fixed = correct(model, hyps)
    before = sum(edit_distance(hyps[u], refs[u]) for u in refs) / len(refs)
    after = sum(edit_distance(fixed[u], refs[u]) for u in refs) / len(refs)
    assert before > 1.0
    assert after < 0.75 * before, (before, after)


def test_clean_sentences_stay_unchanged(trained):
    model, _, _ = trained
    clean = {f"c{i}": s for i, s in enumerate(sentences(2, 150))}
    fixed = correct(model, clean)
    unchanged = sum(fixed[u] == clean[u] for u in clean) / len(clean)
    assert unchanged >= 0.97


def test_fallback_margin_gates_every_correction():
    """On an untrained model: an infinite margin keeps every input; otherwise a candidate is
    taken exactly when its log-probability beats the identity copy's by more than the margin."""
    train = sentences(0, 50)
    vocab = Vocabulary.build(train)
    torch.manual_seed(0)
    model = GlossCorrector(TINY, vocab).eval()
    hyps = {f"h{i}": s for i, s in enumerate(sentences(3, 40))}
    assert correct(model, hyps, margin=float("inf")) == hyps
    idx = vocab.index
    gains = {}
    for uid, h in hyps.items():
        ids = [idx[g] for g in h]
        cand = model.greedy([ids])[0]
        if cand is not None and cand != ids:
            gains[uid] = (float(model.sequence_logprob([ids], [cand]) - model.sequence_logprob([ids], [ids])),
                          vocab.decode(cand))
    assert len(gains) >= 4, "an untrained model should propose some changes"
    margin = sorted(g for g, _ in gains.values())[len(gains) // 2]
    got = correct(model, hyps, margin=margin - 1e-4)
    for uid, h in hyps.items():
        want = gains[uid][1] if uid in gains and gains[uid][0] > margin - 1e-4 else h
        assert got[uid] == want, uid
    assert got != hyps and got != correct(model, hyps, margin=-float("inf"))


def test_batching_does_not_change_results(trained, corrupted_set):
    model, _, _ = trained
    _, hyps = corrupted_set
    some = dict(list(hyps.items())[:40])
    assert correct(model, some, batch_size=1) == correct(model, some, batch_size=64)


def test_empty_and_too_long_hypotheses(trained):
    model, _, _ = trained
    long = ["MORGEN"] * (model.cfg.max_len + 1)
    out = correct(model, {"e": [], "l": long})
    assert out["l"] == long  # longer than max_len: passed through unchanged
    assert all(g in model.vocab.tokens[1:] for g in out["e"])


def test_save_load_round_trip(trained, corrupted_set):
    model, path, _ = trained
    _, hyps = corrupted_set
    loaded = load_corrector(path)
    assert loaded.cfg == model.cfg and loaded.vocab == model.vocab
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert correct(loaded, hyps) == correct(model, hyps)


# --- bad input --------------------------------------------------------------------------------
def test_unknown_gloss_is_named_or_kept(trained):
    model, _, _ = trained
    hyps = {"a": ["MORGEN", "REGEN", "NORD"], "b": ["HEUTE", "HAGEL", "OST"]}
    with pytest.raises(ValueError, match=r"'b'.*'HAGEL'"):
        correct(model, hyps)
    with pytest.raises(ValueError, match="<blank>"):
        correct(model, {"z": ["<blank>"]})
    kept = correct(model, hyps, unknown="keep")
    assert kept["b"] == hyps["b"] and set(kept) == {"a", "b"}


def test_training_sentence_outside_vocabulary_is_refused(tmp_path):
    vocab = Vocabulary.build([["A", "B"]])
    with pytest.raises(KeyError, match="C"):
        train_corrector([["A", "C"]], vocab, TINY, tmp_path / "c.pt", progress=False)
    assert not (tmp_path / "c.pt").exists()


def test_foreign_checkpoint_is_refused(tmp_path):
    (p := tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="other.pt"):
        load_corrector(p)
    torch.save({"model_config": {}, "model": {}}, q := tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="not a gloss-corrector"):
        load_corrector(q)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_corrector(tmp_path / "missing.pt")


def test_confusions_from_hypotheses():
    refs = {"a": ["MORGEN", "REGEN", "NORD"], "b": ["HEUTE", "SONNE", "OST"], "c": ["OST"]}
    hyps = {"a": ["MORGEN", "SONNE", "NORD"], "b": ["STARK", "HEUTE", "WIND", "OST"], "x": ["WEST"]}
    assert confusions_from_hypotheses(refs, hyps) == {"REGEN": {"SONNE": 1}, "SONNE": {"WIND": 1}}


# --- command line -----------------------------------------------------------------------------
def test_cli_train_and_apply(tmp_path, capsys):
    train = sentences(0, 60)
    utts = [Utterance(f"t{i}", "train", "s1", s, None, 0) for i, s in enumerate(train)]
    utts.append(Utterance("d0", "dev", "s1", ["MORGEN", "REGEN", "NORD"], None, 0))
    write_manifest(tmp_path / "manifest.jsonl", utts)
    Vocabulary.build(train).save(tmp_path / "vocab.json")
    (tmp_path / "train_hyp.txt").write_text("t0 " + " ".join(["HEUTE"] + train[0][1:]) + "\n")
    ckpt = tmp_path / "exp" / "corrector.pt"
    rc = main(["train", "--manifest", str(tmp_path / "manifest.jsonl"), "--vocab", str(tmp_path / "vocab.json"),
               "--out", str(ckpt), "--epochs", "2", "--d-model", "32", "--layers", "1", "--batch-size", "16",
               "--margin", "0.5", "--confusion-hyp", str(tmp_path / "train_hyp.txt"), "--no-progress"])
    assert rc == 0 and ckpt.is_file()
    assert load_corrector(ckpt).cfg.accept_margin == 0.5
    (tmp_path / "hyp.txt").write_text("d0 MORGEN REGEN NORD\nd1 HEUTE HEUTE SONNE\nd2\n")
    rc = main(["apply", "--ckpt", str(ckpt), "--hyp", str(tmp_path / "hyp.txt"), "--out", str(tmp_path / "fixed.txt")])
    assert rc == 0
    lines = (tmp_path / "fixed.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["d0", "d1", "d2"]
    assert "of 3 hypotheses" in capsys.readouterr().out

    (tmp_path / "bad.txt").write_text("d0 MORGEN HAGEL\n")
    rc = main(["apply", "--ckpt", str(ckpt), "--hyp", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "o.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.txt" in err and "HAGEL" in err and not (tmp_path / "o.txt").exists()


def test_cli_train_refuses_glosses_outside_the_vocabulary(tmp_path, capsys):
    write_manifest(tmp_path / "m.jsonl", [Utterance("t0", "train", "", ["A", "Z"], None, 0)])
    (tmp_path / "v.json").write_text(json.dumps({"tokens": ["<blank>", "A"]}))
    rc = main(["train", "--manifest", str(tmp_path / "m.jsonl"), "--vocab", str(tmp_path / "v.json"),
               "--out", str(tmp_path / "c.pt"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "t0" in err and "'Z'" in err
