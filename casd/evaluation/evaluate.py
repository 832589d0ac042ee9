"""Scores of generated images -> metrics/eval.json, the pairs CSV, the report, MLflow.

The evaluate stage and ``casd evaluate --generated DIR`` (any method's outputs) run the same
:func:`score` under the same :class:`EvaluateConfig` protocol. A metric that cannot be computed
(missing weights, missing parsing maps) is null in the numbers, its reason in the report, on
stdout and in MLflow tags. ``baseline``: the same scores for a model that returns the source.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from casd import weights
from casd.config import Checks, from_dict, resolve_device
from casd.data.images import NUM_REGIONS, REGION_NAMES, read_image, read_regions
from casd.data.layout import PREPARED, flat_stem, parsing_file_name
from casd.data.tables import read_pairs
from casd.errors import ConfigError, DataError, WeightsError
from casd.evaluation import metrics
from casd.evaluation.report import ReportInputs, build_report
from casd.fileio import atomic_path, write_json
from casd.visuals import parsing_colours
from casd.data.layout import GENERATED_DIR, PREDICTED_PARSING_DIR, STRIPS_DIR, output_name, read_generated_manifest

METRICS = ("ssim", "ssim_fixed_range", "psnr", "lpips", "fid", "colour", "pattern", "parsing")
PER_PAIR = ("ssim", "ssim_fixed_range", "psnr", "lpips", "colour_error", "pattern_error", "parsing_pixel_accuracy")
IMAGE_METRICS = ("ssim", "ssim_fixed_range", "psnr", "lpips", "fid")
COLOUR_REGIONS = ("pants", "hair", "face", "upper_clothes", "arms", "legs")
PATTERN_REGIONS = ("upper_clothes", "pants")   # the garments, where DeepFashion (and the synthetic set) has patterns
SCORING_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                  "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX,
                  "hamming": Image.Resampling.HAMMING, "nearest": Image.Resampling.NEAREST}
LPIPS_TRUNKS = {"alex": "alexnet", "vgg": "vgg16"}
# Names of generated files: upstream's test.py strips (7 panels, the generated one last; the source
# name may keep its .jpg) and plain pictures. {from} and {to} stand for the file stems.
DEFAULT_PATTERNS = ("{from}___{to}_vis.jpg", "{from}___{to}.png")
UPSTREAM_STRIP_PANELS = 7


@dataclass
class EvaluateConfig:
    """The ``evaluate:`` section of params.yaml; the protocol fields hold the field's defaults."""

    metrics: tuple[str, ...] = METRICS
    # protocol, written beside the numbers
    image_size: tuple[int, int] | None = None  # [H, W] scored at; null: the ground truth's size
    resize_filter: str = "bicubic"             # PIL filter for any image not at image_size
    fid_reference: str = "train"               # train (training images, as CFLD, PCDMs, PIDM) | test (ground truth)
    reference_format: str = "any"              # files of the FID reference set: any | jpg | png
    ssim_data_range: str = "generated"         # ssim: generated (max - min of each generated image) | fixed (255)
    lpips_net: str = "alex"                    # alex (v0.1, the field's) | vgg
    # machinery
    batch_size: int = 16
    device: str = "auto"
    inception_weights: str = "auto"            # pt_inception-2015-12-05-6726825d.pth: auto (torch hub cache) | path
    lpips_weights: str = "auto"                # trunk of lpips_net (alexnet-owt-7be5be79.pth | vgg16-397923af.pth)
    fid_cache: bool = True                     # cache reference statistics in data/fid_cache/
    baseline: bool = True
    threads: int = 4
    pattern_min_strength: float = 8.0          # a source garment counts as patterned from this RMS of its statistics
    report_pairs: int = 5
    report_strips: int = 8

    def __post_init__(self):
        checks = Checks("evaluate")
        unknown = sorted(set(self.metrics) - set(METRICS))
        checks.require(not unknown, f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
        checks.number("batch_size", self.batch_size, minimum=1, integer=True)
        checks.number("pattern_min_strength", self.pattern_min_strength, above=0)
        if self.image_size is not None:
            size = tuple(self.image_size)
            if checks.require(len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size),
                              f"image_size must be null or [H, W] positive integers, got {size!r}"):
                self.image_size = size
        for name, allowed in (("resize_filter", SCORING_FILTERS), ("fid_reference", ("train", "test")),
                              ("reference_format", ("any", "jpg", "png")),
                              ("ssim_data_range", ("generated", "fixed")), ("lpips_net", LPIPS_TRUNKS)):
            checks.choice(name, getattr(self, name), allowed)
        checks.done()


