"""Fault injection for the pipeline's stages: a tiny project, a stage run as ``python stages/<name>.py`` with a
signal sent at a random moment, and the checks every such run must pass (tests/test_faults.py runs a few trials
of each; benchmarks/bench_faults.py many).

A trial: copy the project prepared up to the stage, start the stage in its own process group, send the signal
after a random delay the way a user or a scheduler does (SIGINT to the whole group, like Ctrl-C in a terminal;
SIGTERM to the stage process, like ``kill`` or DVC; SIGKILL to the stage process), then check that

- the stage process exits within ``EXIT_BOUND_S`` (a hang is a failure, and the group is killed);
- no process of its group is left (workers die with their parent);
- an interrupted stage says one line (``interrupted``) and no traceback (while it is still importing, Ctrl-C
  ends it quietly: nothing is written yet);
- no temporary file is left in the project (after SIGKILL: once the rerun has cleaned up);
- a rerun completes and its outputs are byte-equal to those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXIT_BOUND_S = 15.0
STAGE_ORDER = ["synth", "split", "resize", "pose", "segment", "test", "evaluate"]
# What each stage writes: compared byte for byte after a rerun (MLflow and timing reports are not outputs).
STAGE_OUTPUTS = {"synth": ["data/raw"], "split": ["data/split"], "resize": ["data/resized"], "pose": ["data/pose"],
                 "segment": ["data/parsing"], "test": ["data/generated", "data/predicted_parsing", "data/strips"],
                 "evaluate": ["metrics/eval.json", "reports/eval_pairs.csv"]}
SIGNALS = {"SIGINT": ("group", signal.SIGINT), "SIGTERM": ("process", signal.SIGTERM),
           "SIGKILL": ("process", signal.SIGKILL)}


def tiny_params(workers: int = 2) -> dict:
    """The repository's params.yaml at a tiny scale: 24 synthetic people-poses, 64x44, a tiny model, no tracking."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(categories=2, identities_per_category=8, poses_per_identity=3, test_fraction=0.25,
                           image_size=[256, 176])
    params["data"].update(workers=workers, image_size=[64, 44])
    params["model"].update(pose_width=8, style_width=8, width=16, mlp_width=16)
    params["tracking"]["enabled"] = False
    params["test"].update(device="cpu", strips=4, batch_size=4)
    params["evaluate"].update(device="cpu", threads=2, metrics=["ssim", "psnr", "colour", "parsing"],
                              fid_cache=False)
    return params


def write_tiny_generator(project: Path, params: dict) -> None:
    """A random-initialised generator of ``params``' model section at ``project/<test.checkpoint>``."""
    import warnings

    import torch

    from casd.checkpoints import save_generator
    from casd.config import from_dict
    from casd.models.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generator = Generator(from_dict(GeneratorConfig, params["model"], "model"))
    save_generator(project / params["test"]["checkpoint"], generator, image_size=params["data"]["image_size"],
                   pose_mode=params["pose"]["mode"], pose_sigma=params["pose"]["sigma"])


