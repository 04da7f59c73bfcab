"""A crash-tolerant process pool for per-item jobs (feature extraction).

Jobs run in-process (``workers == 1``) or in worker processes that die with the driver
(``PR_SET_PDEATHSIG`` plus a watchdog thread). A worker that dies (native crash, out of
memory) breaks the pool: finished results stay, the jobs in flight are retried alone in a
fresh pool, and a job that kills its worker even alone becomes a failure record instead of
being retried again. ``failure_message`` turns any exception into that record's one line.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from preprocess.configs import UserError


R = TypeVar("R")  # what one job returns (the feature driver's Result)


def die_with_parent(driver_pid: int, poll_s: float = 0.5) -> None:
    """End this worker process as soon as the driver that started it is gone.

    A killed driver (kill -9, out of memory) cannot shut its pool down, and orphaned workers
    would go on writing cache files and then wait forever for jobs. On Linux the kernel sends
    SIGKILL when the direct parent (the pool's fork server) exits; a daemon thread also polls
    the parent and the driver, which covers other platforms and the driver dying first.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # no libc symbol: the watchdog alone
            pass
    parent = os.getppid()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        while True:
            if os.getppid() != parent or not alive(driver_pid):
                os._exit(1)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def failure_message(e: BaseException) -> str:
    name = type(e).__name__
    msg = str(e).strip().splitlines()[0] if str(e).strip() else name
    if isinstance(e, UserError):  # bad input, already one line naming the file
        return msg
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"unexpected {name}{at}: {msg}"


def run_jobs(
    jobs: Sequence[Any],
    job_fn: Callable[[Any], R],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple,
    on_result: Callable[[R], None],
    crash_result: Callable[[Any, str], R],
    stages: tuple[Callable[[Any], Any], Callable[[Any], R]] | None = None,
    finalizer: Callable[[], None] | None = None,
) -> None:
    """Run ``job_fn`` over ``jobs`` and hand each result to ``on_result`` as it finishes.

    ``workers == 1`` runs in this process (no pickling, easy to debug); with ``stages`` =
    (load, finish), ``job_fn(job) == finish(load(job))`` and the load of the next job overlaps
    the finish of this one. Otherwise a process
    pool runs them with a bounded number in flight. When a worker process dies (segfault in a
    native decoder, out of memory) the pool breaks: the files already written stay, the jobs
    that were in flight are retried one at a time in a fresh pool, and a job that kills its
    worker even alone is reported through ``crash_result`` instead of being retried again.
    ``initializer(*initargs)`` sets up each worker process (or this process once, and then
    ``finalizer()`` releases it at the end: worker processes release theirs by exiting).
    """
    if workers <= 1:
        initializer(*initargs)
        try:
            if stages is None:
                for job in jobs:
                    on_result(job_fn(job))
                return
            # Two-stage pipeline: a thread runs stage 1 of the next job (decode, resize, flow:
            # native code that releases the GIL) while this thread runs stage 2 (MediaPipe).
            load, finish = stages
            with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as prefetch:
                ahead = prefetch.submit(load, jobs[0]) if jobs else None
                for i in range(len(jobs)):
                    loaded = ahead.result()
                    ahead = prefetch.submit(load, jobs[i + 1]) if i + 1 < len(jobs) else None
                    on_result(finish(loaded))
        finally:
            if finalizer is not None:
                finalizer()
        return

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    pending: deque = deque(jobs)
    solo: deque = deque()  # suspects of a crash, retried alone
    max_inflight = 2 * workers
    while pending or solo:
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer, initargs=initargs)
        inflight: dict[Future, tuple[Any, bool]] = {}
        broken = False
        try:
            while (pending or solo or inflight) and not broken:
                if solo:
                    if not inflight:
                        job = solo.popleft()
                        inflight[pool.submit(job_fn, job)] = (job, True)
                else:
                    while pending and len(inflight) < max_inflight:
                        job = pending.popleft()
                        inflight[pool.submit(job_fn, job)] = (job, False)
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    job, alone = inflight.pop(fut)
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if alone:
                            on_result(crash_result(job, "the worker process died on this utterance "
                                                        "(native crash or out of memory); inspect the file"))
                        else:
                            solo.append(job)
                        continue
                    except Exception as e:  # e.g. a result that cannot be pickled back
                        res = crash_result(job, f"unexpected {type(e).__name__} in the worker: {e}")
                    on_result(res)
            if broken:  # every other in-flight job died with the pool: retry each alone
                for fut, (job, alone) in inflight.items():
                    if fut.done() and fut.exception() is None:
                        on_result(fut.result())
                    elif alone:
                        on_result(crash_result(job, "the worker process died on this utterance"))
                    else:
                        solo.append(job)
                inflight.clear()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
