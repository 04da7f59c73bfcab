"""CTC decoding (greedy, prefix beam search, LM) against hand-made and brute-force answers."""
from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from evaluate.core.decode import beam_decode, greedy_decode, prefix_beam_search
from evaluate.core.lm import EOS, UNK, NGramLM
from evaluate.lm import main as lm_main


def peaked(paths: list[list[int]], v: int, p: float = 0.9) -> torch.Tensor:
    """[B, T, V] log-probs putting `p` on the given frame labels, the rest spread evenly."""
    t = max(len(x) for x in paths)
    probs = torch.full((len(paths), t, v), (1 - p) / (v - 1))
    for b, path in enumerate(paths):
        for i, c in enumerate(path):
            probs[b, i, c] = p
    return probs.log()


def collapse(path) -> tuple[int, ...]:
    return tuple(c for c, _ in itertools.groupby(path) if c != 0)


def brute_force(probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """P(labelling) by summing every one of the V^T alignments."""
    t, v = probs.shape
    out: dict[tuple[int, ...], float] = defaultdict(float)
    for path in itertools.product(range(v), repeat=t):
        out[collapse(path)] += float(np.prod([probs[i, c] for i, c in enumerate(path)]))
    return out


# ---------------------------------------------------------------------------------------- greedy


def test_greedy_collapses_repeats_removes_blanks_and_respects_lengths():
    paths = [[1, 1, 0, 1, 2, 2, 3, 0], [2, 2, 2, 0, 0, 3, 3, 1]]
    lp = peaked(paths, v=4)
    assert greedy_decode(lp, torch.tensor([8, 5])) == [[1, 1, 2, 3], [2]]
    assert greedy_decode(lp, torch.tensor([0, 8])) == [[], [2, 3, 1]]
    # logits work too: only the argmax matters
    assert greedy_decode(lp * 3.0 + 7.0, torch.tensor([8, 8])) == [[1, 1, 2, 3], [2, 3, 1]]


def test_greedy_other_blank_index():
    lp = peaked([[3, 3, 1, 3, 0]], v=4)
    assert greedy_decode(lp, torch.tensor([5]), blank=3) == [[1, 0]]


def test_decoders_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        greedy_decode(torch.zeros(3, 4), torch.tensor([4, 4, 4]))
    with pytest.raises(ValueError, match="lengths"):
        beam_decode(torch.zeros(2, 3, 4), torch.tensor([3]))
    with pytest.raises(ValueError, match="blank=5"):
        greedy_decode(torch.zeros(1, 3, 4), torch.tensor([3]), blank=5)


# ------------------------------------------------------------------------------------------ beam


def test_beam1_equals_greedy_on_peaked_posteriors():
    g = torch.Generator().manual_seed(0)
    paths = [torch.randint(0, 6, (20,), generator=g).tolist() for _ in range(8)]
    lp = peaked(paths, v=6, p=0.95)
    lengths = torch.tensor([20, 19, 15, 10, 7, 3, 1, 20])
    assert beam_decode(lp, lengths, beam=1) == greedy_decode(lp, lengths)
    assert beam_decode(lp, lengths, beam=10) == greedy_decode(lp, lengths)


def test_beam_finds_most_probable_labelling_where_greedy_fails():
    # every frame prefers blank (0.6), yet "A" has probability 1 - 0.6^3 - ... > P("")
    probs = np.array([[0.6, 0.4, 0.0 + 1e-9]] * 3)
    probs /= probs.sum(1, keepdims=True)
    truth = brute_force(probs)
    best = max(truth, key=truth.get)
    assert best == (1,)
    lp = torch.from_numpy(np.log(probs)).float()[None]
    assert greedy_decode(lp, torch.tensor([3])) == [[]]
    assert beam_decode(lp, torch.tensor([3]), beam=5) == [list(best)]


@pytest.mark.parametrize("seed", range(6))
def test_beam_scores_equal_brute_force_sum_over_alignments(seed):
    rng = np.random.default_rng(seed)
    t, v = 5, 3
    probs = rng.dirichlet(np.ones(v) * 0.7, size=t)
    truth = brute_force(probs)
    nbest = prefix_beam_search(np.log(probs), beam=1000, token_topk=v)
    got = dict(nbest)
    assert set(got) == {k for k, p in truth.items() if p > 0}
    for labelling, p in truth.items():
        assert math.exp(got[labelling]) == pytest.approx(p, rel=1e-6, abs=1e-12)
    assert nbest[0][0] == max(truth, key=truth.get)
    # the batched entry point agrees with the single-utterance search
    lp = torch.from_numpy(np.log(probs)).float()[None]
    assert beam_decode(lp, torch.tensor([t]), beam=50) == [list(nbest[0][0])]


def test_beam_with_repeated_gloss_needs_a_blank():
    # A A with a blank between must give "A A"; without the blank it collapses to "A"
    lp = peaked([[1, 0, 1], [1, 1, 1]], v=3, p=0.97)
    assert beam_decode(lp, torch.tensor([3, 3]), beam=8) == [[1, 1], [1]]


def test_beam_respects_lengths():
    lp = peaked([[1, 0, 2, 0, 1]], v=3, p=0.97)
    assert beam_decode(lp, torch.tensor([3])) == [[1, 2]]
    assert beam_decode(lp, torch.tensor([0])) == [[]]


# -------------------------------------------------------------------------------------------- LM


def test_lm_changes_the_decision():
    tokens = ["<blank>", "REGEN", "SONNE"]
    # the acoustics slightly prefer REGEN; the LM has (almost) only seen sentences starting with SONNE
    probs = torch.tensor([[[0.15, 0.45, 0.40]]])
    lm = NGramLM(order=2).fit([["SONNE"]] * 20 + [["REGEN", "SONNE"]])
    lengths = torch.tensor([1])
    assert beam_decode(probs.log(), lengths, beam=4) == [[1]]
    assert beam_decode(probs.log(), lengths, beam=4, lm=lm, lm_weight=1.0, tokens=tokens) == [[2]]
    assert beam_decode(probs.log(), lengths, beam=4, lm=lm, lm_weight=0.0, tokens=tokens) == [[1]]


def test_lm_over_ids_without_token_table():
    probs = torch.tensor([[[0.15, 0.45, 0.40]]])
    lm = NGramLM(order=1).fit([[2]] * 10)
    assert beam_decode(probs.log(), torch.tensor([1]), lm=lm, lm_weight=1.0) == [[2]]


CORPUS = [["A", "B", "C"], ["A", "B"], ["B", "C", "C"], ["C"], ["A", "C", "B", "A"]]


@pytest.mark.parametrize("smoothing", ["kn", "addk"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_lm_probabilities_sum_to_one(order, smoothing):
    lm = NGramLM(order=order, smoothing=smoothing).fit(CORPUS)
    assert set(lm.vocabulary) == {"A", "B", "C", EOS, UNK}
    for prefix in ([], ["A"], ["A", "B"], ["C", "C"], ["Z"], ["B", "Z", "A"]):
        total = sum(math.exp(lm.score(prefix, w)) for w in lm.vocabulary)
        assert total == pytest.approx(1.0, abs=1e-12)


def test_lm_values_by_hand():
    corpus = [["A", "B"], ["A"]]
    addk = NGramLM(order=2, smoothing="addk", k=1.0).fit(corpus)
    assert math.exp(addk.score(["A"], "B")) == pytest.approx((1 + 1) / (2 + 4))
    assert math.exp(addk.score([], "A")) == pytest.approx((2 + 1) / (2 + 4))
    kn = NGramLM(order=2, smoothing="kn", discount=0.5).fit(corpus)
    # continuation counts: A 1, B 1, </s> 2 (of 4 bigram types, 3 distinct continuations)
    p_cont_b = (1 - 0.5) / 4 + 0.5 * 3 / 4 * (1 / 4)
    assert math.exp(kn.score(["A"], "B")) == pytest.approx((1 - 0.5) / 2 + 0.5 * 2 / 2 * p_cont_b)
    assert math.exp(kn.score(["Q"], "B")) == pytest.approx(p_cont_b)  # unseen history backs off


def test_lm_save_load_round_trip(tmp_path):
    for sents in (CORPUS, [[1, 2, 3], [2, 3], [3]]):
        lm = NGramLM(order=3).fit(sents)
        lm.save(tmp_path / "lm.json")
        back = NGramLM.load(tmp_path / "lm.json")
        toks = [w for w in lm.vocabulary if w not in (EOS, UNK)]
        for prefix in ([], toks[:1], toks[:2], toks[::-1]):
            for w in lm.vocabulary:
                assert back.score(prefix, w) == lm.score(prefix, w)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="bad.json"):
        NGramLM.load(tmp_path / "bad.json")


def test_lm_rejects_bad_config_and_reserved_tokens():
    with pytest.raises(ValueError, match="order"):
        NGramLM(order=0)
    with pytest.raises(ValueError, match="smoothing"):
        NGramLM(smoothing="wb")
    with pytest.raises(ValueError, match="reserved"):
        NGramLM().fit([["A", EOS]])


def test_lm_cli_builds_from_transcripts(tmp_path, capsys):
    text = tmp_path / "train.txt"
    text.write_text("u1 A B C\nu2 A B\nu3 C\n", encoding="utf-8")
    assert lm_main(["--text", str(text), "--order", "2", "--out", str(tmp_path / "lm.json")]) == 0
    lm = NGramLM.load(tmp_path / "lm.json")
    assert lm.order == 2 and lm.score(["A"], "B") > lm.score(["A"], "C")
    assert "perplexity" in capsys.readouterr().out


def test_numpy_and_tensor_outputs_decode_alike():
    from evaluate.core.decode import decode_outputs, log_softmax

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 20, 6)) * 4).astype(np.float32)
    np.testing.assert_allclose(log_softmax(logits), torch.log_softmax(torch.from_numpy(logits), -1).numpy(),
                               atol=1e-5)
    tokens = ["<blank>", "A", "B", "C", "D", "E"]
    lengths = [20, 13, 1]
    for beam in (1, 5):
        a = decode_outputs(logits, np.array(lengths), tokens, beam=beam)
        b = decode_outputs(torch.from_numpy(logits), torch.tensor(lengths), tokens, beam=beam)
        assert [h.ids for h in a] == [h.ids for h in b] and [len(h.log_probs) for h in a] == lengths
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.log_probs, y.log_probs, atol=1e-5)