@dataclass
class EvaluatePaths:
    """Where an evaluation reads and writes (the evaluate stage's DVC deps and outs)."""

    generated: Path = GENERATED_DIR                     # generated pictures (+ the test stage's manifest.json)
    strips: Path = STRIPS_DIR
    test_images: Path = PREPARED.images("test")         # ground truth and sources
    train_images: Path = PREPARED.images("train")       # FID reference, training mean colours
    parsing: Path = PREPARED.parsing_dir                # <phase>/<stem>.png region ids
    predicted_parsing: Path | None = PREDICTED_PARSING_DIR  # <from>___<to>.png, the model's target parsing
    metrics: Path = Path("metrics/eval.json")           # numbers only
    protocol: Path = Path("reports/eval_protocol.json")  # protocol, skip reasons
    pairs_csv: Path = Path("reports/eval_pairs.csv")
    report: Path = Path("reports/index.html")
    train_metrics: Path = Path("metrics/train.json")
    loss_csv: Path = Path("metrics/train_loss.csv")
    run_file: Path = Path("metrics/mlflow_run.json")
    fid_cache: Path = PREPARED.root / "fid_cache"
    phase: str = "test"                                 # whose parsing maps the scored pairs have (<parsing>/<phase>/)

    @classmethod
    def under(cls, root: str | Path) -> "EvaluatePaths":
        """Every path below ``root`` (tests)."""
        root = Path(root)
        return cls(**{f.name: root / value if isinstance(value := getattr(cls, f.name), Path) else value
                      for f in dataclasses.fields(cls)})

    def truth_parsing(self, name: str, phase: str | None = None) -> Path:
        """The ground-truth parsing map of image ``name`` of ``phase`` (default: the scored pairs' phase)."""
        return self.parsing / (phase or self.phase) / parsing_file_name(name)

    def predicted(self, pair: "Pair") -> Path:
        """The model's predicted target parsing of ``pair`` (written by the test stage)."""
        return self.predicted_parsing / output_name(pair.source, pair.target)


@dataclass(frozen=True)
class Pair:
    """One scored pair: source and target file names (in ``test_images``), the generated file."""

    source: str
    target: str
    file: str                                  # relative to ``generated``
    panel: tuple[int, int] | None = None       # (index, count): crop panel ``index`` of ``count`` equal ones


@dataclass
class MetricNetworks:
    """The pretrained networks of the metrics, or why each is missing."""

    lpips: torch.nn.Module | None = None
    inception: torch.nn.Module | None = None
    inception_id: str = ""                                 # weights hash: part of the FID cache key
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> reason


@dataclass
class Evaluation:
    """What one evaluation produced: numbers (metrics/eval.json), per-pair columns, protocol, skip reasons."""

    pairs: list[Pair]
    numbers: dict[str, Any]
    per_pair: dict[str, np.ndarray]
    protocol: dict[str, Any]
    skipped: dict[str, str]
    reader: "_Reader"

    def table(self) -> pd.DataFrame:
        """One row per pair: ``from``, ``to``, ``file`` and its scores (float64, NaN where skipped)."""
        return pd.DataFrame({"from": [p.source for p in self.pairs], "to": [p.target for p in self.pairs],
                             "file": [p.file for p in self.pairs],
                             **{name: np.asarray(v, dtype=np.float64) for name, v in self.per_pair.items()}})

    def rows(self) -> list[dict[str, Any]]:
        """One mapping per pair (``from``, ``to``, ``file`` and its scores; None where skipped)."""
        return _records(self.table())


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``table`` as mappings of Python values, None for NaN."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


# --------------------------------------------------------------------------- networks


def load_networks(config: EvaluateConfig, device: torch.device) -> MetricNetworks:
    """Build the LPIPS and Inception networks the config asks for; a missing file becomes a skip reason."""
    nets = MetricNetworks()
    explicit = lambda value: None if value in ("auto", "torchvision") else value  # noqa: E731
    if "lpips" in config.metrics:
        try:
            nets.lpips = metrics.build_lpips(config.lpips_net, config.lpips_weights, "package").to(device)
        except WeightsError as e:
            nets.skipped["lpips"] = _short_reason(e)
    if "fid" in config.metrics:
        try:
            path = weights.locate("inception-fid", explicit(config.inception_weights))
            nets.inception = metrics.build_inception(path).to(device)
            nets.inception_id = weights.sha256(path)[:16]
        except WeightsError as e:
            nets.skipped["fid"] = _short_reason(e)
    return nets


def _short_reason(error: WeightsError) -> str:
    """The what-and-where sentence of a weights error (the how-to-get-it part is printed)."""
    print(f"evaluate: {error}", flush=True)
    return str(error).split(". ", 1)[0] + "; see `casd weights list`"


# --------------------------------------------------------------------------- reading


class _Reader:
    """Reads pictures at the protocol's size: crop a panel if asked, then resize with the protocol's filter."""

    def __init__(self, size: tuple[int, int], resample: Image.Resampling):
        self.size, self.resample = size, resample

    def image(self, path: Path, panel: tuple[int, int] | None = None) -> np.ndarray:
        picture = read_image(path)
        if panel is not None:
            picture = crop_panel(picture, *panel, path=path)
        if picture.shape[:2] != self.size:
            picture = np.asarray(Image.fromarray(picture).resize(self.size[::-1], self.resample))
        return picture

    def regions(self, path: Path) -> np.ndarray:
        return read_regions(path, self.size, nearest_resize=True)


