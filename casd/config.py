"""params.yaml -> typed config sections.

Each module owns the dataclass of its own section (``casd.data.synthetic.SynthConfig``,
``casd.train.TrainConfig``, ...); this module only loads the file and turns a
mapping into such a dataclass, refusing unknown keys so that a typo in
params.yaml is an error, not a silently ignored knob.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from casd.errors import ConfigError, user_error_message
from casd.fileio import stop_signals_as_interrupt

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read a params file (YAML mapping of sections)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root or pass --params)")
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f", line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


class SettingError(ConfigError):
    """Bad values in one section; :func:`from_dict` says them with the params file actually read."""

    def __init__(self, section: str, problems: list[str]):
        self.section, self.problems = section, list(problems)
        super().__init__(f"{DEFAULT_PARAMS} [{section}]: " + "; ".join(self.problems))


class Checks:
    """The value checks of one config section (a dataclass's ``__post_init__``): every problem is collected,
    then :meth:`done` raises them together as one :class:`SettingError`::

        checks = Checks("pose")
        checks.choice("mode", self.mode, ("onehot", "gaussian"))
        checks.number("sigma", self.sigma, above=0)
        checks.done()
    """

    def __init__(self, section: str):
        self.section, self.problems = section, []

    def require(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return bool(ok)

    def choice(self, key: str, value: Any, choices: typing.Iterable[Any]) -> bool:
        choices = tuple(choices)
        return self.require(value in choices, f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")

    def number(self, key: str, value: Any, *, minimum: float | None = None, above: float | None = None,
               maximum: float | None = None, integer: bool = False) -> bool:
        """``value`` is a number (an int with ``integer``) ``>= minimum``, ``> above``, ``<= maximum``."""
        kinds = (int,) if integer else (int, float)
        ok = isinstance(value, kinds) and not isinstance(value, bool)
        bounds = []
        if minimum is not None:
            bounds.append(f">= {minimum}")
            ok = ok and value >= minimum
        if above is not None:
            bounds.append(f"> {above}")
            ok = ok and value > above
        if maximum is not None:
            bounds.append(f"<= {maximum}")
            ok = ok and value <= maximum
        requirement = " ".join(["an integer" if integer else "a number", " and ".join(bounds)]).strip()
        return self.require(ok, f"{key} must be {requirement}, got {value!r}")

    def flag(self, key: str, value: Any) -> bool:
        return self.require(isinstance(value, bool), f"{key} must be true or false, got {value!r}")

    def done(self) -> None:
        if self.problems:
            raise SettingError(self.section, self.problems)


def from_dict(cls: type[T], mapping: dict[str, Any] | None, section: str = "",
              source: str | Path = DEFAULT_PARAMS) -> T:
    """Build dataclass ``cls`` from ``mapping`` (section ``section`` of params file ``source``); unknown keys
    are an error.

    Nested dataclass fields are built recursively; lists become tuples where
    the field is annotated as a tuple. A ConfigError raised by the dataclass's own checks is re-raised
    naming ``source`` and the section.
    """
    mapping = dict(mapping or {})
    where = f"{source} [{section or cls.__name__}]"
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in mapping.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{section}.{name}" if section else name, source)
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    except SettingError as e:
        raise ConfigError(f"{where}: {'; '.join(e.problems)}") from None


@dataclasses.dataclass(frozen=True)
class Params:
    """A params file as read: its path (named in every config error) and its sections."""

    path: Path
    values: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PARAMS) -> "Params":
        return cls(Path(path), load_params(path))

    def section(self, cls: type[T], name: str) -> T:
        """Section ``name`` as dataclass ``cls`` (an absent section gives the defaults)."""
        return from_dict(cls, self.values.get(name), name, self.path)


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``: the form MLflow and ``dvc exp run -S`` use."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resolve_device(spec: str, local_rank: int | None = None):
    """``auto`` -> CUDA when available, else CPU; an explicit CUDA device without CUDA is a ConfigError.

    ``local_rank`` (one process per GPU): a bare ``cuda`` / ``auto`` becomes ``cuda:<local_rank>``.
    """
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device


def run_stage(main: Callable[[], Any]) -> None:
    """Run a stage's or a command's ``main``; a user-caused error (see ``user_error_message``) becomes one
    line on stderr and exit status 1; anything else is a bug and keeps its traceback. Ctrl-C and SIGTERM
    are the one line ``interrupted`` and exit status 130."""
    try:
        # Stage scripts import under SIGINT's default action; from here Ctrl-C and SIGTERM (kill, a scheduler)
        # unwind, so that cleanup code runs.
        with stop_signals_as_interrupt():
            main()
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
