"""MLflow tracking: one run per training, shared by the later stages.

Where runs go: ``$MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` of
params.yaml, whose default ``sqlite:///mlflow.db`` is what ``mlflow ui`` (MLflow
3) opens when started from the repository root without flags; artifacts land
in ``mlruns/`` beside the database. A relative store path is taken from the
user's workspace (:func:`workspace_root`), so experiments that ``dvc exp run
--queue`` runs in ``.dvc/tmp/exps/...`` log into the workspace's store too.

A run gets: every param of params.yaml flattened (``train.lr``, ``model.ngf``,
...), the git commit, the DVC experiment name (``$DVC_EXP_NAME``, set by
``dvc exp run``) as run name and tag, ``degraded.*`` tags for anything that
makes the numbers incomparable with the paper (random VGG features, CPU
training, loss terms switched off), per-step metrics, sample grids and the
final checkpoint. The run id is written to ``metrics/mlflow_run.json`` (a DVC
metrics file: ``dvc exp show`` lists it) so that ``evaluate`` logs its metrics
to the same run (:func:`open_run_from_file`).

Tracking never stops a training: an unreachable server or a failing call
warns once and the run goes on untracked. Two trainings at once (``dvc queue
start -j 2``) share a sqlite store through sqlite's own locking; a call that
finds the database locked is retried with backoff.

A sqlite store records absolute artifact paths (MLflow resolves them when an
experiment is created), so a store copied with its checkout (``cp -r``) still
points at the original's ``mlruns/``. Such a store is refused, with one line
that names the fix, rather than letting the copy write into the original's
folders. A team shares one store through ``mlflow server`` (README:
"One tracking server for a team"), whose ``mlflow-artifacts:`` locations the
server resolves itself.

:class:`Tracker` is a no-op when tracking is disabled, and on every rank but 0
under DDP, so that callers never branch on it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import numpy as np

from casd.config import Checks, flatten
from casd.fileio import write_json

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_FILE = Path("metrics/mlflow_run.json")
ARTIFACT_FOLDER = "mlruns"           # artifacts of a sqlite store live in this folder beside the database
# MLflow <= 3.x UIs that read it open an experiment tagged this way on its runs table (not the GenAI
# overview); MLflow 3.17's UI chooses by its workflow switch instead, see :func:`runs_page`.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
CONNECT_TIMEOUT_S = 3.0              # probe of an http(s) tracking server before a run starts
PAUSE_AFTER_FAILURE_S = 60.0         # a failing store is left alone this long: a dead server costs no step time
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # MLflow: 7, 120
_MAX_PARAM_LEN = 6000   # MLflow's limit on a param value
_BATCH = 100            # MLflow's limit on params per log_batch call
_LOCKED_RETRIES = 8     # "database is locked" from another reader/writer (e.g. `mlflow ui`): retry with backoff

_refused: set[str] = set()   # stores found unreachable or copied in this process: warned once, not tried again


class TrackingUnavailable(Exception):
    """The tracking store cannot be reached; tracking is skipped, never the work."""

    def __init__(self, message: str, repeated: bool = False):
        super().__init__(message)
        self.repeated = repeated  # already reported in this process


class CopiedStore(TrackingUnavailable):
    """A sqlite store whose artifact locations lie in another checkout's ``mlruns/``."""


@dataclass
class TrackingConfig:
    """The ``tracking:`` section of params.yaml."""

    enabled: bool = True
    uri: str = DEFAULT_URI       # $MLFLOW_TRACKING_URI wins over this
    experiment: str = "casd"
    model_name: str = "casd-generator"  # the train stage logs its generator as this registered MLflow Model; "" = not

    def __post_init__(self):
        checks = Checks("tracking")
        checks.flag("enabled", self.enabled)
        checks.require(isinstance(self.experiment, str) and bool(self.experiment),
                       f"experiment must be a non-empty name, got {self.experiment!r}")
        checks.require(isinstance(self.model_name, str), f"model_name must be a name or \"\", got {self.model_name!r}")
        checks.done()

    def resolved_uri(self) -> str:
        """The store URI, a relative sqlite / file path made absolute against :func:`workspace_root`."""
        return anchored_uri(os.environ.get("MLFLOW_TRACKING_URI") or self.uri or DEFAULT_URI, workspace_root())


def workspace_root() -> Path:
    """The user's workspace: ``$DVC_ROOT`` when DVC runs the stage, else the current folder.

    DVC sets ``DVC_ROOT`` to the workspace's root for every stage, also for queued and ``--temp``
    experiments, which run in a copy under ``.dvc/tmp/exps/`` (dvc/repo/experiments/queue/base.py).
    """
    root = os.environ.get("DVC_ROOT")
    return Path(root).resolve() if root and Path(root).is_dir() else Path.cwd().resolve()


def anchored_uri(uri: str, root: Path) -> str:
    """``uri`` with a relative local path (``sqlite:///mlflow.db``, ``file:mlruns``, ``mlruns``) made absolute
    against ``root``; any other URI unchanged."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{root / path}"
        return uri
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") and not parsed.netloc:
        path = Path(parsed.path)
        return str(path if path.is_absolute() else root / path)
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute ``sqlite:////...`` URI; None for any other store."""
    if uri.startswith("sqlite:////"):
        return Path(uri[len("sqlite:///"):].split("?")[0])
    return None


def runs_page(base_url: str, experiment_id: str) -> str:
    """The runs table of ``experiment_id`` in the MLflow UI at ``base_url`` (e.g. http://127.0.0.1:5000).

    MLflow 3.17 opens every experiment on its GenAI overview unless the browser last chose
    "Model training"; ``workflowType=machine_learning`` in the address opens the runs table.
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def git_commit(cwd: str | Path = ".") -> tuple[str | None, bool]:
    """(commit hash, working tree dirty) of the repository at ``cwd``; (None, False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, check=True, timeout=30).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, False


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= _MAX_PARAM_LEN else text[:_MAX_PARAM_LEN - 3] + "..."


def _is_locked_error(error: BaseException) -> bool:
    return "database is locked" in str(error) or "database table is locked" in str(error)


def _probe(uri: str) -> None:
    """Raise :class:`TrackingUnavailable` within ``CONNECT_TIMEOUT_S`` if an http(s) store does not answer."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    for key, value in _HTTP_DEFAULTS.items():  # a server that dies mid-run then costs seconds per call, not minutes
        os.environ.setdefault(key, value)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise TrackingUnavailable(f"tracking server {uri} unreachable ({e})") from None


class _Store:
    """An MlflowClient on one store, with the locked-database retries."""

    def __init__(self, uri: str):
        if uri in _refused:
            raise TrackingUnavailable(f"tracking store {uri} refused earlier in this process", repeated=True)
        try:
            _probe(uri)
        except TrackingUnavailable:
            _refused.add(uri)
            raise
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.db = sqlite_path(uri)
        if self.db is not None and not self.db.exists():
            _create_sqlite_store(self.db)
        self.client = self.call(MlflowClient, uri)

    def call(self, action: Callable, *args, **kwargs):
        for attempt in range(_LOCKED_RETRIES):
            try:
                return action(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - MLflow wraps sqlite's OperationalError in its own types
                if not _is_locked_error(e) or attempt == _LOCKED_RETRIES - 1:
                    raise
                time.sleep(0.2 * 2 ** attempt)

    def artifact_root(self) -> Path | None:
        return self.db.parent / ARTIFACT_FOLDER if self.db is not None else None

    def check_location(self, location: str | None) -> None:
        """Refuse (:class:`CopiedStore`) an artifact location in another checkout's ``mlruns/``.

        ``location``: an experiment's artifact location or a run's artifact URI, as MLflow stored it.
        Object stores, ``mlflow-artifacts:`` and folders outside any ``mlruns/`` are left alone.
        """
        root = self.artifact_root()
        parsed = urlparse(location or "")
        if root is None or not location or parsed.scheme not in ("", "file"):
            return
        other = next((p for p in Path(parsed.path).parents if p.name == ARTIFACT_FOLDER), None)
        if other is None or other == root:
            return
        _refused.add(self.uri)
        raise CopiedStore(
            f"{self.db} was copied from another checkout (its artifacts live in {other}), and MLflow keeps "
            f"absolute artifact paths, so this checkout would write into that one's folders; fix: move "
            f"{self.db.name} and {ARTIFACT_FOLDER}/ aside here for a fresh store, or point MLFLOW_TRACKING_URI "
            f"at the original store or at a shared `mlflow server`")

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created (with its artifacts beside the database) if missing."""
        def get_or_create():
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment
            root = self.artifact_root()
            # explicit location: MLflow's default is ./mlruns of the *current* folder, which for a queued
            # experiment is a temporary workspace that DVC deletes afterwards
            location = str(root / _folder_name(name)) if root is not None else None
            experiment_id = self.client.create_experiment(name, artifact_location=location)
            self.client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND_TAG)
            return self.client.get_experiment(experiment_id)
        experiment = self.call(get_or_create)
        self.check_location(experiment.artifact_location)
        return experiment.experiment_id

    def get_run(self, run_id: str):
        """The run ``run_id`` (raises if it is not in this store), refused if it writes into another checkout."""
        run = self.call(self.client.get_run, run_id)
        self.check_location(run.info.artifact_uri)
        return run


def _create_sqlite_store(db: Path) -> None:
    """A new sqlite store at ``db``, created and migrated by MLflow in a private file, then moved into place.

    Two trainings that start at once on a fresh store (``dvc queue start -j 2``) would otherwise run MLflow's
    schema migrations against each other ("duplicate column name"). A hard link never replaces a store
    another process put there first.
    """
    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    private = db.with_name(f".{db.name}.{os.getpid()}.new")
    try:
        MlflowClient(f"sqlite:///{private}").search_experiments()  # the first call creates the tables
        try:
            os.link(private, db)
        except FileExistsError:
            pass  # another process was first: its store is complete, since it too was moved in whole
        except OSError:  # a file system without hard links
            if not db.exists():
                os.replace(private, db)
    finally:
        private.unlink(missing_ok=True)


def _registered_model(client, name: str) -> None:
    """Create registered model ``name`` unless it exists (two trainings at once may both try)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "experiment"


class Tracker:
    """One MLflow run (or nothing, when ``active`` is False)."""

    def __init__(self, run_id: str | None = None, store: _Store | None = None):
        self.store = store
        self.client = store.client if store is not None else None
        self.run_id = run_id
        self.experiment_id: str | None = None
        self._warned = False
        self._paused_until = 0.0

    def _call(self, action: Callable, *args, **kwargs):
        return self.store.call(action, *args, **kwargs) if self.store is not None else action(*args, **kwargs)

    def _safely(self, action, *args, force: bool = False, **kwargs) -> None:
        """Run a logging call; a failing store warns once and is left alone for a while (unless ``force``),
        so that a long training neither dies nor waits on it."""
        if not force and time.monotonic() < self._paused_until:
            return
        try:
            self._call(action, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any client / network error
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
            if not self._warned:
                warnings.warn(f"MLflow logging to run {self.run_id} failed ({type(e).__name__}: {e}); "
                              "continuing without it (metrics/ files are still written)")
                self._warned = True

    @property
    def active(self) -> bool:
        return self.client is not None

    @classmethod
    def disabled(cls) -> "Tracker":
        return cls()

    @classmethod
    def start(cls, config: TrackingConfig, params: Mapping[str, Any], *, run_name: str | None = None,
              tags: Mapping[str, str] | None = None, resume_run_id: str | None = None) -> "Tracker":
        """Open a run: a new one, or ``resume_run_id`` (a resumed training continues its run).

        ``params`` is params.yaml as loaded (nested); it is logged flattened. Default run name: the DVC
        experiment name, else ``<stage>@<commit>``. A store that cannot be reached or fails gives one
        warning and a disabled tracker: tracking never stops the work.
        """
        if not config.enabled:
            return cls.disabled()
        uri = config.resolved_uri()
        try:
            return cls._start(uri, config, params, run_name, tags, resume_run_id)
        except TrackingUnavailable as e:
            if not e.repeated:
                warnings.warn(f"MLflow tracking off for this run: {e}")
        except Exception as e:  # noqa: BLE001 - whatever the store says, the training goes on
            warnings.warn(f"MLflow tracking off for this run: {uri}: {type(e).__name__}: {e}")
        return cls.disabled()

    @classmethod
    def _start(cls, uri, config, params, run_name, tags, resume_run_id) -> "Tracker":
        store = _Store(uri)
        if resume_run_id:
            try:
                run = store.get_run(resume_run_id)
                if run.info.lifecycle_stage == "active":
                    store.call(store.client.update_run, resume_run_id, status="RUNNING")
                    tracker = cls(run_id=resume_run_id, store=store)
                    tracker.experiment_id = run.info.experiment_id
                    tracker.set_tags({"resumed": "true", **(tags or {})})
                    return tracker
            except CopiedStore:
                raise
            except Exception as e:  # noqa: BLE001 - the run may live in another store (MLFLOW_TRACKING_URI changed)
                warnings.warn(f"cannot continue MLflow run {resume_run_id} ({e}); starting a new run")
        experiment_id = store.experiment_id(config.experiment)
        all_tags = dict(tags or {})
        commit, dirty = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
            all_tags["git.dirty"] = str(dirty).lower()
        exp_name = os.environ.get("DVC_EXP_NAME")
        if exp_name:
            all_tags["dvc.exp_name"] = exp_name
        if os.environ.get("DVC_EXP_BASELINE_REV"):
            all_tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
        if not run_name:
            stage = os.environ.get("DVC_STAGE") or all_tags.get("casd.stage") or "train"
            run_name = exp_name or (f"{stage}@{commit[:7]}{'+dirty' if dirty else ''}" if commit else None)
        run = store.call(store.client.create_run, experiment_id, run_name=run_name, tags=all_tags)
        tracker = cls(run_id=run.info.run_id, store=store)
        tracker.experiment_id = experiment_id
        tracker.log_params(flatten(dict(params)))
        return tracker

    def log_params(self, flat: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(flat.items())]
        for i in range(0, len(items), _BATCH):
            self._call(self.client.log_batch, self.run_id, params=items[i:i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._safely(self.client.log_batch, self.run_id, metrics=items[i:i + 1000])

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """``image``: uint8 [H, W, 3]; stored as PNG at ``artifact_file`` (e.g. ``samples/step_000100.png``)."""
        if not self.active:
            return
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            Image.fromarray(image).save(path)
            parent = str(Path(artifact_file).parent)
            self._safely(self.client.log_artifact, self.run_id, str(path), None if parent == "." else parent)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._safely(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_model(self, model_dir: str | Path, artifact_path: str, registered_name: str) -> str | None:
        """Log a saved MLflow Model folder as ``artifact_path`` of this run and register it as a new version of
        ``registered_name`` (created if missing); the version, or None when not tracking or when the store
        fails (one warning: the files are written all the same)."""
        if not self.active:
            return None
        try:
            self._call(self.client.log_artifacts, self.run_id, str(model_dir), artifact_path)
            self._call(_registered_model, self.client, registered_name)
            version = self._call(self.client.create_model_version, registered_name,
                                 f"runs:/{self.run_id}/{artifact_path}", run_id=self.run_id)
            return version.version
        except Exception as e:  # noqa: BLE001 - tracking never stops the work
            warnings.warn(f"MLflow: logging the model {registered_name} to run {self.run_id} failed "
                          f"({type(e).__name__}: {e}); its files are written all the same")
            return None

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        if self.active:
            self._safely(self.client.set_terminated, self.run_id, status, force=True)

    def write_run_file(self, path: str | Path = RUN_FILE, config: TrackingConfig | None = None) -> None:
        """Record the run for later stages and for ``dvc exp show`` (a DVC metrics file);
        ``{"run_id": null}`` when not tracking. ``config`` is accepted for callers that pass it."""
        write_json(path, {"run_id": self.run_id, "experiment_id": self.experiment_id if self.active else None})



def open_run_from_file(config: TrackingConfig, path: str | Path = RUN_FILE) -> Tracker:
    """The run a previous stage recorded in ``path``, in this checkout's store (``config``);
    a disabled Tracker if none was recorded.

    For the evaluate stage: ``open_run_from_file(cfg).log_metrics({"fid": ...}, step)``. Raises if the run is
    not in the store (for instance a run file copied from another checkout) or the store is unreachable.
    """
    path = Path(path)
    if not config.enabled or not path.is_file():
        return Tracker.disabled()
    info = json.loads(path.read_text(encoding="utf-8"))
    if not info.get("run_id"):
        return Tracker.disabled()
    store = _Store(config.resolved_uri())
    run = store.get_run(info["run_id"])  # fails loudly if the run is not in this store or the store is a copy
    tracker = Tracker(run_id=info["run_id"], store=store)
    tracker.experiment_id = run.info.experiment_id
    return tracker
