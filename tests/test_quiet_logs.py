"""MediaPipe's native start-up chatter is captured at the file-descriptor level; real errors still show."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from preprocess.landmarks import is_native_noise

ROOT = Path(__file__).resolve().parents[1]


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_graph_start_prints_nothing_but_errors_pass_through():
    proc = run("""
        import os, sys
        import numpy as np
        from preprocess.landmarks import HolisticExtractor, quiet_native_stderr

        frames = np.zeros((3, 96, 128, 3), np.uint8)
        with HolisticExtractor() as ex:
            ex.process_frame(frames[0]); ex.process_frame(frames[1])
            ex.reset(); ex.process_frame(frames[2])
        with HolisticExtractor() as ex:  # a second graph in the same process
            ex.process_frame(frames[0])
        with quiet_native_stderr():
            os.write(2, b"W0000 00:00:1.0 1 some_calculator.cc:1] chatter\\n")
            os.write(2, b"E0000 00:00:1.0 1 graph.cc:9] a real failure\\n")
            print("python error text", file=sys.stderr)
        print("done")
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "done"
    lines = proc.stderr.splitlines()
    assert lines == ["E0000 00:00:1.0 1 graph.cc:9] a real failure", "python error text"], proc.stderr[-2000:]


def test_noise_classifier():
    assert is_native_noise("W0000 00:00:1796157633.699691    7822 inference_feedback_manager.cc:114] Feedback")
    assert is_native_noise("I0000 00:00:1.0 1 gl_context.cc:1] x")
    assert is_native_noise("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    assert not is_native_noise("E0000 00:00:1.0 1 calculator_graph.cc:1] failed")
    assert not is_native_noise("F0000 00:00:1.0 1 x.cc:1] Check failed")
    assert not is_native_noise("Traceback (most recent call last):")


def test_an_error_shows_even_when_the_process_dies_inside_the_section():
    proc = run("""
        import os, time
        from preprocess.landmarks import quiet_native_stderr

        with quiet_native_stderr():
            os.write(2, b"I0000 00:00:1.0 1 gl.cc:1] chatter\\n")
            os.write(2, b"F0000 00:00:1.0 1 graph.cc:9] Check failed: about to abort\\n")
            time.sleep(0.5)  # lines are forwarded as they come, not at the end of the section
            os._exit(3)
    """)
    assert proc.returncode == 3
    assert proc.stderr.splitlines() == ["F0000 00:00:1.0 1 graph.cc:9] Check failed: about to abort"]