def crop_panel(picture: np.ndarray, index: int, count: int, path: Path | str = "") -> np.ndarray:
    """Panel ``index`` (0-based) of a strip of ``count`` equal-width panels, uint8 ``[H, W / count, 3]``."""
    width = picture.shape[1]
    if width % count:
        raise DataError(path, f"picture is {width} px wide, not {count} equal panels")
    w = width // count
    return picture[:, index * w:(index + 1) * w]


def _pattern_regex(pattern: str) -> re.Pattern:
    if "{from}" not in pattern or "{to}" not in pattern:
        raise ConfigError(f"naming pattern {pattern!r} must contain {{from}} and {{to}}")
    parts = re.split(r"(\{from\}|\{to\})", pattern)
    body = "".join({"{from}": "(?P<src>.+?)", "{to}": "(?P<dst>.+?)"}.get(p, re.escape(p)) for p in parts)
    return re.compile(f"^{body}$")


def _panel_for(name: str, panel: tuple[int, int] | None) -> tuple[int, int] | None:
    if panel is not None:
        return panel
    return (UPSTREAM_STRIP_PANELS - 1, UPSTREAM_STRIP_PANELS) if name.endswith("_vis.jpg") else None


def find_generated(folder: Path, truth_dir: Path, pairs_csv: Path | None = None,
                   patterns: Sequence[str] = DEFAULT_PATTERNS, panel: tuple[int, int] | None = None) -> list[Pair]:
    """The scored pairs of a folder of generated pictures named by ``patterns``.

    With ``pairs_csv`` (``from,to``): each pair's picture must exist; without: every matching file is
    a pair, its ground truth found by stem in ``truth_dir``. ``panel``: crop (index, count);
    default: the last of 7 for upstream's ``_vis.jpg`` strips, none otherwise.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "folder of generated pictures not found")
    regexes = [_pattern_regex(p) for p in patterns]
    found: dict[tuple[str, str], str] = {}
    for path in sorted(folder.iterdir()):
        for regex in regexes:
            m = regex.match(path.name)
            if m:
                found.setdefault((flat_stem(m["src"]), flat_stem(m["dst"])), path.name)
                break
    if pairs_csv is not None:
        pairs = []
        for source, target in read_pairs(pairs_csv):
            name = found.get((flat_stem(source), flat_stem(target)))
            if name is None:
                raise DataError(folder, f"no generated picture for {source} -> {target} (names tried: "
                                        f"{', '.join(patterns)})")
            pairs.append(Pair(source, target, name, _panel_for(name, panel)))
        return pairs
    by_stem = {flat_stem(p.name): p.name for p in sorted(Path(truth_dir).glob("*"))
               if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    pairs = []
    for (source, target), name in found.items():
        missing = [s for s in (source, target) if s not in by_stem]
        if missing:
            raise DataError(Path(truth_dir) / missing[0], f"no ground-truth image for {name}")
        pairs.append(Pair(by_stem[source], by_stem[target], name, _panel_for(name, panel)))
    if not pairs:
        raise DataError(folder, f"no generated pictures named like {' or '.join(patterns)}")
    return pairs


def _files(folder: Path, reference_format: str) -> list[Path]:
    suffixes = {"any": (".jpg", ".jpeg", ".png"), "jpg": (".jpg", ".jpeg"), "png": (".png",)}[reference_format]
    return sorted(p for p in Path(folder).glob("*") if p.suffix.lower() in suffixes)


# --------------------------------------------------------------------------- scoring


def _mean(values: np.ndarray) -> float | None:
    """Mean of the finite values (PSNR of identical images is +inf); None for no values."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def describe_protocol(config: EvaluateConfig, size: tuple[int, int], reference: Path, reference_files: int,
                      ) -> dict[str, Any]:
    """Every protocol choice of an evaluation, as written beside its numbers."""
    ssim = ("scikit-image structural_similarity, gaussian_weights, sigma 1.5, use_sample_covariance False, "
            "channel_axis, data_range ")
    return {
        "image_size": list(size),
        "resize_filter": f"{config.resize_filter} (PIL), for every image not at image_size",
        "fid_reference": f"{config.fid_reference}: {reference} ({reference_files} files)",
        "reference_format": config.reference_format,
        "ssim": ssim + ("generated.max() - generated.min()" if config.ssim_data_range == "generated" else "255"),
        "ssim_fixed_range": ssim + "255",
        "lpips": f"lpips 0.1, {config.lpips_net}",
        "fid": "pytorch-fid InceptionV3 pool3 (2048-d), pt_inception-2015-12-05",
        "colour": "RMS over RGB of region mean colours (0..255), regions of the ground-truth target parsing: "
                  + ", ".join(COLOUR_REGIONS),
        "pattern": "RMS of the 6 pattern statistics per region (colour standard deviation and mean absolute "
                   "neighbour difference, R, G, B, 0..255, over the region's interior: border pixels left out), "
                   "regions of the ground-truth target parsing: " + ", ".join(PATTERN_REGIONS)
                   + f"; only where the source's statistics reach {config.pattern_min_strength} (patterned)",
        "parsing": "predicted vs ground-truth target parsing, pixel accuracy and mean IoU over the "
                   f"{NUM_REGIONS} regions present",
    }


