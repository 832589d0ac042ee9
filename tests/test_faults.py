"""Fault injection: SIGINT (Ctrl-C to the process group), SIGTERM and SIGKILL at random moments of the stages
that run workers (synth, split, resize, segment) and of pose, test and evaluate. Every run must exit within
tests/faults.EXIT_BOUND_S, leave no process and no temporary file, say one line, and a rerun must write what an
uninterrupted run writes, byte for byte. A few trials per stage and signal here; benchmarks/bench_faults.py
runs many."""

import pytest

from tests import faults

PARALLEL = ["synth", "split", "resize", "segment"]
SERIAL = ["pose", "test", "evaluate"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return faults.make_projects(tmp_path_factory.mktemp("faults"), PARALLEL + SERIAL)


@pytest.mark.parametrize("stage", PARALLEL + SERIAL)
def test_interrupted_stage_exits_cleanly_and_reruns_to_the_same_outputs(stage, bases, tmp_path):
    # Two trials per signal for the stages with workers (one during the work, one at any moment, start-up
    # included), one for the others.
    count = 2 if stage in PARALLEL else 1
    runs = faults.trials(bases[stage], tmp_path, stage, count=count, seed=(PARALLEL + SERIAL).index(stage))
    assert len(runs) == 3 * count
    failed = {f"{t.signal} after {t.delay_s}s": faults.problems(t) for t in runs if faults.problems(t)}
    assert not failed, failed
    # The signal really landed in the work: at least one trial per stage was stopped, not finished first.
    assert any(t.returncode != 0 for t in runs), [t.returncode for t in runs]
