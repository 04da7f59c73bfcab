"""Old import path of ``evaluate.core.decode``, kept only while ``evaluate.infer`` imports from it."""
from evaluate.core.decode import beam_decode, ctc_segments, greedy_decode, timed_glosses  # noqa: F401