def run_stage(project: Path, stage: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=project, env=_env(),
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{stage} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def make_project(root: Path, upto: str, workers: int = 2) -> Path:
    """A tiny project under ``root`` with every stage before ``upto`` run (and a tiny generator)."""
    root.mkdir(parents=True, exist_ok=True)
    params = tiny_params(workers)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_tiny_generator(root, params)
    for stage in STAGE_ORDER[:STAGE_ORDER.index(upto)]:
        run_stage(root, stage)
    return root


def make_projects(root: Path, stages: list[str], workers: int = 2) -> dict[str, Path]:
    """For each of ``stages``, a tiny project ``root/<stage>`` with every stage before it run: the pipeline runs
    once, and a copy of it is taken before each asked-for stage."""
    work = root / "pipeline"
    work.mkdir(parents=True, exist_ok=True)
    params = tiny_params(workers)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_tiny_generator(work, params)
    bases = {}
    for stage in STAGE_ORDER[:max(STAGE_ORDER.index(s) for s in stages) + 1]:
        if stage in stages:
            bases[stage] = root / stage
            shutil.copytree(work, bases[stage], symlinks=True)
        run_stage(work, stage)
    return bases


# Keys of a JSON output that tell what one run did (how many it generated now, how fast), not what it made.
RUN_STATISTICS = {"generated", "skipped", "seconds", "pairs_per_s"}


def snapshot(project: Path, stage: str) -> dict[str, bytes]:
    """{relative path: bytes} of every file ``stage`` writes (JSON objects without their RUN_STATISTICS)."""
    files = {}
    for output in STAGE_OUTPUTS[stage]:
        path = project / output
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            data = file.read_bytes()
            if file.suffix == ".json":
                content = json.loads(data)
                if isinstance(content, dict):
                    data = json.dumps({k: v for k, v in content.items() if k not in RUN_STATISTICS},
                                      sort_keys=True).encode()
            files[file.relative_to(project).as_posix()] = data
    return files


def temp_files(project: Path) -> list[str]:
    return sorted(p.relative_to(project).as_posix() for p in project.rglob(".*.tmp*"))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@dataclass
class Trial:
    stage: str
    signal: str
    delay_s: float
    returncode: int | None
    exit_s: float
    hung: bool
    leftover_processes: int
    temp_files: list[str]
    traceback: bool
    rerun_equal: bool
    stderr: str


def _start(work: Path, stage: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=work, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_work(work: Path, stage: str, process: subprocess.Popen, limit_s: float = 60.0) -> float:
    """Block until the stage's first output path exists (its work has begun) or it exits; returns the time."""
    first = work / STAGE_OUTPUTS[stage][0]
    deadline = time.monotonic() + limit_s
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    return time.monotonic()


def interrupt_once(base: Path, work: Path, stage: str, signame: str, delay_s: float,
                   reference: dict[str, bytes], during_work: bool = True) -> Trial:
    """One trial on a fresh copy of ``base`` (a project prepared up to ``stage``) at ``work``: the signal
    ``delay_s`` after the stage's work began (``during_work``) or after its process started."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work, symlinks=True)
    target, signum = SIGNALS[signame]
    process = _start(work, stage)
    if during_work:
        _wait_for_work(work, stage, process)
    time.sleep(delay_s)
    sent = time.monotonic()
    try:
        if target == "group":
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)
    except ProcessLookupError:
        pass   # it had already finished
    hung = False
    try:
        _, stderr = process.communicate(timeout=EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        hung = True
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
    exit_s = time.monotonic() - sent
    deadline = time.monotonic() + 5.0   # a dying worker may take a moment to go
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftovers = group_members(process.pid)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    # SIGKILL gives no chance to clean up: the rerun must remove what the killed writers left.
    left = [] if signame == "SIGKILL" else temp_files(work)
    run_stage(work, stage)
    left += temp_files(work)
    return Trial(stage=stage, signal=signame, delay_s=round(delay_s, 3), returncode=process.returncode,
                 exit_s=round(exit_s, 3), hung=hung, leftover_processes=len(leftovers), temp_files=left,
                 traceback="Traceback" in stderr, rerun_equal=snapshot(work, stage) == reference,
                 stderr=stderr.strip()[-500:])


def problems(trial: Trial) -> list[str]:
    """What is wrong with a trial; [] when it passed."""
    found = []
    if trial.hung:
        found.append(f"did not exit within {EXIT_BOUND_S} s of {trial.signal}")
    if trial.leftover_processes:
        found.append(f"{trial.leftover_processes} processes of its group left running")
    if trial.temp_files:
        found.append(f"temporary files left: {trial.temp_files[:3]}")
    if trial.traceback:
        found.append(f"printed a traceback: {trial.stderr}")
    if trial.signal != "SIGKILL" and trial.returncode not in (0, 130, 143, -2, -15):
        found.append(f"exit status {trial.returncode}: {trial.stderr}")
    if trial.returncode == 130 and trial.stderr.splitlines()[-1:] != ["interrupted"]:
        found.append(f"interrupted without the one line: {trial.stderr!r}")
    if not trial.rerun_equal:
        found.append("rerun outputs differ from an uninterrupted run")
    return found


def stage_timing(base: Path, work: Path, stage: str) -> tuple[float, float, dict[str, bytes]]:
    """(seconds from start to the first output, seconds of work after it) of an uninterrupted run of
    ``stage`` on a copy of ``base``, and its outputs."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work, symlinks=True)
    start = time.monotonic()
    process = _start(work, stage)
    begun = _wait_for_work(work, stage, process)
    _, stderr = process.communicate(timeout=300)
    if process.returncode != 0:
        raise AssertionError(f"{stage} failed ({process.returncode}): {stderr[-2000:]}")
    return begun - start, time.monotonic() - begun, snapshot(work, stage)


def trials(base: Path, scratch: Path, stage: str, count: int, seed: int = 0,
           signals: tuple[str, ...] = tuple(SIGNALS)) -> list[Trial]:
    """``count`` trials per signal: every other one at a random moment of the stage's work (after its first
    output appears), the others at a random moment of the whole run (start-up included)."""
    startup, work, reference = stage_timing(base, scratch / "reference", stage)
    rng = random.Random(seed)
    runs = []
    for signame in signals:
        for k in range(count):
            during = k % 2 == 0
            delay = rng.uniform(0.0, work if during else startup + work)
            runs.append(interrupt_once(base, scratch / "trial", stage, signame, delay, reference, during))
    return runs
