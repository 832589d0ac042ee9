"""Helpers shared by several test modules: a tiny prepared dataset written directly, tiny training params, tiny
generators and their files, what the test stage leaves behind, a tiny git + DVC copy of the project's last three
stages, a free port and a served MLflow process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from casd.data.tables import write_pairs
from casd.losses import LossConfig
from casd.models.generator import Generator, GeneratorConfig

SIZE = [32, 24]
PROJECT = Path(__file__).resolve().parents[1]


def write_prepared(root, size=(32, 24), identities=3, poses=3, test_identities=1, seed=0):
    """Tiny prepared dataset in the contract layout (data/split, resized, pose, parsing) under ``root``.

    Each person: a torso (upper clothes, region 5) and legs (region 7) in the
    identity's colours around its keypoints, arms (region 6) on the left side
    only, so that flips are visible. Returns {phase: list of names}.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    names_by_phase = {}
    for phase, ids in (("train", range(identities)), ("test", range(identities, identities + test_identities))):
        names, keypoints, pairs = [], [], []
        (root / "resized" / phase).mkdir(parents=True, exist_ok=True)
        (root / "parsing" / phase).mkdir(parents=True, exist_ok=True)
        (root / "split").mkdir(parents=True, exist_ok=True)
        for ident in ids:
            colours = rng.integers(0, 256, size=(3, 3))
            person = []
            for p in range(poses):
                name = f"fashionWOMENDressesid{ident:08d}0{p + 1}_{p + 1}front.jpg"
                kp = np.full((18, 2), -1, dtype=np.int16)
                cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
                kp[1] = (cy - h // 4, cx)                  # neck
                kp[2], kp[5] = (cy - h // 4, cx - 3), (cy - h // 4, cx + 3)   # shoulders: right at smaller x
                kp[8], kp[11] = (cy + 2, cx - 2), (cy + 2, cx + 2)          # hips
                kp[9], kp[12] = (min(cy + h // 4, h - 1), cx - 2), (min(cy + h // 4, h - 1), cx + 2)  # knees
                kp[0] = (max(cy - h // 3, 0), cx)          # nose
                kp[7] = (cy, min(cx + 6, w - 1))           # left wrist only
                regions = np.zeros((h, w), np.uint8)
                regions[kp[1, 0]:kp[8, 0], kp[2, 1]:kp[5, 1] + 1] = 5
                regions[kp[8, 0]:kp[9, 0], kp[8, 1]:kp[11, 1] + 1] = 7
                regions[kp[5, 0]:kp[7, 0] + 1, kp[5, 1] + 1:kp[7, 1] + 1] = 6
                image = np.full((h, w, 3), 200, np.uint8)
                for region, colour in zip((5, 7, 6), colours):
                    image[regions == region] = colour
                Image.fromarray(image).save(root / "resized" / phase / name, quality=95)
                Image.fromarray(regions).save(root / "parsing" / phase / (name[:-4] + ".png"))
                names.append(name)
                keypoints.append(kp)
                person.append(name)
            pairs += [(a, b) for a in person for b in person if a != b]
        write_pairs(root / "split" / f"pairs-{phase}.csv", pairs)
        (root / "pose").mkdir(parents=True, exist_ok=True)
        np.savez_compressed(root / "pose" / f"{phase}.npz", names=np.array(names, dtype=str),
                            keypoints=np.stack(keypoints))
        names_by_phase[phase] = names
    return names_by_phase


def tiny_loss() -> dict:
    names = {f.name for f in dataclasses.fields(LossConfig)}
    loss = {}
    for key in ("cx", "lpips"):  # the slow terms: off for tests (they have their own tests)
        if key in names:
            loss[key] = 0.0
    for key in ("vgg_weights", "cx_vgg_weights", "lpips_weights"):
        if key in names:
            loss[key] = "none"
    return loss


def tiny_params(**train_overrides) -> dict:
    """Tiny model and loop on the 32x24 test data; VGG-heavy terms stay on except CX and LPIPS."""
    train = {"epochs_constant": 2, "epochs_decay": 1, "pairs_per_epoch": 8, "batch_size": 4, "disc_width": 8,
             "deterministic": True, "threads": 1, "save_every": 2, "checkpoint_every_steps": 1, "log_every": 1,
             "sample_every": 2, "seed": 7}
    train.update(train_overrides)
    return {"data": {"image_size": SIZE}, "pose": {"mode": "onehot", "sigma": 6.0},
            "model": {"pose_width": 8, "style_width": 8, "width": 16, "mlp_width": 16, "adain_blocks": 2,
                      "modulated_blocks": 2, "vgg_weights": "none"},
            "loss": tiny_loss(), "train": train, "tracking": {"enabled": False}}


def tiny_generator(seed: int = 0, **overrides) -> Generator:
    """A freshly built ``GeneratorConfig.tiny(**overrides)`` drawn from ``seed`` (random VGG, train mode)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random VGG warning
        return Generator(GeneratorConfig.tiny(**overrides))


def responsive_tiny_generator(seed: int = 0) -> Generator:
    """:func:`tiny_generator` in eval mode whose decoder reads its inputs: at upstream's N(0, 0.02) init
    the tokens barely move the output, so "the swap changed the picture" would be no check."""
    generator = tiny_generator(seed).eval()
    with torch.no_grad():
        for name, param in generator.named_parameters():
            if name.startswith(("decoder", "style_encoder.fuse")):
                param.normal_(0.0, 0.3)
    return generator


def save_tiny_generator(path, generator: Generator | None = None, image_size=SIZE, **settings) -> Path:
    """``generator`` (default: :func:`responsive_tiny_generator`) as ``casd train`` exports it."""
    from casd.checkpoints import save_generator

    return save_generator(path, responsive_tiny_generator() if generator is None else generator,
                          image_size=image_size, **settings)

def fake_test_stage(root, paths, count=6, strips=2):
    """What the test stage leaves behind: pictures (noisy ground truth), strips, a finished manifest,
    predicted target parsing (the ground truth's, with the first pair's right half set to background)."""
    from casd.data.layout import flat_stem
    from casd.data.tables import read_pairs
    from casd.data.layout import output_name

    pairs = read_pairs(root / "split" / "pairs-test.csv")[:count]
    paths.predicted_parsing.mkdir(parents=True, exist_ok=True)
    for i, (source, target) in enumerate(pairs):
        regions = np.asarray(Image.open(root / "parsing" / "test" / f"{flat_stem(target)}.png"))
        if i == 0:
            regions = regions.copy()
            regions[:, regions.shape[1] // 2:] = 0
        Image.fromarray(regions).save(paths.predicted_parsing / f"{flat_stem(source)}___{flat_stem(target)}.png")
    rng = np.random.default_rng(0)
    rows = []
    for i, (source, target) in enumerate(pairs):
        name = output_name(source, target)
        truth = np.asarray(Image.open(paths.test_images / target).convert("RGB")).astype(float)
        noisy = np.clip(truth + rng.normal(0, 8 + 6 * i, truth.shape), 0, 255).astype(np.uint8)
        paths.generated.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(paths.generated / name)
        rows.append([source, target, name])
    paths.strips.mkdir(parents=True, exist_ok=True)
    for _, _, name in rows[:strips]:
        Image.fromarray(rng.integers(0, 255, (64, 4 * 44, 3), dtype=np.uint8)).save(paths.strips / name)
    (paths.generated / "manifest.json").write_text(json.dumps(
        {"complete": True, "pairs": rows, "strips": [r[2] for r in rows[:strips]], "image_size": [64, 44],
         "checkpoint_source": "casd"}))
    return rows


def tiny_pipeline_params(tracking: bool = True) -> dict:
    """params.yaml with tiny widths, one epoch of 8 pairs, CPU, SSIM and PSNR only: the train, test and
    evaluate stages in seconds on the 64x44 ``tiny_prepared`` set; MLflow in the repository's sqlite store,
    or off (the section stays: the evaluate stage depends on it)."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"].update(image_size=[64, 44], annotation_size=[128, 88])
    params["model"].update(pose_width=8, style_width=8, width=16, mlp_width=16, adain_blocks=1, modulated_blocks=1)
    params["train"].update(epochs_constant=1, epochs_decay=0, pairs_per_epoch=8, batch_size=4, threads=1,
                           checkpoint_every_steps=0, save_every=1, log_every=1, sample_every=0, device="cpu")
    params["test"].update(device="cpu", strips=2, batch_size=8)
    params["evaluate"].update(metrics=["ssim", "psnr"], device="cpu", fid_cache=False, threads=1,
                              report_pairs=1, report_strips=2, batch_size=8)
    params["tracking"] = {"enabled": tracking, "uri": "sqlite:///mlflow.db", "experiment": "casd"}
    return params


def run_ok(cmd: list[str], cwd: Path, env: dict, timeout: float = 120) -> str:
    """stdout of ``cmd`` run in ``cwd``; a non-zero exit fails the test with the ends of both streams."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


PIPELINE_TAIL = ("train", "test", "evaluate")


def tiny_dvc_repo(repo: Path, prepared: Path, params: dict) -> dict:
    """A committed git + DVC repository in ``repo``: the project's train, test and evaluate stages and its
    artifacts (dvc.yaml, as they are), the package sources, the project's .gitignore and .dvcignore,
    ``params`` as params.yaml and the prepared data set ``prepared`` (split, resized, pose, parsing)
    ``dvc add``-ed. Returns the environment to run git and DVC in it (no MLflow or DVC settings inherited)."""
    repo.mkdir(parents=True)
    pipeline = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    (repo / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {s: pipeline["stages"][s] for s in PIPELINE_TAIL}, "artifacts": pipeline["artifacts"]},
        sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("casd", "stages"):
        shutil.copytree(PROJECT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("split", "resized", "pose", "parsing"):
        shutil.copytree(prepared / folder, repo / "data" / folder)
    # the project's ignore rules as they are, but for /data/: here the prepared set is dvc add-ed (in the
    # project, stage outputs), so data/ holds .dvc files for git, and DVC's data/.gitignore keeps the data out
    ignored = (PROJECT / ".gitignore").read_text()
    assert "\n/data/\n" in ignored
    (repo / ".gitignore").write_text(ignored.replace("\n/data/\n", "\n"))
    shutil.copy(PROJECT / ".dvcignore", repo / ".dvcignore")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(GIT_AUTHOR_NAME="casd", GIT_AUTHOR_EMAIL="casd@localhost", GIT_COMMITTER_NAME="casd",
               GIT_COMMITTER_EMAIL="casd@localhost", DVC_NO_ANALYTICS="1", PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1")
    run_ok(["git", "init", "-q", "-b", "main"], repo, env)
    run_ok(["dvc", "init", "-q"], repo, env)
    run_ok(["dvc", "add", "-q", *(f"data/{f}" for f in ("split", "resized", "pose", "parsing"))], repo, env)
    run_ok(["git", "add", "-A"], repo, env)
    run_ok(["git", "commit", "-q", "-m", "tiny project"], repo, env)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_process(command: str, args: list[str], cwd: Path, log_path: Path, env: dict | None = None):
    """``mlflow <command> --host 127.0.0.1 --port <free> <args>`` run in ``cwd`` (``command``: ``ui``, ``server``,
    ``models serve``); yields its URL once /health answers; the server, its uvicorn worker and job runners (one
    session) are stopped afterwards."""
    executable = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    if not Path(executable).is_file():
        pytest.skip("the mlflow command is not installed")
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen([executable, *command.split(), "--host", "127.0.0.1", "--port", str(port), *args],
                            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a cold start (sqlite migrations) on a busy 2-core machine
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow {command} exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow {command} not up after 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def chromium() -> str:
    """The headless Chromium executable; the test is skipped (with the reason) where none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium not installed (Debian: apt-get install -y chromium)")


def render_page(browser: str, url: str, profile: Path, *, window: str, budget_ms: int, timeout_s: float,
                screenshot: Path | None = None) -> tuple[str, str]:
    """(DOM, visible text) of ``url`` after its scripts ran for ``budget_ms`` of virtual time; a screenshot
    too when asked. Nothing but the page's own address is contacted (no sync, updates or background fetches)."""
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--window-size={window}", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=timeout_s)
        assert screenshot.is_file() and screenshot.stat().st_size > 1000
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=timeout_s).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return dom, " ".join(re.sub(r"<[^>]+>", " ", text).split())
