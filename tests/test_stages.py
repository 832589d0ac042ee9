"""Stage wiring: dvc.yaml -> stages/<name>.py -> casd.stages.<name>, deps that follow the imports, the casd CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from casd import stages
from casd.cli import COMMANDS, main as casd_main
from casd.config import Params, load_params
from casd.errors import ConfigError
from casd.train.job import Outputs, TrainJob
from casd.train.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
DVC_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _casd_imports(tree: ast.AST, current: str, modules: dict[str, Path]) -> set[str]:
    """casd modules imported anywhere in ``tree`` (function-local imports too), packages included."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("casd"):
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & set(modules)
    return found - {current}


def _files_used_by(stage: str) -> set[str]:
    """casd files stage ``stage`` imports, transitively; package __init__ files holding no code are left out."""
    modules = {}
    for path in (REPO / "casd").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    tree = ast.parse(modules["casd.stages"].read_text())
    todo = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.FunctionDef) and node.name == stage):
            todo |= _casd_imports(node, "casd.stages", modules)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        seen.add(name)
        tree = ast.parse(modules[name].read_text())
        todo |= (_casd_imports(tree, name, modules) | _sibling_files_named(tree, name, modules)) - seen
    return {modules[name].relative_to(REPO).as_posix() for name in seen if not _docstring_only(modules[name])}


def _sibling_files_named(tree: ast.AST, module: str, modules: dict[str, Path]) -> set[str]:
    """Modules read as files rather than imported (``Path(__file__).with_name("served_model.py")``: the code
    MLflow runs to load a model), named by a string constant in ``module``."""
    package = module.rsplit(".", 1)[0]
    names = {node.value[:-3] for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py")}
    return {f"{package}.{n}" for n in names if f"{package}.{n}" in modules}


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)


def test_every_dvc_stage_runs_its_casd_stages_function_through_a_script():
    assert set(DVC_STAGES) == set(stages.STAGES)
    for name, stage in DVC_STAGES.items():
        script = REPO / "stages" / f"{name}.py"
        assert stage["cmd"] == f"python stages/{name}.py"
        calls = [node for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Call)]
        assert [ast.literal_eval(call.args[0]) for call in calls if getattr(call.func, "id", None) == "main"] == [name]
        assert "from casd.stages import main" in script.read_text()
        assert stages.STAGES[name] is getattr(stages, name)


@pytest.mark.parametrize("name", sorted(DVC_STAGES))
def test_stage_deps_are_exactly_the_modules_it_imports(name):
    deps = [d for d in DVC_STAGES[name]["deps"] if d.startswith(("casd/", "stages/"))]
    assert deps[:2] == [f"stages/{name}.py", "casd/stages.py"]
    listed = set()
    for dep in deps[2:]:
        path = REPO / dep
        assert path.exists(), dep
        listed |= ({p.relative_to(REPO).as_posix() for p in path.rglob("*.py") if not _docstring_only(p)}
                   if path.is_dir() else {dep})
    assert listed == _files_used_by(name) - {"casd/stages.py"}


def test_domain_modules_parse_no_arguments():
    for path in (REPO / "casd").rglob("*.py"):
        if path.name != "cli.py":
            assert "argparse" not in _imported_names(path), path


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _other_params(tmp_path, **sections) -> Path:
    params = load_params(REPO / "params.yaml")
    for section, values in sections.items():
        params[section] = {**params.get(section, {}), **values}
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("command, section, bad, fragment", [
    ("synth", "synth", {"colour": 1}, "unknown key(s) colour"),                      # from_dict's own check
    ("pose", "pose", {"mode": "banana"}, "mode must be one of onehot, gaussian"),        # the dataclass's check
    ("split", "data", {"image_size": [30, 24]}, "image_size must be"),
    ("train", "train", {"amp": "fp8"}, "amp must be one of"),
    ("test", "test", {"batch_size": 0}, "[test]: batch_size must be an integer >= 1"),
])
def test_a_config_error_names_the_params_file_given(command, section, bad, fragment, tmp_path, capsys):
    other = _other_params(tmp_path, **{section: bad})
    with pytest.raises(SystemExit) as exit_:
        casd_main([command, "--params", str(other)])
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {other} [{section}]: ") and fragment in line, line
    assert "params.yaml" not in line


