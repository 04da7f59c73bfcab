"""The layer every package may import: CTC decoding, the gloss LM, WER scoring and transcript formats.

It imports nothing from ``models``, ``distill`` or the ``evaluate`` apps (only ``preprocess``, the
layer below), so the trainers can decode and score their dev split without importing the apps
that import them; ``tests/test_layers.py`` checks it.
"""
