"""Results shared through a DVC remote: push, a fresh clone pulls them and has nothing to reproduce.

A temporary git + DVC repository gets the project's train, test and evaluate stages and artifacts (dvc.yaml,
as they are), its .gitignore, the package sources, the tiny prepared data set (``dvc add``-ed) and tiny
params, MLflow off. After ``dvc repro``, a commit, a local remote (``dvc remote add -d``), a version tag of the
``casd-generator`` artifact and ``dvc push``, a ``git clone`` + ``dvc pull`` elsewhere must give every output
byte for byte and a ``dvc status`` with nothing to reproduce: an output that neither git (it is git-ignored)
nor the remote (it is ``cache: false``) carries would show as deleted there. ``dvc artifacts get`` then
downloads the generator from the repository, and from a bare copy of it (no DVC cache: from the remote).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

from helpers import run_ok, tiny_dvc_repo, tiny_pipeline_params

pytestmark = pytest.mark.slow

ARTIFACT = "casd-generator"


def _digests(root: Path, path: str) -> dict[str, str]:
    """{file under root/path: its SHA-256}, path a file or a folder."""
    top = root / path
    files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_pushed_results_pull_into_a_fresh_clone_with_nothing_to_reproduce(tiny_prepared, tmp_path):
    started = time.monotonic()
    repo, mate, remote = tmp_path / "repo", tmp_path / "mate", tmp_path / "remote"
    env = tiny_dvc_repo(repo, tiny_prepared, tiny_pipeline_params(tracking=False))
    run_ok(["dvc", "repro"], repo, env, timeout=300)
    run_ok(["dvc", "remote", "add", "-d", "store", str(remote)], repo, env)
    run_ok(["git", "add", "-A"], repo, env)
    run_ok(["git", "commit", "-q", "-m", "results"], repo, env)
    assert run_ok(["git", "status", "--porcelain"], repo, env) == ""
    run_ok(["git", "tag", "-a", f"{ARTIFACT}@v0.1.0", "-m", "tiny generator"], repo, env)
    run_ok(["dvc", "push"], repo, env)

    run_ok(["git", "clone", "-q", str(repo), str(mate)], tmp_path, env)
    assert not (mate / ".dvc" / "cache").exists()
    run_ok(["dvc", "pull"], mate, env)
    assert json.loads(run_ok(["dvc", "status", "--json"], mate, env)) == {}
    assert "Data and pipelines are up to date." in run_ok(["dvc", "status"], mate, env)
    assert "are in sync" in run_ok(["dvc", "status", "--cloud"], mate, env)
    assert json.loads(run_ok(["dvc", "data", "status", "--json"], mate, env)) == {}
    assert run_ok(["git", "status", "--porcelain"], mate, env) == ""

    # every output, metrics and plots included, arrived as it was written: through git or through the remote
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    outs = [out["path"] for stage in lock.values() for out in stage.get("outs", [])]
    assert {"reports/eval_protocol.json", "metrics/eval.json", "models/generator.pt", "checkpoints"} <= set(outs)
    for out in outs:
        assert _digests(mate, out) == _digests(repo, out) != {}, out

    generator = (repo / "models" / "generator.pt").read_bytes()
    bare = tmp_path / "hub.git"   # a git server's copy: no work tree, no DVC cache
    run_ok(["git", "clone", "-q", "--bare", str(repo), str(bare)], tmp_path, env)
    for source in (repo, bare):
        got = tmp_path / f"from-{source.name}.pt"
        run_ok(["dvc", "artifacts", "get", str(source), ARTIFACT, "-o", str(got)], tmp_path, env)
        assert got.read_bytes() == generator, source
    print(f"dvc remote round trip: {time.monotonic() - started:.0f} s")