def training_mean_colours(files: Sequence[Path], parsing_dir: Path, reader: _Reader, config: EvaluateConfig,
                          cache_dir: Path | None) -> np.ndarray:
    """Each region's mean colour over the training images ``[R, 3]`` (NaN for a region never seen); cached."""
    cache = None
    if cache_dir is not None:
        parsing = [parsing_dir / parsing_file_name(f.name) for f in files]
        key = metrics.file_list_key([*files, *parsing], f"{reader.size}-{config.resize_filter}")
        cache = cache_dir / f"colours-{key}.npy"
        if cache.is_file():
            return np.load(cache)
    sums, counts = np.zeros((NUM_REGIONS, 3)), np.zeros(NUM_REGIONS)
    for chunk in metrics.batched(list(files), config.batch_size):
        images = metrics.read_rgb_batch(chunk, config.threads, reader.image)
        regions = np.stack([reader.regions(parsing_dir / parsing_file_name(f.name)) for f in chunk])
        s, c = metrics.region_colour_sums(images, regions, NUM_REGIONS)
        sums, counts = sums + s.sum(0), counts + c.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[:, None]
    if cache is not None:
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.save(f, mean)
    return mean


KIND_PREFIX = {"model": "", "baseline": "baseline_"}  # per-pair column names: the model's, the copy baseline's


@dataclass
class _Plan:
    """Which inputs one evaluation reads per batch, decided once before the loop."""

    kinds: list[str]                        # "model", and "baseline" (the source copied) when asked for
    training_mean: np.ndarray | None        # the colour diagnostic's "ignores the source" reference
    pattern: bool
    truth_parsing: bool
    predicted_parsing: bool

    @property
    def regions(self) -> bool:
        return self.training_mean is not None or self.pattern or self.truth_parsing


@dataclass
class _Tally:
    """Per-batch results, gathered over the loop."""

    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per-pair scores
    colour: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pattern: dict[str, list[np.ndarray]] = field(default_factory=dict)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)      # kind -> region confusion matrix
    fid: dict[str, metrics.GaussianStats] = field(default_factory=dict)  # kind -> Inception statistics

    @staticmethod
    def add(store: dict[str, list[np.ndarray]], values: Mapping[str, np.ndarray], prefix: str = "") -> None:
        for name, value in values.items():
            store.setdefault(prefix + name, []).append(value)

    @staticmethod
    def joined(store: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in store.items()}


def _skipped_metrics(config: EvaluateConfig, nets: MetricNetworks) -> dict[str, str]:
    """{metric: why it is not computed} for what the config leaves out or the networks cannot give."""
    wanted = set(config.metrics)
    skipped = {name: "not in evaluate.metrics" for name in METRICS if name not in wanted}
    skipped.update({k: v for k, v in nets.skipped.items() if k in wanted})
    if "lpips" in wanted and nets.lpips is None:
        skipped.setdefault("lpips", "no LPIPS network")
    if "fid" in wanted and nets.inception is None:
        skipped.setdefault("fid", "no Inception network")
    return skipped


