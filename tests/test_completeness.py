"""No stage exits 0 having written nothing for a phase with listed images: each data stage, run alone
(``python stages/<name>.py``) and through ``dvc repro -s -f <name>``, under ``data.on_error: skip``, on inputs
where every item of one phase is bad, fails with one line that names the stage and the count."""

import shutil
import subprocess
import sys

import pytest
import yaml

from casd.data.layout import PARSING_TREE, annotation_file
from tests import faults

STAGES = ["split", "resize", "pose", "segment"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return faults.make_projects(tmp_path_factory.mktemp("complete"), STAGES)


def header_only(project, phase):
    csv = project / "data/raw" / annotation_file(phase)
    csv.write_text(csv.read_text().splitlines()[0] + "\n")


def corrupt_split_images(project, phase):
    for image in (project / "data/split" / phase).glob("*.jpg"):
        image.unlink()   # may be a link into data/raw: replace, never write through
        image.write_bytes(b"not a jpeg")


def remove_parsing(project, phase):
    for image in (project / "data/split" / phase).glob("*.jpg"):
        (project / "data/raw" / PARSING_TREE / f"{image.stem}.png").unlink(missing_ok=True)


DAMAGE = {"split": (header_only, "train"), "resize": (corrupt_split_images, "test"),
          "pose": (header_only, "train"), "segment": (remove_parsing, "test")}


def damaged_copy(base, work, stage):
    shutil.copytree(base, work, symlinks=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["on_error"] = "skip"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    damage, phase = DAMAGE[stage]
    damage(work, phase)
    return phase


@pytest.mark.parametrize("stage", STAGES)
def test_stage_alone_fails_when_it_wrote_nothing_for_a_phase(stage, bases, tmp_path):
    phase = damaged_copy(bases[stage], tmp_path / "p", stage)
    result = subprocess.run([sys.executable, str(faults.REPO / "stages" / f"{stage}.py")], cwd=tmp_path / "p",
                            env=faults._env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"{stage}: none of the " in last and f" {phase} item(s) it was asked for" in last, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("stage", ["pose", "resize"])
def test_dvc_repro_of_the_stage_fails_too(stage, bases, tmp_path):
    work = tmp_path / "p"
    phase = damaged_copy(bases[stage], work, stage)
    for folder in ("casd", "stages"):
        shutil.copytree(faults.REPO / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(faults.REPO / "dvc.yaml", work / "dvc.yaml")
    env = dict(faults._env(), DVC_NO_ANALYTICS="1")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=work, env=env, check=True, timeout=120)
    result = subprocess.run(["dvc", "repro", "-s", "-f", stage], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{stage}: none of the " in output and f" {phase} item(s)" in output, output