def test_typed_sections_name_their_file(tmp_path):
    other = _other_params(tmp_path, train={"lr": 0})
    params = Params.load(other)
    with pytest.raises(Exception, match=r"other\.yaml \[train\]: lr must be a number > 0"):
        TrainJob.from_params(params.values, params.path)
    with pytest.raises(Exception, match=r"^params\.yaml \[train\]: lr must be a number > 0"):
        TrainJob.from_params(params.values)  # a mapping of unknown origin: the default name


@pytest.mark.parametrize("train, fragment", [({"resume": "gone.pt"}, "resume 'gone.pt': no such checkpoint"),
                                             ({"norm_batch_chunks": 3}, "batch_size 4 is not divisible")])
def test_config_errors_found_when_training_starts_name_the_params_file(train, fragment, tmp_path):
    from helpers import SIZE, tiny_params, write_prepared

    write_prepared(tmp_path / "data", size=tuple(SIZE))
    job = TrainJob.from_params(tiny_params(**train), tmp_path / "other.yaml")
    with pytest.raises(ConfigError) as error:
        Trainer(job, tmp_path / "data", Outputs.under(tmp_path / "out"))
    assert str(error.value).startswith(f"{tmp_path / 'other.yaml'} [train]: ") and fragment in str(error.value)


def test_a_stage_script_ends_a_user_error_in_one_line(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["pose"] = {**params.get("pose", {}), "sigma": -1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "pose.py")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: params.yaml [pose]: sigma must be a number > 0, got -1"]


def test_data_stages_run_from_a_params_file(tmp_path, monkeypatch):
    """synth -> split -> resize -> pose -> segment through casd.stages on a tiny synthetic set."""
    monkeypatch.chdir(tmp_path)
    values = {"data": {"source": "synthetic", "root": "data/raw", "image_size": [64, 44], "annotation_size": [128, 88],
                       "crop_border": 0, "workers": 1},
              "synth": {"seed": 0, "image_size": [128, 88], "categories": 2, "identities_per_category": 3,
                        "poses_per_identity": 3, "test_fraction": 0.34},
              "pose": {"mode": "onehot"}}
    params = Params(tmp_path / "params.yaml", values)
    made = stages.synth(params)
    placed = stages.split(params)
    assert {phase: placed[phase]["placed"] for phase in ("train", "test")} == {
        "train": made["train_images"], "test": made["test_images"]}
    assert stages.resize(params) == {"train": made["train_images"], "test": made["test_images"]}
    assert stages.pose(params) == {"train": made["train_images"], "test": made["test_images"]}
    assert stages.segment(params)["test"] == made["test_images"]
    with np.load(tmp_path / "data/pose/test.npz") as npz:
        assert npz["keypoints"].shape == (made["test_images"], 18, 2)


def test_casd_help_lists_every_command_and_each_has_its_own_help(capsys):
    casd_main(["--help"])
    listing = capsys.readouterr().out
    for name in [*COMMANDS, *DVC_STAGES]:
        assert f"  {name} " in listing, name
    for name, command in COMMANDS.items():
        assert command.parser().format_help().startswith(f"usage: casd {name}")


def test_importing_the_cli_loads_no_torch():
    code = "import sys, casd.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def _declared_outputs(stage: str) -> set[str]:
    entries = [e for key in ("outs", "metrics", "plots") for e in DVC_STAGES[stage].get(key, [])]
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


@pytest.mark.parametrize("stage", list(DVC_STAGES))
def test_stage_cleans_the_temporary_files_of_exactly_its_dvc_outputs(stage):
    assert set(stages.OUTPUTS[stage]) == _declared_outputs(stage)
