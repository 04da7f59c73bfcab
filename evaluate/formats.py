"""Old import path of ``evaluate.core.formats``, kept only while ``evaluate.infer`` imports from it."""
from evaluate.core.formats import format_timed_ctm  # noqa: F401