def score(pairs: Sequence[Pair], paths: EvaluatePaths, config: EvaluateConfig, nets: MetricNetworks,
          device: torch.device) -> Evaluation:
    """Score every pair ``config.batch_size`` at a time under the config's protocol."""
    from tqdm import tqdm

    pairs = list(pairs)
    if not pairs:
        raise DataError(paths.generated, "no pairs to score")
    size = config.image_size or read_image(paths.test_images / pairs[0].target).shape[:2]
    reader = _Reader(tuple(size), SCORING_FILTERS[config.resize_filter])
    wanted = set(config.metrics)
    skipped = _skipped_metrics(config, nets)
    reference = paths.train_images if config.fid_reference == "train" else paths.test_images
    reference_files = _files(reference, config.reference_format)
    truth_parsing, predicted = _parsing_inputs(pairs, paths, skipped) if "parsing" in wanted else (False, False)
    plan = _Plan(kinds=["model", "baseline"] if config.baseline else ["model"],
                 training_mean=_training_mean_or_skip(pairs, paths, config, reader, skipped)
                 if "colour" in wanted else None,
                 pattern="pattern" in wanted and _pairs_parsing_or_skip(pairs, paths, "pattern", skipped),
                 truth_parsing=truth_parsing, predicted_parsing=predicted)
    tally = _Tally(confusion={kind: np.zeros((NUM_REGIONS, NUM_REGIONS), np.int64) for kind in plan.kinds})
    if nets.inception is not None and "fid" not in skipped:
        tally.fid = {kind: metrics.GaussianStats(metrics.FID_DIMS) for kind in plan.kinds}
    n = len(pairs)
    for start in tqdm(range(0, n, config.batch_size), desc="evaluate", unit="batch",
                      total=math.ceil(n / config.batch_size), disable=n <= config.batch_size):
        _score_batch(pairs[start:start + config.batch_size], paths, config, nets, device, reader, plan, tally)

    per_pair = tally.joined(tally.columns)
    colour_errors, pattern_errors = tally.joined(tally.colour), tally.joined(tally.pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair with no defined region: NaN, as it should
        if colour_errors:
            per_pair["colour_error"] = np.nanmean(colour_errors["model"][:, _region_ids(COLOUR_REGIONS)], axis=1)
        if pattern_errors:
            per_pair["pattern_error"] = np.nanmean(pattern_errors["model"][:, _region_ids(PATTERN_REGIONS)], axis=1)

    numbers: dict[str, Any] = {"pairs": n}
    for kind in plan.kinds:
        target = numbers if kind == "model" else numbers.setdefault("baseline", {})
        for name in IMAGE_METRICS:
            column = KIND_PREFIX[kind] + name
            target[name] = _mean(per_pair[column]) if column in per_pair else None
        has = tally.confusion[kind].sum() > 0
        result = metrics.parsing_scores(tally.confusion[kind]) if has else {"pixel_accuracy": None, "miou": None}
        target["parsing_pixel_accuracy"], target["parsing_miou"] = result["pixel_accuracy"], result["miou"]
    if tally.fid:
        _fid_numbers(numbers, tally.fid, nets, paths, config, reader, reference, reference_files, skipped)
    numbers.update(_transfer_numbers("colour", colour_errors, metrics.colour_gap, COLOUR_REGIONS))
    numbers.update(_transfer_numbers("pattern", pattern_errors, metrics.pattern_gap, PATTERN_REGIONS))
    if pattern_errors:
        counted = np.isfinite(pattern_errors["model"]).any(1)
        numbers["pattern_pairs"] = int(counted.sum())
        if not counted.any():
            skipped["pattern"] = (f"no pair's source has a patterned {' or '.join(PATTERN_REGIONS)} (statistics "
                                  f"below evaluate.pattern_min_strength {config.pattern_min_strength})")
    protocol = describe_protocol(config, reader.size, reference, len(reference_files))
    return Evaluation(pairs, numbers, per_pair, protocol, skipped, reader)


def _score_batch(chunk: Sequence[Pair], paths: EvaluatePaths, config: EvaluateConfig, nets: MetricNetworks,
                 device: torch.device, reader: "_Reader", plan: _Plan, tally: _Tally) -> None:
    """Read one batch of pairs and add its scores to ``tally``."""
    generated = metrics.read_rgb_batch([(paths.generated / p.file, p.panel) for p in chunk], config.threads,
                                       lambda job: reader.image(*job))
    truth = metrics.read_rgb_batch([paths.test_images / p.target for p in chunk], config.threads, reader.image)
    source = metrics.read_rgb_batch([paths.test_images / p.source for p in chunk], config.threads, reader.image)
    outputs = {"model": generated, "baseline": source}
    for kind in plan.kinds:
        tally.add(tally.columns, _image_scores(outputs[kind], truth, config, nets, device), KIND_PREFIX[kind])
        if kind in tally.fid:
            tally.fid[kind].update(metrics.inception_features(nets.inception, outputs[kind]))
    if plan.regions:
        target_regions = np.stack([reader.regions(paths.truth_parsing(p.target)) for p in chunk])
        source_regions = np.stack([reader.regions(paths.truth_parsing(p.source)) for p in chunk])
    if plan.training_mean is not None:
        tally.add(tally.colour, metrics.colour_errors(generated, truth, target_regions, source, source_regions,
                                                      plan.training_mean))
    if plan.pattern:
        tally.add(tally.pattern, metrics.pattern_errors(generated, truth, target_regions, source, source_regions,
                                                        _region_ids(PATTERN_REGIONS), config.pattern_min_strength))
    if plan.truth_parsing:
        truth_size = read_regions(paths.truth_parsing(chunk[0].target)).shape
        truth_maps = np.stack([read_regions(paths.truth_parsing(p.target), truth_size) for p in chunk])
        guesses = {}
        if plan.predicted_parsing:
            guesses["model"] = np.stack([read_regions(paths.predicted(p), truth_size, nearest_resize=True)
                                         for p in chunk])
        if "baseline" in plan.kinds:
            guesses["baseline"] = np.stack([read_regions(paths.truth_parsing(p.source), truth_size,
                                                         nearest_resize=True) for p in chunk])
        for kind, maps in guesses.items():
            tally.confusion[kind] += metrics.confusion_matrix(maps, truth_maps, NUM_REGIONS)
            tally.add(tally.columns, {"parsing_pixel_accuracy": (maps == truth_maps).reshape(len(chunk), -1).mean(1)},
                      KIND_PREFIX[kind])


def _fid_numbers(numbers: dict[str, Any], fid: Mapping[str, metrics.GaussianStats], nets: MetricNetworks,
                 paths: EvaluatePaths, config: EvaluateConfig, reader: "_Reader", reference: Path,
                 reference_files: Sequence[Path], skipped: dict[str, str]) -> None:
    """FID of each kind's pictures against the reference set's statistics (cached), into ``numbers``."""
    n = numbers["pairs"]
    if n < 2:
        skipped["fid"] = f"FID needs at least 2 generated pictures, got {n}"
    elif len(reference_files) < 2:
        skipped["fid"] = f"FID needs reference images; found {len(reference_files)} in {reference}"
    else:
        real = metrics.cached_statistics(nets.inception, reference_files,
                                         paths.fid_cache if config.fid_cache else None,
                                         f"{nets.inception_id}-{reader.size}-{config.resize_filter}",
                                         config.batch_size, reader.image)
        for kind, stats in fid.items():
            (numbers if kind == "model" else numbers["baseline"])["fid"] = metrics.fid_from_stats(real[:2], stats)


def _image_scores(images: np.ndarray, truth: np.ndarray, config: EvaluateConfig, nets: MetricNetworks,
                  device: torch.device) -> dict[str, np.ndarray]:
    """SSIM (both), PSNR and LPIPS of uint8 ``[B, H, W, 3]`` pictures against the truth -> float64 ``[B]`` each."""
    wanted, scores = set(config.metrics), {}
    if "ssim" in wanted:
        fixed = None if config.ssim_data_range == "generated" else metrics.DATA_RANGE
        scores["ssim"] = metrics.ssim(images, truth, fixed).numpy()
    if "ssim_fixed_range" in wanted:
        scores["ssim_fixed_range"] = metrics.ssim(images, truth, data_range=metrics.DATA_RANGE).numpy()
    if "psnr" in wanted:
        scores["psnr"] = metrics.psnr(images, truth, device).numpy()
    if nets.lpips is not None and "lpips" in wanted:
        scores["lpips"] = metrics.lpips_distance(nets.lpips, images, truth).double().numpy()
    return scores


def _training_mean_or_skip(pairs: Sequence[Pair], paths: EvaluatePaths, config: EvaluateConfig, reader: _Reader,
                           skipped: dict[str, str]) -> np.ndarray | None:
    """The training mean colours ``[R, 3]`` the colour metric needs, or None with the reason in ``skipped``."""
    needed = [paths.truth_parsing(n) for p in pairs for n in (p.source, p.target)]
    train_files = _files(paths.train_images, "any")
    needed += [paths.truth_parsing(f.name, "train") for f in train_files]
    missing = [p for p in needed if not p.is_file()]
    if missing:
        skipped["colour"] = f"parsing map {missing[0]} not found ({len(missing)} missing)"
        return None
    if not train_files:
        skipped["colour"] = f"no training images in {paths.train_images}"
        return None
    return training_mean_colours(train_files, paths.parsing / "train", reader, config,
                                 paths.fid_cache if config.fid_cache else None)


def _parsing_inputs(pairs: Sequence[Pair], paths: EvaluatePaths, skipped: dict[str, str]) -> tuple[bool, bool]:
    """(ground-truth parsing present, predicted parsing present); a reason in ``skipped`` where not."""
    if not _pairs_parsing_or_skip(pairs, paths, "parsing", skipped):
        return False, False
    if paths.predicted_parsing is None:
        skipped["parsing"] = "no predicted parsing given (--predicted-parsing)"
        return True, False
    missing = [p for p in pairs if not paths.predicted(p).is_file()]
    if missing:
        skipped["parsing"] = (f"no predicted parsing {paths.predicted(missing[0])} "
                              f"({len(missing)} of {len(pairs)} missing)")
    return True, not missing


def _region_ids(names: Sequence[str]) -> list[int]:
    return [REGION_NAMES.index(name) for name in names]


TRANSFER_COLUMNS = {"colour": ("error", "error_source_colours", "error_training_mean", "gap_closed"),
                    "pattern": ("error", "error_source_pattern", "error_flat", "gap_closed")}


def _transfer_numbers(kind: str, errors: Mapping[str, np.ndarray], gap: Callable, regions: Sequence[str]
                      ) -> dict[str, Any]:
    """``<kind>_error``, ``<kind>_gap_closed``, the two references, and the same per region (None if skipped)."""
    names = TRANSFER_COLUMNS[kind]
    if not errors:
        return {f"{kind}_{k}": None for k in names} | {f"{kind}_regions": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ids = _region_ids(regions)
        overall = gap({k: v[:, ids] for k, v in errors.items()})
        per_region = {name: gap({k: v[:, [i]] for k, v in errors.items()}) for name, i in zip(regions, ids)}
    return {f"{kind}_{k}": overall[k] for k in names} | {f"{kind}_regions": per_region}


def _pairs_parsing_or_skip(pairs: Sequence[Pair], paths: EvaluatePaths, metric: str, skipped: dict[str, str]) -> bool:
    """Whether every pair's source and target parsing map is there; the reason in ``skipped`` where not."""
    missing = [path for p in pairs for n in (p.source, p.target) if not (path := paths.truth_parsing(n)).is_file()]
    if missing:
        skipped[metric] = f"parsing map {missing[0]} not found ({len(missing)} missing)"
    return not missing


# --------------------------------------------------------------------------- outputs


def write_pairs_csv(path: Path, evaluation: Evaluation) -> None:
    """One row per pair; a metric that was skipped has empty cells (never a made-up number). Floats as
    ``repr`` writes them (round trip), CRLF line ends."""
    names = [f"{p}{m}" for p in ("", "baseline_") for m in PER_PAIR if f"{p}{m}" in evaluation.per_pair]
    with atomic_path(path) as tmp:
        evaluation.table()[["from", "to", "file", *names]].to_csv(tmp, index=False, lineterminator="\r\n")


def read_pairs_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of :func:`write_pairs_csv`, metric cells as float (None where skipped)."""
    names = ["from", "to", "file"]
    table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    table[names] = table[names].fillna("")
    # text -> float by a cast, exact (round trip) on pandas 2 as on 3, unlike read_csv's float parser on 2
    return _records(table.astype(dict.fromkeys(table.columns.drop(names), float)))


def _finite_metrics(numbers: Mapping[str, Any], prefix: str = "eval/") -> dict[str, float]:
    out = {}
    for key, value in numbers.items():
        if isinstance(value, Mapping):
            out.update(_finite_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def log_to_mlflow(evaluation: Evaluation, paths: EvaluatePaths, params: Mapping[str, Any]) -> str | None:
    """Log to the training run (``metrics/mlflow_run.json``), else to a new ``evaluate`` run; the run id."""
    from casd.tracking import Tracker, TrackingConfig, TrackingUnavailable, open_run_from_file

    config = from_dict(TrackingConfig, params.get("tracking"), "tracking")
    if not config.enabled:
        return None
    try:
        tracker = open_run_from_file(config, paths.run_file)
    except TrackingUnavailable as e:  # unreachable, or a store copied from another checkout: no run at all
        if not e.repeated:
            warnings.warn(f"MLflow tracking off for this evaluation: {e}")
        return None
    except Exception as e:  # noqa: BLE001 -- the recorded run may live in a store this machine lacks
        warnings.warn(f"{paths.run_file}: cannot open the recorded MLflow run ({e}); logging to a new run")
        tracker = Tracker.disabled()
    if not tracker.active:
        tracker = Tracker.start(config, params, run_name="evaluate", tags={"casd.stage": "evaluate"})
    step = 0
    if paths.train_metrics.is_file():
        step = int(json.loads(paths.train_metrics.read_text(encoding="utf-8")).get("steps", 0))
    tracker.log_metrics(_finite_metrics(evaluation.numbers), step)
    tracker.set_tags({**{f"eval.protocol.{k}": str(v)[:4000] for k, v in evaluation.protocol.items()},
                      **{f"eval.skipped.{m}": reason[:4000] for m, reason in evaluation.skipped.items()}})
    for path, folder in ((paths.metrics, "eval"), (paths.protocol, "eval"), (paths.pairs_csv, "eval"),
                         (paths.report, "report")):
        if path.is_file():
            tracker.log_artifact(path, folder)
    return tracker.run_id


def report_inputs(evaluation: Evaluation, paths: EvaluatePaths, config: EvaluateConfig, *, facts: Sequence[str] = (),
                  loss_csv: Path | None = None, strips: Sequence[Path] = ()) -> ReportInputs:
    """The report's data: numbers, rows, and pictures read the way they were scored."""
    reader, pairs = evaluation.reader, evaluation.pairs

    def pair_picture(i: int) -> np.ndarray:
        p = pairs[i]
        return np.concatenate([reader.image(paths.test_images / p.source),
                               reader.image(paths.generated / p.file, p.panel),
                               reader.image(paths.test_images / p.target)], axis=1)

    def parsing_picture(i: int) -> np.ndarray:
        p = pairs[i]
        maps = [reader.regions(paths.truth_parsing(p.source)), reader.regions(paths.predicted(p)),
                reader.regions(paths.truth_parsing(p.target))]
        return np.concatenate([reader.image(paths.test_images / p.source), *map(parsing_colours, maps)], axis=1)

    has_parsing = evaluation.numbers.get("parsing_miou") is not None
    return ReportInputs(evaluation.numbers, evaluation.rows(), evaluation.protocol, evaluation.skipped, pair_picture,
                        parsing_picture if has_parsing else None, list(facts), loss_csv, list(strips),
                        config.report_pairs, config.report_strips)


def _say(evaluation: Evaluation, written: Sequence[Path]) -> None:
    for name, reason in evaluation.skipped.items():
        print(f"evaluate: {name} skipped (null in the numbers): {reason}", flush=True)
    n = evaluation.numbers
    shown = "  ".join(f"{m} {n[m]:.4f}"
                      for m in (*IMAGE_METRICS, "colour_gap_closed", "pattern_gap_closed", "parsing_miou")
                      if n.get(m) is not None)
    print(f"evaluate: {n['pairs']} pairs  {shown}  -> {', '.join(map(str, written))}", flush=True)


def evaluate(config: EvaluateConfig, paths: EvaluatePaths | None = None, *, networks: MetricNetworks | None = None,
             params: Mapping[str, Any] | None = None, report: bool = True, track: bool = True) -> Evaluation:
    """The evaluate stage: score the test stage's pictures, write the numbers, CSV, report, log to MLflow.

    ``networks``: prebuilt metric networks (tests pass random-weight ones); by default they are
    loaded from the pretrained files, and a missing file skips its metric.
    """
    paths = paths or EvaluatePaths()
    manifest = read_generated_manifest(paths.generated)
    pairs = [Pair(*p) for p in manifest["pairs"]]
    if not pairs:
        raise DataError(paths.generated / "manifest.json", "no pairs were generated")
    missing = [p.file for p in pairs if not (paths.generated / p.file).is_file()]
    if missing:
        raise DataError(paths.generated / missing[0], f"generated picture missing ({len(missing)} of {len(pairs)} "
                                                      "missing); rerun the test stage")
    device = resolve_device(config.device)
    nets = networks if networks is not None else load_networks(config, device)
    evaluation = score(pairs, paths, config, nets, device)
    write_pairs_csv(paths.pairs_csv, evaluation)
    write_json(paths.metrics, evaluation.numbers)
    write_json(paths.protocol, {"protocol": evaluation.protocol, "skipped": evaluation.skipped})
    written = [paths.metrics, paths.protocol, paths.pairs_csv]
    if report:
        facts = ["{}x{} generated".format(*manifest["image_size"])] if manifest.get("image_size") else []
        if manifest.get("checkpoint_source"):
            facts.append(f"{manifest['checkpoint_source']} checkpoint")
        if paths.train_metrics.is_file():
            train = json.loads(paths.train_metrics.read_text(encoding="utf-8"))
            facts.append(f"trained {train.get('epochs', '?')} epochs / {train.get('steps', '?')} steps")
        strips = [paths.strips / n for n in manifest.get("strips") or []]
        build_report(paths.report, report_inputs(evaluation, paths, config, facts=facts, loss_csv=paths.loss_csv,
                                                 strips=strips))
        written.append(paths.report)
    if track:
        try:
            run_id = log_to_mlflow(evaluation, paths, params or {})
        except Exception as e:  # noqa: BLE001 -- the scores are written; an unreachable server must not lose them
            print(f"evaluate: warning: not logged to MLflow ({type(e).__name__}: {e})", flush=True)
        else:
            if run_id:
                print(f"evaluate: logged to MLflow run {run_id}", flush=True)
    _say(evaluation, written)
    return evaluation


def evaluate_folder(generated: str | Path, config: EvaluateConfig, paths: EvaluatePaths, out: str | Path, *,
                    pairs_csv: str | Path | None = None, patterns: Sequence[str] = DEFAULT_PATTERNS,
                    panel: tuple[int, int] | None = None, networks: MetricNetworks | None = None,
                    report: str | Path | None = None) -> Evaluation:
    """Score any folder of generated pictures; ``out``: JSON of the numbers, the protocol and skip reasons."""
    paths = dataclasses.replace(paths, generated=Path(generated))
    pairs = find_generated(paths.generated, paths.test_images, Path(pairs_csv) if pairs_csv else None,
                           patterns, panel)
    device = resolve_device(config.device)
    nets = networks if networks is not None else load_networks(config, device)
    evaluation = score(pairs, paths, config, nets, device)
    write_json(out, {"metrics": evaluation.numbers, "protocol": evaluation.protocol,
                     "skipped": evaluation.skipped})
    written = [Path(out)]
    if report:
        build_report(report, report_inputs(evaluation, paths, config, facts=[f"pictures of {paths.generated}"]))
        written.append(Path(report))
    _say(evaluation, written)
    return evaluation
