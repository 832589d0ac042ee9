"""Fault injection at length: many interrupted stage runs, and thousands of worker-pool lifecycles.

    python benchmarks/bench_faults.py [--trials 10] [--lifecycles 5000] [--stages synth,split,resize,...]
                                      [--baseline-lifecycles 2000] [--out reports/bench-faults.json]

1. For each stage and each of SIGINT (to the process group, like Ctrl-C), SIGTERM and SIGKILL: ``--trials``
   runs of ``python stages/<stage>.py`` on a tiny project, each stopped at a random moment (half during the
   stage's work, half at any moment from its start), checked as tests/faults.py says: exit within the bound,
   no process left, no temporary file, one line, a rerun byte-equal to an uninterrupted run.
2. ``--lifecycles`` pool lifecycles (2 workers, 42 trivial jobs, then shut down) of casd's WorkerPool, and
   ``--baseline-lifecycles`` of the pool the data stages used before (``multiprocessing.Pool`` in a ``with``
   block, workers turning SIGTERM into ``sys.exit``). A lifecycle that makes no progress for
   ``--hang-after`` seconds is a hang: counted, its process group killed, the count resumed.

Prints and writes one JSON object: trials per stage and signal, the problems found, exit times, and the hangs.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from casd.fileio import write_json  # noqa: E402
from tests import faults  # noqa: E402

LIFECYCLES = {
    "casd WorkerPool": """
        from casd.data.parallel import WorkerPool
        def run():
            with WorkerPool(2) as pool:
                assert sorted(pool.map(double, range(42))) == list(range(0, 84, 2))
    """,
    "multiprocessing.Pool (before)": """
        import signal
        from multiprocessing import get_context
        def init():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        def run():
            with get_context("fork").Pool(2, initializer=init) as pool:
                assert sorted(pool.imap_unordered(double, range(42), chunksize=2)) == list(range(0, 84, 2))
    """,
}
LOOP = """
import sys
def double(x):
    return 2 * x
{body}
for _ in range(int(sys.argv[1])):
    run()
    print(".", end="", flush=True)
"""


def pool_lifecycles(kind: str, count: int, hang_after: float) -> dict:
    """Run ``count`` lifecycles of pool ``kind`` in child processes; a stall of ``hang_after`` s is a hang."""
    script = Path(tempfile.mkdtemp(prefix="casd-pool-")) / "lifecycles.py"
    script.write_text(LOOP.format(body=textwrap.dedent(LIFECYCLES[kind])))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done, hangs, failures, start = 0, 0, 0, time.monotonic()
    while done < count:
        process = subprocess.Popen([sys.executable, str(script), str(count - done)], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        while True:
            ready, _, _ = select.select([process.stdout], [], [], hang_after)
            if not ready:   # no lifecycle finished in hang_after seconds
                hangs += 1
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                process.wait()
                if process.returncode != 0:
                    failures += 1
                break
            done += chunk.count(b".")
        if failures > 10:
            break
    seconds = time.monotonic() - start
    return {"pool": kind, "lifecycles": done, "hangs": hangs, "failed_processes": failures,
            "seconds": round(seconds, 1), "ms_per_lifecycle": round(1000 * seconds / max(done, 1), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per stage and signal")
    parser.add_argument("--stages", default="synth,split,resize,pose,segment,test,evaluate")
    parser.add_argument("--lifecycles", type=int, default=5000)
    parser.add_argument("--baseline-lifecycles", type=int, default=2000)
    parser.add_argument("--hang-after", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports/bench-faults.json")
    args = parser.parse_args()

    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(faults.STAGE_ORDER))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {faults.STAGE_ORDER}")
    result: dict = {"machine": f"{os.cpu_count()} CPU cores", "exit_bound_s": faults.EXIT_BOUND_S, "stages": {}}
    with tempfile.TemporaryDirectory(prefix="casd-faults-") as scratch:
        bases = faults.make_projects(Path(scratch) / "bases", stages) if stages else {}
        for number, stage in enumerate(stages):
            started = time.monotonic()
            runs = faults.trials(bases[stage], Path(scratch) / "work", stage, args.trials, seed=args.seed + number)
            failed = [{"signal": t.signal, "delay_s": t.delay_s, "problems": faults.problems(t)}
                      for t in runs if faults.problems(t)]
            result["stages"][stage] = {
                "trials": len(runs), "per_signal": dict(Counter(t.signal for t in runs)),
                "stopped_before_finishing": sum(t.returncode != 0 for t in runs),
                "hangs": sum(t.hung for t in runs), "leftover_processes": sum(t.leftover_processes for t in runs),
                "leftover_temp_files": sum(len(t.temp_files) for t in runs),
                "rerun_not_equal": sum(not t.rerun_equal for t in runs), "failed": failed,
                "max_exit_s": max(t.exit_s for t in runs), "seconds": round(time.monotonic() - started, 1)}
            print(stage, json.dumps({k: v for k, v in result["stages"][stage].items() if k != "failed"}), flush=True)
    result["pool_lifecycles"] = []
    for kind, count in (("casd WorkerPool", args.lifecycles),
                        ("multiprocessing.Pool (before)", args.baseline_lifecycles)):
        if count:
            result["pool_lifecycles"].append(pool_lifecycles(kind, count, args.hang_after))
            print(json.dumps(result["pool_lifecycles"][-1]), flush=True)
    result["trials"] = sum(s["trials"] for s in result["stages"].values())
    result["problems"] = sum(len(s["failed"]) for s in result["stages"].values())
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("trials", "problems")}))
    sys.exit(1 if result["problems"] or any(p["hangs"] for p in result["pool_lifecycles"][:1]) else 0)


if __name__ == "__main__":
    main()
