"""evaluate.plot: the data behind each picture, checked by hand, and the files it writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluate import plot as P

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_shape(path) -> tuple[int, ...]:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(path).shape


def test_alignment_rows_place_every_word():
    # A correct, B deleted, C correct, E inserted (S+S would cost 8 > D+I = 6)
    rows = P.alignment_rows(["A", "B", "C"], ["A", "C", "E"], spikes=[2, 8, 12], steps=15)
    assert [(w.op, w.ref, w.hyp, w.step) for w in rows] == [
        ("C", "A", "A", 2.0), ("D", "B", None, 5.0), ("C", "C", "C", 8.0), ("I", None, "E", 12.0)]
    # a deletion after the last gloss sits between it and the end; one before the first, from 0
    assert [w.step for w in P.alignment_rows(["A", "B"], ["A"], [4], 10)] == [4.0, 7.0]
    assert [w.step for w in P.alignment_rows(["A", "B"], ["B"], [6], 10)] == [3.0, 6.0]
    assert [w.op for w in P.alignment_rows(["A"], ["X"], [1], 3)] == ["S"]
    with pytest.raises(ValueError, match="spike positions"):
        P.alignment_rows(["A"], ["A"], [], 3)


def test_confusion_table_counts_aligned_pairs():
    hyps = {"u1": ["A", "X", "C"], "u2": ["A", "X"], "u3": ["B", "C", "C"]}
    refs = {"u1": ["A", "B", "C"], "u2": ["A", "B"], "u3": ["B", "C"]}
    pairs = P.aligned_pairs(hyps, refs)
    assert sorted(pairs) == sorted([("A", "A"), ("B", "X"), ("C", "C"), ("A", "A"), ("B", "X"),
                                    ("B", "B"), ("C", "C"), ("*", "C")])
    labels, mat = P.confusion_table(pairs, top=4)
    # errors: B->X twice (B 2, X 2), an inserted C (* 1, C 1); ties keep first-seen order
    assert labels == ["B", "X", "*", "C"]
    want = np.array([[1, 2, 0, 0],  # B: once right, twice read as X
                     [0, 0, 0, 0],
                     [0, 0, 0, 1],  # nothing in the reference, C in the hypothesis
                     [0, 0, 0, 2]])
    np.testing.assert_array_equal(mat, want)
    assert P.confusion_table(pairs, top=2)[0] == ["B", "X"]
    assert P.confusion_table([("A", "A")]) == ([], pytest.approx(np.zeros((0, 0))))


def write_metrics(path, epochs: int, wer0: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"epoch": e, "lr": 1e-3 / e, "train_loss": 10.0 / e, "dev_loss": 11.0 / e, "dev_wer": wer0 - 5 * e,
             "train_levels": {"main": 5.0 / e, "kd": 2.0 / e}} for e in range(1, epochs + 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 9, "tor')  # a torn last line


def test_curves_of_runs_side_by_side(tmp_path):
    write_metrics(tmp_path / "student" / "metrics.jsonl", 4, 80.0)
    write_metrics(tmp_path / "staged" / "sentences" / "metrics.jsonl", 2, 90.0)
    write_metrics(tmp_path / "staged" / "segments" / "metrics.jsonl", 3, 70.0)
    ser = P.curve_series(P.run_metrics(tmp_path / "student"))
    assert ser["dev_wer"] == ([1.0, 2.0, 3.0, 4.0], [75.0, 70.0, 65.0, 60.0])
    assert set(ser) == {"train_loss", "dev_loss", "dev_wer", "lr", "level:main", "level:kd"}
    staged = P.curve_series(P.run_metrics(tmp_path / "staged"))
    assert staged["dev_wer"][0] == [1.0, 2.0, 3.0, 4.0, 5.0]  # stages follow each other
    one = P.plot_curves([tmp_path / "student"], tmp_path / "one.png")
    two = P.plot_curves([tmp_path / "student", tmp_path / "staged"], tmp_path / "two.png")
    assert png_shape(two)[1] > png_shape(one)[1] * 1.5  # a column per run
    svg = P.plot_curves([tmp_path / "student"], tmp_path / "c.png", svg=True)
    assert svg.suffix == ".svg" and "<svg" in svg.read_text()[:500]
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        P.run_metrics(tmp_path / "nothing")


def test_utterance_confusion_and_distill_pictures(tmp_path, capsys):
    vocab = ["<blank>", "A", "B", "C"]
    path = [0, 1, 1, 0, 0, 2, 0, 0, 3, 0]
    logits = np.full((len(path), 4), -3.0)
    logits[np.arange(len(path)), path] = 3.0
    lp = torch.from_numpy(logits).log_softmax(-1).numpy()
    out = P.plot_utterance(lp, vocab, [1, 2, 3], ["A", "C"], tmp_path / "u.png", seconds_per_step=0.16)
    assert png_shape(out)[0] > 100
    d = P.plot_distill(lp, lp[::-1].copy(), vocab, tmp_path / "d.png", ref=["A"])
    assert png_shape(d)[0] > 100
    (tmp_path / "h.ctm").write_text("u 1 0.0 0.1 A\nu 1 0.1 0.1 X\n")
    (tmp_path / "r.stm").write_text("u 1 s 0.0 1.0 A B\n")
    assert P.main(["confusions", "--hyp", str(tmp_path / "h.ctm"), "--ref", str(tmp_path / "r.stm"),
                   "--out", str(tmp_path / "conf.png")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "conf.png")
    png_shape(tmp_path / "conf.png")
    assert P.main(["curves", str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
