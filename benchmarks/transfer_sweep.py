"""Train, test and score several settings side by side on one prepared data set: how much colour each transfers.

Each run is the real train -> test -> evaluate stages in a folder of its own (``<runs>/<name>/``) over the same
prepared data (linked, not copied), with the base params file plus the run's overrides. The summary line of a
run holds its overrides, the evaluate stage's numbers (the colour gap it closes on unseen test people, SSIM
and the copy baseline's, the predicted parsing's mIoU) and the training time.

    python benchmarks/transfer_sweep.py --data data --base params.yaml --runs runs.json --out sweep/ --jobs 4

``runs.json``: ``{"name": {"section.key": value, ...}, ...}``; a run's ``"data"`` key names another prepared
data folder for that run. Runs go ``--jobs`` at a time, each with
``--threads`` torch threads (on one GPU, many small runs share it). ``sweep/summary.jsonl`` gets one line per
finished run; ``sweep/strips.tar`` the first test strips of each run as it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PREPARED = ("split", "resized", "pose", "parsing")


def set_key(params: dict, dotted: str, value) -> None:
    section, key = dotted.split(".", 1)
    params.setdefault(section, {})[key] = value


def write_run_folder(folder: Path, data: Path, base: dict, overrides: dict, device: str, threads: int) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name in PREPARED:
        link = folder / "data" / name
        if not link.exists():
            link.symlink_to((data / name).resolve())
    params = json.loads(json.dumps(base))
    set_key(params, "tracking.enabled", False)
    set_key(params, "evaluate.metrics", ["ssim", "colour", "parsing"])
    set_key(params, "evaluate.fid_cache", False)
    set_key(params, "test.strips", 8)
    for section in ("train", "test", "evaluate"):
        set_key(params, f"{section}.device", device)
    set_key(params, "train.threads", threads)
    for key, value in overrides.items():
        set_key(params, key, value)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_one(name: str, overrides: dict, args) -> dict:
    folder = args.runs_dir / name
    overrides = dict(overrides)
    data = Path(overrides.pop("data", args.data))
    write_run_folder(folder, data, args.base_params, overrides, args.device, args.threads)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    started = time.time()
    timings = {}
    with open(folder / "log.txt", "w") as log:
        for stage in ("train", "test", "evaluate"):
            t0 = time.time()
            done = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=folder, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, check=False)
            timings[stage] = round(time.time() - t0, 1)
            if done.returncode:
                return {"name": name, "overrides": overrides, "failed": stage, "log": str(folder / "log.txt")}
    train = json.loads((folder / "metrics" / "train.json").read_text())
    scores = json.loads((folder / "metrics" / "eval.json").read_text())
    summary = {"name": name, "overrides": overrides, "wall_s": round(time.time() - started, 1), "stage_s": timings,
               "train": {k: train.get(k) for k in ("steps", "samples_per_s", "train_seconds", "loss")
                         if k in train},
               "eval": scores}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared data folder (split, resized, pose, parsing)")
    parser.add_argument("--base", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--runs", type=Path, required=True, help="JSON: {name: {section.key: value}}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs-dir", type=Path, default=None, help="run folders (default: <out>/runs)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    args.base_params = yaml.safe_load(args.base.read_text())
    args.runs_dir = (args.runs_dir or args.out / "runs").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.runs.read_text())
    summary_file = args.out / "summary.jsonl"

    lock = threading.Lock()

    def task(item):
        name, overrides = item
        result = run_one(name, overrides, args)
        with lock:
            with open(summary_file, "a") as f:
                f.write(json.dumps(result) + "\n")
            strips = args.runs_dir / name / "data" / "strips"
            with tarfile.open(args.out / "strips.tar", "a") as tar:
                for path in sorted(strips.glob("*.png"))[:4] if strips.is_dir() else []:
                    tar.add(path, arcname=f"{name}/{path.name}")
        scores = result.get("eval", {})
        print(f"{name}: colour gap closed {scores.get('colour_gap_closed')}, pattern gap closed "
              f"{scores.get('pattern_gap_closed')}, ssim {scores.get('ssim')}, "
              f"failed {result.get('failed')} ({result.get('wall_s')} s)", flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(task, runs.items()))


if __name__ == "__main__":
    main()
