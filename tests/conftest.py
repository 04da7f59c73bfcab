"""Shared fixtures: the ../shared test inputs (skipped when absent) and a quiet, 1-thread torch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIGNDISTILL_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder of real test inputs; tests using it skip on a bare clone."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (real clips/annotations are optional test inputs)")
    return SHARED


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield
