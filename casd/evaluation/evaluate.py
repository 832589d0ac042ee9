"""The evaluate stage: scores of the generated test pairs -> metrics/eval.json, reports/, MLflow.

A metric whose pretrained network cannot be loaded is skipped: null in the JSON, the reason in the
report, on stdout and in MLflow tags, never a number. ``baseline``: the same scores for a model that
returns the source image unchanged.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from casd.evaluation import metrics
from casd.evaluation.report import build_report
from casd.config import from_dict, load_params, resolve_device
from casd.errors import ConfigError, DataError, WeightsError
from casd.fileio import atomic_path, write_json
from casd.inference import read_manifest
from casd import weights

METRICS = ("ssim", "ssim_fixed_range", "psnr", "lpips", "fid")
PER_PAIR = ("ssim", "ssim_fixed_range", "psnr", "lpips")


@dataclass
class EvaluateConfig:
    """The ``evaluate:`` section of params.yaml."""

    metrics: tuple[str, ...] = METRICS    # which to compute; the others are reported as skipped
    batch_size: int = 16                  # images per network call
    device: str = "auto"                  # auto (cuda if available) | cpu | cuda | cuda:N
    inception_weights: str = "auto"       # pt_inception-2015-12-05-6726825d.pth: auto (torch hub cache) | path
    alexnet_weights: str = "auto"         # alexnet-owt-7be5be79.pth (LPIPS trunk): auto (torch hub cache) | path
    fid_cache: bool = True                # cache real-image statistics (data/fid_cache/<key of files + weights>.npz)
    baseline: bool = True                 # also score the copy-the-source baseline
    threads: int = 4                      # image decoding threads
    report_pairs: int = 5                 # best and worst pairs shown in the report
    report_strips: int = 8                # strips in the report's sample grid

    def __post_init__(self):
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ConfigError(f"params.yaml [evaluate]: unknown metric(s) {', '.join(unknown)}; "
                              f"known: {', '.join(METRICS)}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"params.yaml [evaluate]: batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EvaluatePaths:
    """Where the evaluate stage reads and writes (its DVC deps and outs)."""

    generated: Path = Path("data/generated")       # test stage output (manifest.json + pictures)
    strips: Path = Path("data/strips")             # test stage strips (report grid)
    test_images: Path = Path("data/resized/test")  # ground truth and sources
    train_images: Path = Path("data/resized/train")  # FID real images
    metrics: Path = Path("metrics/eval.json")
    pairs_csv: Path = Path("reports/eval_pairs.csv")
    report: Path = Path("reports/index.html")
    train_metrics: Path = Path("metrics/train.json")
    loss_csv: Path = Path("metrics/train_loss.csv")
    run_file: Path = Path("metrics/mlflow_run.json")
    fid_cache: Path = Path("data/fid_cache")

    @classmethod
    def under(cls, root: str | Path) -> "EvaluatePaths":
        """Every path below ``root`` (tests)."""
        root = Path(root)
        return cls(**{f.name: root / getattr(cls, f.name) for f in dataclasses.fields(cls)})


@dataclass
class Networks:
    """The pretrained networks of the metrics, or why each is missing."""

    lpips: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    inception_id: str = ""                                 # weights hash: part of the FID cache key
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> reason


def load_networks(config: EvaluateConfig, device: torch.device) -> Networks:
    """Build the LPIPS and Inception networks the config asks for; a missing file becomes a skip reason."""
    nets = Networks()
    if "lpips" in config.metrics:
        try:
            nets.lpips = metrics.build_lpips(config.alexnet_weights, "package").to(device)
        except WeightsError as e:
            nets.skipped["lpips"] = _short_reason(e)
    if "fid" in config.metrics:
        try:
            path = weights.locate("inception-fid", None if config.inception_weights == "auto"
                                  else config.inception_weights)
            nets.inception = metrics.build_inception(path).to(device)
            nets.inception_id = weights.sha256(path)[:16]
        except WeightsError as e:
            nets.skipped["fid"] = _short_reason(e)
    return nets


def _short_reason(error: WeightsError) -> str:
    """The what-and-where sentence of a weights error (the how-to-get-it part is printed by the stage)."""
    print(f"evaluate: {error}", flush=True)
    return str(error).split(". ", 1)[0] + "; see `casd weights list`"


def _mean(values: np.ndarray) -> float | None:
    """Mean of the finite values (PSNR of identical images is +inf); None for no values."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def score_pairs(pairs: Sequence[Sequence[str]], paths: EvaluatePaths, config: EvaluateConfig, nets: Networks,
                device: torch.device) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, str]]:
    """Score every (source, target, generated file) triple, ``config.batch_size`` at a time.

    Returns (per-pair columns [N] float64 -- ``ssim``, ``baseline_ssim``, ... --,
    aggregates ``{"ssim": .., "baseline": {..}}``, skip reasons).
    """
    from tqdm import tqdm

    skipped = {name: "not in evaluate.metrics" for name in METRICS if name not in config.metrics}
    skipped.update({k: v for k, v in nets.skipped.items() if k in config.metrics})
    if "lpips" in config.metrics and nets.lpips is None:
        skipped.setdefault("lpips", "no LPIPS network")
    if "fid" in config.metrics and nets.inception is None:
        skipped.setdefault("fid", "no Inception network")
    kinds = ["model", "baseline"] if config.baseline else ["model"]
    columns: dict[str, list[torch.Tensor]] = {}
    fid_stats = {kind: metrics.GaussianStats(metrics.FID_DIMS) for kind in kinds} \
        if nets.inception is not None and "fid" in config.metrics else {}
    n = len(pairs)
    for start in tqdm(range(0, n, config.batch_size), desc="evaluate", unit="batch",
                      total=math.ceil(n / config.batch_size), disable=n <= config.batch_size):
        chunk = pairs[start:start + config.batch_size]
        generated = metrics.read_rgb_batch([paths.generated / f for _, _, f in chunk], config.threads)
        truth = metrics.read_rgb_batch([paths.test_images / t for _, t, _ in chunk], config.threads)
        if generated.shape != truth.shape:
            raise DataError(paths.generated / chunk[0][2], f"generated picture is {generated.shape[1:3]}, ground "
                                                           f"truth {truth.shape[1:3]}: rerun the test stage")
        outputs = {"model": generated}
        if config.baseline:
            outputs["baseline"] = metrics.read_rgb_batch([paths.test_images / s for s, _, _ in chunk], config.threads)
        for kind, images in outputs.items():
            prefix = "" if kind == "model" else "baseline_"
            scores = {}
            if "ssim" in config.metrics:
                scores["ssim"] = metrics.ssim(images, truth)
            if "ssim_fixed_range" in config.metrics:
                scores["ssim_fixed_range"] = metrics.ssim(images, truth, data_range=metrics.DATA_RANGE)
            if "psnr" in config.metrics:
                scores["psnr"] = metrics.psnr(images, truth, device)
            if nets.lpips is not None and "lpips" in config.metrics:
                scores["lpips"] = metrics.lpips_distance(nets.lpips, images, truth).double()
            for name, values in scores.items():
                columns.setdefault(prefix + name, []).append(values)
            if kind in fid_stats:
                fid_stats[kind].update(metrics.inception_features(nets.inception, images))
    per_pair = {name: torch.cat(parts).numpy() for name, parts in columns.items()}

    summary: dict[str, Any] = {}
    for kind in kinds:
        prefix = "" if kind == "model" else "baseline_"
        target = summary if kind == "model" else summary.setdefault("baseline", {})
        for name in PER_PAIR:
            target[name] = _mean(per_pair[prefix + name]) if prefix + name in per_pair else None
        target["fid"] = None
    if fid_stats:
        if n < 2:
            skipped["fid"] = f"FID needs at least 2 generated pictures, got {n}"
        else:
            train_files = sorted(paths.train_images.glob("*.jpg")) + sorted(paths.train_images.glob("*.png"))
            if len(train_files) < 2:
                skipped["fid"] = f"FID needs real training images; found {len(train_files)} in {paths.train_images}"
            else:
                real = metrics.cached_statistics(nets.inception, train_files, paths.fid_cache if config.fid_cache else None,
                                                 nets.inception_id, config.batch_size)
                for kind, stats in fid_stats.items():
                    value = metrics.fid_from_stats(real[:2], stats)
                    (summary if kind == "model" else summary["baseline"])["fid"] = value
    return per_pair, summary, skipped


def write_pairs_csv(path: Path, pairs: Sequence[Sequence[str]], per_pair: Mapping[str, np.ndarray]) -> None:
    """One row per pair; a metric that was skipped has empty cells (never a made-up number)."""
    names = [f"{p}{m}" for p in ("", "baseline_") for m in PER_PAIR]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["from", "to", "file", *names])
        for i, (source, target, file) in enumerate(pairs):
            writer.writerow([source, target, file,
                             *[repr(float(per_pair[c][i])) if c in per_pair else "" for c in names]])


def read_pairs_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of :func:`write_pairs_csv`, metric cells as float (None where skipped)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in list(row):
            if key not in ("from", "to", "file"):
                row[key] = float(row[key]) if row[key] != "" else None
    return rows


def log_to_mlflow(result: Mapping[str, Any], paths: EvaluatePaths, params: Mapping[str, Any]) -> str | None:
    """Log the aggregates to the training run (``metrics/mlflow_run.json``), else to a new ``evaluate`` run.

    Returns the run id (None when tracking is disabled).
    """
    import json

    from casd.tracking import Tracker, TrackingConfig, open_run_from_file

    config = from_dict(TrackingConfig, params.get("tracking"), "tracking")
    if not config.enabled:
        return None
    try:
        tracker = open_run_from_file(config, paths.run_file)
    except Exception as e:  # noqa: BLE001 -- the recorded run may live in a store this machine lacks
        warnings.warn(f"{paths.run_file}: cannot open the recorded MLflow run ({e}); logging to a new run")
        tracker = Tracker.disabled()
    if not tracker.active:
        tracker = Tracker.start(config, params, run_name="evaluate", tags={"casd.stage": "evaluate"})
    step = 0
    if paths.train_metrics.is_file():
        step = int(json.loads(paths.train_metrics.read_text(encoding="utf-8")).get("steps", 0))
    values = {f"eval/{m}": result[m] for m in METRICS if result.get(m) is not None}
    values.update({f"eval/baseline/{m}": v for m, v in (result.get("baseline") or {}).items() if v is not None})
    tracker.log_metrics({k: v for k, v in values.items() if math.isfinite(v)}, step)
    tracker.set_tags({"eval.pairs": result["pairs"],
                      **{f"eval.skipped.{m}": reason[:4000] for m, reason in result.get("skipped", {}).items()}})
    for path, folder in ((paths.metrics, "eval"), (paths.pairs_csv, "eval"), (paths.report, "report")):
        if path.is_file():
            tracker.log_artifact(path, folder)
    return tracker.run_id


def evaluate(config: EvaluateConfig, paths: EvaluatePaths | None = None, *, networks: Networks | None = None,
             params: Mapping[str, Any] | None = None, report: bool = True, track: bool = True) -> dict:
    """The evaluate stage: score the test stage's pictures, write JSON / CSV / report, log to MLflow.

    ``networks``: prebuilt metric networks (tests pass random-weight ones); by default
    they are loaded from the pretrained files, and a missing file skips its metric.
    Returns the content of ``metrics/eval.json``.
    """
    paths = paths or EvaluatePaths()
    device = resolve_device(config.device)
    manifest = read_manifest(paths.generated)
    pairs = [tuple(p) for p in manifest["pairs"]]
    if not pairs:
        raise DataError(paths.generated / "manifest.json", "no pairs were generated")
    missing = [f for _, _, f in pairs if not (paths.generated / f).is_file()]
    if missing:
        raise DataError(paths.generated / missing[0], f"generated picture missing ({len(missing)} of {len(pairs)} "
                                                      "missing); rerun the test stage")
    nets = networks if networks is not None else load_networks(config, device)
    for name, reason in nets.skipped.items():
        print(f"evaluate: {name} skipped: {reason}", flush=True)
    per_pair, summary, skipped = score_pairs(pairs, paths, config, nets, device)
    result = {"pairs": len(pairs), **summary}
    if skipped:
        result["skipped"] = skipped
    write_pairs_csv(paths.pairs_csv, pairs, per_pair)
    write_json(paths.metrics, result)
    if report:
        build_report(paths, result, read_pairs_csv(paths.pairs_csv), config, manifest=manifest)
    if track:
        try:
            run_id = log_to_mlflow(result, paths, params or {})
        except Exception as e:  # noqa: BLE001 -- the scores are written; an unreachable tracking server must not lose them
            print(f"evaluate: warning: not logged to MLflow ({type(e).__name__}: {e})", flush=True)
        else:
            if run_id:
                print(f"evaluate: logged to MLflow run {run_id}", flush=True)
    shown = "  ".join(f"{m} {result[m]:.4f}" for m in METRICS if result.get(m) is not None)
    print(f"evaluate: {len(pairs)} pairs  {shown}  -> {paths.metrics}, {paths.pairs_csv}"
          + (f", {paths.report}" if report else ""), flush=True)
    return result


def run_from_params(params_path: str | Path = "params.yaml") -> dict:
    """The evaluate stage: params.yaml -> :func:`evaluate` with the standard paths."""
    params = load_params(params_path)
    return evaluate(from_dict(EvaluateConfig, params.get("evaluate"), "evaluate"), params=params)


def cli_main(argv: list[str]) -> None:
    """``casd evaluate``: the evaluate stage from the command line."""
    parser = argparse.ArgumentParser(prog="casd evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    evaluate(from_dict(EvaluateConfig, params.get("evaluate"), "evaluate"), params=params, track=not args.no_mlflow)
