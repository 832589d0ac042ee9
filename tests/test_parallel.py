"""The data stages' worker pool: results as the serial map, a dead worker is an error, never a hang, Ctrl-C stops it
within seconds with one line, workers die with their parent, thousands of pool lifecycles never hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from casd.data.parallel import WorkerPool, WorkerDied
from tests.faults import group_members

REPO = Path(__file__).resolve().parents[1]


def square(x: int) -> int:
    return x * x


def die_on_seven(x: int) -> int:
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.parametrize("threads", [False, True])
def test_map_gives_every_result_ordered_or_as_finished(threads):
    jobs = list(range(100))
    with WorkerPool(2, threads=threads) as pool:
        assert list(pool.map(square, jobs, ordered=True)) == [x * x for x in jobs]
        assert sorted(pool.map(square, jobs)) == [x * x for x in jobs]   # a pool serves several maps
    with WorkerPool(1) as pool:
        assert list(pool.map(square, jobs)) == [x * x for x in jobs]


@pytest.mark.timeout(60)
def test_a_worker_that_dies_is_an_error_not_a_hang():
    start = time.monotonic()
    with pytest.raises(WorkerDied, match="a worker process died"):
        with WorkerPool(2) as pool:
            list(pool.map(die_on_seven, range(40), chunk=1))
    assert time.monotonic() - start < 20


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "pool.py"
    script.write_text(textwrap.dedent(body))
    return script


def _run(script: Path, *args: str, timeout: float, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


STRESS = """
import sys
from casd.data.parallel import WorkerPool
def double(x):
    return 2 * x
for i in range(int(sys.argv[1])):
    with WorkerPool(2) as pool:
        assert sorted(pool.map(double, range(42))) == list(range(0, 84, 2))
print("done")
"""


def test_many_pool_lifecycles_never_hang(tmp_path):
    # multiprocessing.Pool's terminate-always exit hung about once in 1,000 of these; benchmarks/bench_faults.py
    # runs many more.
    process = _run(_script(tmp_path, STRESS), "500", timeout=120, stdout=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("a pool lifecycle hung")
    assert process.returncode == 0 and out.strip() == "done", err


SLOW = """
import os, sys, time
from pathlib import Path
from casd.config import run_stage
from casd.data.parallel import WorkerPool

def slow(x):
    Path(sys.argv[1], f"worker-{os.getpid()}").touch()
    time.sleep(60)
    return x

def main():
    with WorkerPool(2) as pool:
        list(pool.map(slow, range(8), chunk=1))

run_stage(main)
"""


def _started(folder: Path, process: subprocess.Popen, count: int = 2) -> list[int]:
    deadline = time.monotonic() + 60
    while len(list(folder.glob("worker-*"))) < count and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    return [int(p.name.split("-")[1]) for p in folder.glob("worker-*")]


def _gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", ["Ctrl-C to the group", "SIGTERM to the parent"])
def test_interrupt_stops_busy_workers_within_seconds_with_one_line(tmp_path, how):
    process = _run(_script(tmp_path, SLOW), str(tmp_path), timeout=60)
    workers = _started(tmp_path, process)
    assert len(workers) == 2
    sent = time.monotonic()
    if how.startswith("Ctrl-C"):
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"still running 15 s after {how}")
    assert time.monotonic() - sent < 10
    assert process.returncode == 130 and err.strip() == "interrupted", err   # no worker traceback
    assert _gone(workers, 5) and not group_members(process.pid)


def test_workers_die_with_a_killed_parent(tmp_path):
    process = _run(_script(tmp_path, SLOW), str(tmp_path), timeout=60)
    workers = _started(tmp_path, process)
    assert len(workers) == 2
    process.kill()
    process.communicate(timeout=15)
    assert _gone(workers, 10), "workers outlived their SIGKILLed parent"
