"""The one worker pool of the data stages: it always exits, and Ctrl-C stops it within seconds.

``multiprocessing.Pool`` can hang for ever: its ``with`` block ends in ``terminate()`` even after success, and a
worker that receives SIGTERM just before it blocks on the task queue's semaphore never acts on it, so the
parent waits in ``join`` (seen once in 1,000 pool lifecycles). Here:

- after success the pool is shut down and joined (each worker takes an end-of-work sentinel), never killed;
- a worker that dies (killed, out of memory) is a :class:`WorkerDied` error (``concurrent.futures`` raises
  ``BrokenProcessPool``), never waited on;
- on Ctrl-C, SIGTERM or any error the parent kills its workers and reaps them; workers ignore SIGINT (a
  terminal sends it to the whole process group: the parent alone decides, so no worker prints a traceback)
  and die at once on SIGTERM, so the temporary files of the writes they were in are removed by the caller
  (:func:`casd.fileio.remove_temp_files`);
- a worker whose parent is killed (SIGKILL) dies with it (Linux ``PR_SET_PDEATHSIG``), never lingers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from casd.errors import CasdError
from casd.fileio import raise_if_interrupted

REAP_SECONDS = 5.0   # after SIGTERM, how long a worker may take to die before SIGKILL


class WorkerDied(CasdError):
    """A worker process ended without returning its result (killed, out of memory)."""


def _prctl_death_signal() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG: die with the parent
        except (OSError, AttributeError):
            pass


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while the workers are forked: a Python signal handler that raises in the
    fork's own callbacks is "ignored" there, and the signal is lost. They are acted on right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a handler inherited through fork would unwind, or hang
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)   # held back while forking (inherited)
    _prctl_death_signal()
    if os.getppid() != parent:   # the parent died before the death signal was armed
        os._exit(1)


def _run_chunk(function: Callable, jobs: Sequence) -> list:
    return [function(job) for job in jobs]


def _chunks(jobs: Sequence, size: int) -> list[Sequence]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


class WorkerPool:
    """``workers`` processes (or threads, for I/O-bound work such as linking files) that map a function over
    jobs; use as a context manager::

        with WorkerPool(2) as pool:
            for result in pool.map(resize_one, jobs):
                ...

    ``workers <= 1`` runs in the calling process. The function and the jobs must be picklable (module-level
    function, tuples) for processes; workers are forked, so they see the parent's modules as they are.
    """

    def __init__(self, workers: int, threads: bool = False):
        self.workers = max(1, int(workers))
        self.threads = threads
        self._executor: ProcessPoolExecutor | ThreadPoolExecutor | None = None
        self._pending: set[Future] = set()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(failed=kind is not None)

    def _start(self, count: int) -> ProcessPoolExecutor | ThreadPoolExecutor:
        if self._executor is None:
            if self.threads:
                self._executor = ThreadPoolExecutor(count)
            else:
                self._executor = ProcessPoolExecutor(count, mp_context=get_context("fork"),
                                                     initializer=_worker_init, initargs=(os.getpid(),))
        return self._executor

    def map(self, function: Callable, jobs: Iterable, ordered: bool = False, chunk: int | None = None) -> Iterator:
        """Yield ``function(job)`` for every job: in the jobs' order with ``ordered``, else as they finish.

        ``chunk`` jobs travel to a worker at a time (default: about 8 chunks per worker, at most 64 jobs).
        """
        jobs = list(jobs)
        if self.workers <= 1 or len(jobs) < 2:
            yield from map(function, jobs)
            return
        count = min(self.workers, len(jobs))
        chunk = chunk or max(1, min(64, len(jobs) // (8 * count)))
        executor = self._start(count)
        with _stop_signals_held():   # the first submit forks the workers
            futures = [executor.submit(_run_chunk, function, part) for part in _chunks(jobs, chunk)]
        self._pending.update(futures)
        try:
            if ordered:
                for future in futures:
                    yield from self._result(future)
                    raise_if_interrupted()
            else:
                waiting = set(futures)
                while waiting:
                    finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                    for future in finished:
                        yield from self._result(future)
                    raise_if_interrupted()
        finally:
            self._pending.difference_update(futures)

    def _result(self, future: Future) -> list:
        try:
            return future.result()
        except BrokenProcessPool as e:
            raise WorkerDied(f"a worker process died without finishing its work ({e}); nothing of it was kept "
                             "(out of memory? run again, or with fewer data.workers)") from None

    def close(self, failed: bool = False) -> None:
        """Shut down: after success, wait for the workers to take their end sentinel and exit; after a failure
        or an interrupt, cancel what has not started, kill the workers and reap them (never blocks for ever)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if not failed and not self._pending:
            executor.shutdown(wait=True)
            return
        self._pending.clear()
        if isinstance(executor, ThreadPoolExecutor):
            # A thread cannot be killed: let the running jobs (short file operations) end, so that none
            # writes a temporary file after the caller has removed them.
            executor.shutdown(wait=True, cancel_futures=True)
            return
        processes = list((executor._processes or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        _kill(processes)


def _kill(processes: list) -> None:
    """SIGTERM every worker, SIGKILL those still alive after REAP_SECONDS, and reap them all."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(REAP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(REAP_SECONDS)

