"""The field's image metrics, batched: SSIM, PSNR, LPIPS (lpips package), FID (pytorch-fid); region
colours and parsing-map scores.

Images cross this module as uint8 ``[B, H, W, 3]`` arrays (numpy or torch), as stored on disk.
Each metric is checked in tests/test_metrics.py against the package that defines it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from casd.data.images import NUM_REGIONS, read_image
from casd.errors import DataError, WeightsError
from casd.fileio import atomic_path

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scikit-image's value for gaussian_weights=True: an 11-tap window
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
FID_DIMS = 2048


# ---------------------------------------------------------------------------
# image I/O


def read_rgb_batch(paths: Sequence, threads: int = 4, reader: Callable[..., np.ndarray] = read_image) -> np.ndarray:
    """``reader(path)`` of each path (uint8 ``[H, W, 3]``) -> ``[B, H, W, 3]``, decoded in threads."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        images = list(pool.map(reader, paths))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        odd = next(i for i, im in enumerate(images) if im.shape != images[0].shape)
        raise DataError(paths[odd], f"image size {images[odd].shape[:2]} differs from {images[0].shape[:2]} of "
                                    f"{paths[0]} (all images of a set must have one size)")
    return np.stack(images)


def to_chw_float(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` with values 0..255."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got {tuple(t.shape)} {t.dtype}")
    return t.to(device).permute(0, 3, 1, 2).to(dtype)


# ---------------------------------------------------------------------------
# SSIM and PSNR


def ssim(generated: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
         data_range: float | None = None) -> torch.Tensor:
    """SSIM of each pair as the field computes it; uint8 ``[B, H, W, 3]`` in, float64 ``[B]`` out.

    scikit-image's ``structural_similarity`` with Gaussian weights (sigma 1.5), no sample
    covariance, over the colour channels. ``data_range=None``: the field's per-image
    ``generated.max() - generated.min()``; a number (e.g. 255): that fixed range.
    Pair by pair: scikit-image's C filters beat any batched float64 version measured on CPU.
    """
    from skimage.metrics import structural_similarity

    x, y = _as_uint8_batch(generated), _as_uint8_batch(target)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    win = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
    if x.shape[1] < win or x.shape[2] < win:
        raise ValueError(f"images of {x.shape[1]}x{x.shape[2]} are smaller than the {win}x{win} SSIM window")
    scores = []
    for a, b in zip(x, y):
        a, b = a.astype(np.float64), b.astype(np.float64)
        scores.append(structural_similarity(
            a, b, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False, channel_axis=-1,
            data_range=a.max() - a.min() if data_range is None else data_range, K1=SSIM_K1, K2=SSIM_K2))
    return torch.tensor(scores, dtype=torch.float64)


def _as_uint8_batch(images: np.ndarray | torch.Tensor) -> np.ndarray:
    a = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got {a.shape} {a.dtype}")
    return a


def psnr(generated: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
         device: torch.device | str = "cpu") -> torch.Tensor:
    """PSNR in dB (data range 255) of each pair; float64 ``[B]``; identical images give ``inf``."""
    x = to_chw_float(generated, device, torch.float64)
    y = to_chw_float(target, device, torch.float64)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(DATA_RANGE ** 2 / mse)).cpu()


# ---------------------------------------------------------------------------
# LPIPS

# where each trunk layer of torchvision's network sits in lpips: features.<i> -> net.slice<k>.<i>,
# k = how many slice starts are <= i
_LPIPS_SLICE_STARTS = {"alex": (0, 2, 5, 8, 10), "vgg": (0, 4, 9, 16, 23)}
_LPIPS_WEIGHTS = {"alex": ("alexnet", "lpips-alex-lin"), "vgg": ("vgg16", "lpips-vgg-lin")}


def build_lpips(net: str = "alex", trunk: str | os.PathLike | dict | None = "auto",
                linear: str | os.PathLike | dict | None = "package") -> torch.nn.Module:
    """The ``lpips`` package's LPIPS network (v0.1, ``net`` alex or vgg), weights loaded offline.

    trunk: torchvision AlexNet / VGG16 weights -- ``"auto"`` (the torch hub cache, via
        :func:`casd.weights.locate`), a path, a state dict, or ``None`` for a random trunk (tests).
    linear: the linear layers -- ``"package"`` (shipped inside ``lpips``, checksum verified by
        :mod:`casd.weights`), a path, a state dict, or ``None`` for random layers (tests).
    Raises :class:`WeightsError` when a named file is absent.
    """
    import lpips

    from casd import weights

    if net not in _LPIPS_SLICE_STARTS:
        raise ValueError(f"LPIPS network must be alex or vgg, got {net!r}")
    trunk_key, linear_key = _LPIPS_WEIGHTS[net]
    with _quiet_torchvision():
        model = lpips.LPIPS(pretrained=False, pnet_rand=True, net=net, version="0.1", verbose=False)
    state = model.state_dict()
    if trunk is not None:
        if not isinstance(trunk, dict):
            trunk = weights.load_state_dict(trunk_key, None if trunk in ("auto", "torchvision") else trunk)
        starts = np.array(_LPIPS_SLICE_STARTS[net])
        for key, value in trunk.items():
            parts = key.split(".")
            if parts[0] == "features":
                slice_no = int((starts <= int(parts[1])).sum())
                _assign(state, f"net.slice{slice_no}.{parts[1]}.{parts[2]}", value, f"LPIPS {net} trunk")
    if linear is not None:
        if not isinstance(linear, dict):
            linear = weights.load_state_dict(linear_key, None if linear == "package" else linear)
        for key, value in linear.items():
            _assign(state, key, value, "LPIPS linear layers")
            if key.startswith("lin") and key[3].isdigit():  # the same modules appear again as lins.<i>
                _assign(state, f"lins.{key[3]}{key[4:]}", value, "LPIPS linear layers")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def _assign(state: dict, key: str, value: torch.Tensor, what: str) -> None:
    if key not in state or state[key].shape != value.shape:
        raise WeightsError(f"{what}: unexpected entry {key} {tuple(value.shape)} for the LPIPS network")
    state[key] = value


@contextlib.contextmanager
def _quiet_torchvision() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        yield


@torch.no_grad()
def lpips_distance(net: torch.nn.Module, generated: np.ndarray | torch.Tensor,
                   target: np.ndarray | torch.Tensor) -> torch.Tensor:
    """LPIPS of each pair; uint8 ``[B, H, W, 3]`` in, float ``[B]`` (CPU) out.

    Images map to [-1, 1] as ``lpips.im2tensor`` does (x / 127.5 - 1).
    """
    device = next(net.parameters()).device
    x = to_chw_float(generated, device) / 127.5 - 1
    y = to_chw_float(target, device) / 127.5 - 1
    return net(x, y).reshape(-1).float().cpu()


# ---------------------------------------------------------------------------
# FID


def _fid_inception_v3(weights: dict | None) -> torch.nn.Module:
    """The FID variant of torchvision's InceptionV3, as ``pytorch_fid.inception.fid_inception_v3`` builds it."""
    from pytorch_fid import inception as pfi
    from torchvision.models import inception_v3

    net = inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    if weights is not None:
        net.load_state_dict(weights)
    return net


def _pool3_inception_class():
    from pytorch_fid.inception import InceptionV3

    class Pool3Inception(InceptionV3):
        """pytorch-fid's ``InceptionV3`` (its forward, its block layout) up to pool3, built from given weights.

        pytorch-fid's own constructor downloads the weights; this one takes them.
        """

        def __init__(self, weights: dict | None):
            torch.nn.Module.__init__(self)
            self.resize_input, self.normalize_input = True, True
            self.output_blocks, self.last_needed_block = [3], 3
            net = _fid_inception_v3(weights)
            pool = torch.nn.MaxPool2d(kernel_size=3, stride=2)
            self.blocks = torch.nn.ModuleList([
                torch.nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, pool),
                torch.nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, pool),
                torch.nn.Sequential(net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b,
                                    net.Mixed_6c, net.Mixed_6d, net.Mixed_6e),
                torch.nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, torch.nn.AdaptiveAvgPool2d((1, 1))),
            ])

    return Pool3Inception


def build_inception(weights: str | os.PathLike | dict | None = "auto") -> torch.nn.Module:
    """pytorch-fid's ``InceptionV3`` returning pool3 features, weights loaded offline.

    weights: ``"auto"`` (torch hub cache via :func:`casd.weights.locate`), a path, a state dict of
    the FID Inception (pt_inception-2015-12-05), or ``None`` for random weights (tests).
    """
    from casd import weights as registry

    if weights is not None and not isinstance(weights, dict):
        weights = registry.load_state_dict("inception-fid", None if weights == "auto" else weights)
    return _pool3_inception_class()(weights).eval().requires_grad_(False)


@torch.no_grad()
def inception_features(model: torch.nn.Module, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """pool3 features of uint8 ``[B, H, W, 3]`` images -> float64 ``[B, 2048]`` (CPU).

    As pytorch-fid: images to [0, 1] (ToTensor), the network resizes to 299 and rescales.
    """
    device = next(model.parameters()).device
    x = to_chw_float(images, device) / 255.0
    pooled = model(x)[0]
    if pooled.shape[2:] != (1, 1):
        pooled = F.adaptive_avg_pool2d(pooled, (1, 1))
    return pooled.flatten(1).double().cpu()


class GaussianStats:
    """Running mean and covariance of feature vectors, accumulated batch by batch (float64).

    ``covariance`` equals ``np.cov(features, rowvar=False)`` (N - 1 in the denominator).
    While no more vectors than dimensions have been seen, the vectors are kept too, so that
    :func:`frechet_distance` can use the low-rank ``factor`` (small evaluation sets).
    """

    def __init__(self, dims: int):
        self.dims = dims
        self.count = 0
        self.total = torch.zeros(dims, dtype=torch.float64)
        self.outer = torch.zeros(dims, dims, dtype=torch.float64)
        # a fixed shift keeps the sums well conditioned (features are far from zero-mean)
        self.shift: torch.Tensor | None = None
        self._kept: list[torch.Tensor] | None = []

    def update(self, features: torch.Tensor) -> None:
        """features: ``[B, D]``."""
        f = features.double().cpu()
        if self.shift is None:
            self.shift = f[0].clone()
        f = f - self.shift
        self.count += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.T @ f
        if self._kept is not None:
            self._kept = self._kept + [f] if self.count <= self.dims else None

    @property
    def mean(self) -> np.ndarray:
        return (self.total / self.count + self.shift).numpy()

    @property
    def covariance(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError("covariance needs at least 2 feature vectors")
        m = self.total / self.count
        cov = (self.outer - self.count * torch.outer(m, m)) / (self.count - 1)
        return cov.numpy()

    @property
    def factor(self) -> np.ndarray | None:
        """``B [N, D]`` with ``B.T @ B == covariance`` while N <= D, else None."""
        if not self._kept or self.count < 2:
            return None
        f = torch.cat(self._kept)
        return ((f - f.mean(0)) / math.sqrt(self.count - 1)).numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     factor2: np.ndarray | None = None) -> float:
    """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2))``. The trace of the
    matrix square root is the sum of square roots of the eigenvalues of ``sigma1 sigma2``,
    which are real and non-negative for covariance matrices (round-off negatives clipped),
    computed with symmetric eigen-solvers instead of an iterative ``sqrtm``; the value matches
    pytorch-fid's. ``factor2`` (``B`` with ``B.T @ B == sigma2``, from :attr:`GaussianStats.factor`)
    makes it cheap for small sets: the non-zero eigenvalues of ``sigma1 B.T B`` are those of the
    N x N matrix ``B sigma1 B.T``.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    if factor2 is not None:
        eig = np.linalg.eigvalsh(factor2 @ s1 @ factor2.T)
    else:
        # sqrt(s1) s2 sqrt(s1) is symmetric PSD and similar to s1 s2
        w1, v1 = np.linalg.eigh(s1)
        root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
        eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_stats(real: tuple[np.ndarray, np.ndarray], generated: GaussianStats) -> float:
    """FID of generated-image statistics against real ``(mu, sigma)``."""
    return frechet_distance(real[0], real[1], generated.mean, generated.covariance, generated.factor)


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def feature_statistics(model: torch.nn.Module, files: Sequence[str | Path], batch_size: int = 32,
                       progress: str | None = None, reader: Callable[..., np.ndarray] = read_image) -> GaussianStats:
    """Inception statistics of image files, read and embedded ``batch_size`` at a time."""
    from tqdm import tqdm

    stats = GaussianStats(FID_DIMS)
    batches = batched(list(files), batch_size)
    total = math.ceil(len(files) / batch_size)
    for chunk in tqdm(batches, total=total, desc=progress, disable=progress is None, unit="batch"):
        stats.update(inception_features(model, read_rgb_batch(chunk, reader=reader)))
    return stats


def file_list_key(files: Iterable[str | Path], weights_id: str) -> str:
    """Cache key of a set of image files: names and sizes of the files, and the weights' id."""
    h = hashlib.sha256(weights_id.encode())
    for path in sorted(map(Path, files)):
        h.update(f"{path.name}\0{path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def cached_statistics(model: torch.nn.Module, files: Sequence[str | Path], cache_dir: str | Path | None,
                      weights_id: str, batch_size: int = 32, reader: Callable[..., np.ndarray] = read_image,
                      ) -> tuple[np.ndarray, np.ndarray, Path | None]:
    """Mean and covariance of the features of ``files`` (read by ``reader``), cached in ``cache_dir/<key>.npz``.

    The key covers the file names and sizes and ``weights_id`` (the Inception file's hash, plus
    whatever else changes the features, e.g. the size images are read at).
    """
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"{file_list_key(files, weights_id)}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return z["mu"], z["sigma"], cache
    stats = feature_statistics(model, files, batch_size, progress="FID real images", reader=reader)
    mu, sigma = stats.mean, stats.covariance
    if cache is not None:
        with atomic_path(cache) as tmp:
            np.savez(tmp, mu=mu, sigma=sigma, count=stats.count)
        with atomic_path(cache.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"files": len(files), "weights": weights_id}) + "\n")
    return mu, sigma, cache


# ---------------------------------------------------------------------------
# appearance transfer: mean colour per region (a diagnostic, not one of the paper's metrics)


def region_colour_sums(images: np.ndarray, regions: np.ndarray, num_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[B, H, W, 3]`` and region ids ``[B, H, W]`` -> (colour sums ``[B, R, 3]``, pixel counts ``[B, R]``)."""
    b = images.shape[0]
    if regions.shape != images.shape[:3]:
        raise ValueError(f"regions {regions.shape} do not match images {images.shape}")
    bins = (regions.reshape(b, -1).astype(np.int64) + num_regions * np.arange(b)[:, None]).ravel()
    pixels = images.reshape(-1, 3).astype(np.float64)
    counts = np.bincount(bins, minlength=b * num_regions).reshape(b, num_regions)
    sums = np.stack([np.bincount(bins, weights=pixels[:, c], minlength=b * num_regions) for c in range(3)], -1)
    return sums.reshape(b, num_regions, 3), counts


def region_mean_colours(images: np.ndarray, regions: np.ndarray, num_regions: int) -> np.ndarray:
    """Mean colour of each region, float64 ``[B, R, 3]`` (0..255); NaN where a region has no pixel."""
    sums, counts = region_colour_sums(images, regions, num_regions)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[..., None]


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root mean square over the RGB channels of two colours ``[..., 3]`` -> ``[...]``, 0..255."""
    return np.sqrt(((a - b) ** 2).mean(-1))


def colour_errors(generated: np.ndarray, truth: np.ndarray, target_regions: np.ndarray, source: np.ndarray,
                  source_regions: np.ndarray, training_mean: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair and region, the colour distance to the ground truth inside the target's region ``[B, R]``.

    ``model``: the generated image; ``source_colours``: the source person's own region colours
    (what perfect transfer gives); ``training_mean``: each region's mean colour over the training
    images ``[R, 3]`` (what a model that ignores the source gives). NaN wherever one of the three
    is undefined (region absent from the target, the source or the training images), so that
    the three are always averaged over the same entries.
    """
    r = training_mean.shape[0]
    truth_mean = region_mean_colours(truth, target_regions, r)
    errors = {"model": colour_distance(region_mean_colours(generated, target_regions, r), truth_mean),
              "source_colours": colour_distance(region_mean_colours(source, source_regions, r), truth_mean),
              "training_mean": colour_distance(training_mean[None], truth_mean)}
    invalid = ~np.logical_and.reduce([np.isfinite(e) for e in errors.values()])
    for e in errors.values():
        e[invalid] = np.nan
    return errors


def gap_closed(errors: dict[str, np.ndarray], perfect: str, worst: str) -> dict[str, float | None]:
    """Mean errors over the defined entries, and the share of the gap between two references closed.

    ``gap_closed = (worst - model) / (worst - perfect)``: 1 for a model as good as the ``perfect``
    reference, 0 for one as bad as the ``worst``; None where the references do not differ.
    Returns ``error`` (the model's), ``error_<reference>`` for both references, and ``gap_closed``.
    """
    means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in errors.items()}
    gap = None
    if None not in means.values() and means[worst] - means[perfect] > 1e-9:
        gap = (means[worst] - means["model"]) / (means[worst] - means[perfect])
    return {"error": means["model"], f"error_{perfect}": means[perfect], f"error_{worst}": means[worst],
            "gap_closed": gap}


def colour_gap(errors: dict[str, np.ndarray]) -> dict[str, float | None]:
    """:func:`gap_closed` of :func:`colour_errors`: 1 for perfect transfer (the source's colours), 0 for a model
    that ignores the source (the training mean colours)."""
    return gap_closed(errors, "source_colours", "training_mean")


# ---------------------------------------------------------------------------
# pattern transfer: within-region colour spread and fine detail (a diagnostic, not one of the paper's metrics)

PATTERN_FEATURES = 6   # per region: colour standard deviation (R, G, B), mean absolute neighbour difference (R, G, B)
PATTERN_MIN_PIXELS = 8  # interior pixels a region needs in an image for its statistics to count


def region_interiors(regions: np.ndarray) -> np.ndarray:
    """Region ids ``[B, H, W]`` -> the same with pixels on a region's border (any of the 8 neighbours in another
    region, or the image edge) set to -1: outlines and anti-aliased edges are geometry, not pattern."""
    padded = np.pad(regions.astype(np.int16), ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    h, w = regions.shape[1:]
    same = np.ones(regions.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[:, dy:dy + h, dx:dx + w] == regions
    return np.where(same, regions.astype(np.int16), -1)


def region_pattern_stats(images: np.ndarray, regions: np.ndarray, num_regions: int) -> np.ndarray:
    """The pattern of each region, float64 ``[B, R, 6]`` (0..255): over the region's interior
    (:func:`region_interiors`), the standard deviation of each colour channel, and the mean absolute difference
    of each channel between horizontally or vertically adjacent interior pixels. A flat region gives 0; stripes,
    checks and dots give large spreads, and sharp ones large differences (blur lowers them). NaN where a region
    has fewer than PATTERN_MIN_PIXELS interior pixels.
    """
    b = images.shape[0]
    if regions.shape != images.shape[:3]:
        raise ValueError(f"regions {regions.shape} do not match images {images.shape}")
    inner = region_interiors(regions)
    pixels = images.astype(np.float64)
    offsets = (num_regions * np.arange(b))[:, None, None]
    size = b * num_regions

    def per_region(values: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sums ``[B, R, 3]`` and counts ``[B, R]`` of ``values`` ``[B, h, w, 3]`` at region ids ``where``."""
        keep = where >= 0
        bins = np.broadcast_to(where + offsets, where.shape)[keep]
        counts = np.bincount(bins, minlength=size)
        sums = np.stack([np.bincount(bins, weights=values[..., c][keep], minlength=size) for c in range(3)], -1)
        return sums.reshape(b, num_regions, 3), counts.reshape(b, num_regions)

    sums, counts = per_region(pixels, inner)
    squares, _ = per_region(pixels ** 2, inner)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[..., None]
        spread = np.sqrt(np.maximum(squares / counts[..., None] - mean ** 2, 0.0))
    # neighbour differences between interior pixels of one region, right and down
    right = np.where(inner[:, :, 1:] == inner[:, :, :-1], inner[:, :, :-1], -1)
    down = np.where(inner[:, 1:] == inner[:, :-1], inner[:, :-1], -1)
    dx, nx = per_region(np.abs(pixels[:, :, 1:] - pixels[:, :, :-1]), right)
    dy, ny = per_region(np.abs(pixels[:, 1:] - pixels[:, :-1]), down)
    with np.errstate(invalid="ignore", divide="ignore"):
        detail = (dx + dy) / (nx + ny)[..., None]
    stats = np.concatenate([spread, detail], -1)
    stats[counts < PATTERN_MIN_PIXELS] = np.nan
    return stats


def pattern_errors(generated: np.ndarray, truth: np.ndarray, target_regions: np.ndarray, source: np.ndarray,
                   source_regions: np.ndarray, patterned: Sequence[int], min_strength: float,
                   num_regions: int = NUM_REGIONS) -> dict[str, np.ndarray]:
    """Per pair and region, the distance (RMS over the 6 statistics) between a region's pattern statistics
    (:func:`region_pattern_stats`) and the ground truth's, inside the regions of the target parsing ``[B, R]``.

    ``model``: the generated image; ``source_pattern``: the source person's own statistics in its own region
    (what perfect transfer gives); ``flat``: the region filled with one colour (the source region's mean: perfect
    colour transfer, no pattern; its statistics are 0). Only the ``patterned`` region ids count, and there only
    where the source's statistics have a strength (RMS) of at least ``min_strength``: a solid garment has no
    pattern to carry. NaN elsewhere, in all three alike.
    """
    truth_stats = region_pattern_stats(truth, target_regions, num_regions)
    source_stats = region_pattern_stats(source, source_regions, num_regions)
    distance = lambda a, b: np.sqrt(((a - b) ** 2).mean(-1))  # noqa: E731
    errors = {"model": distance(region_pattern_stats(generated, target_regions, num_regions), truth_stats),
              "source_pattern": distance(source_stats, truth_stats),
              "flat": distance(np.zeros_like(truth_stats), truth_stats)}
    strong = np.sqrt((source_stats ** 2).mean(-1)) >= min_strength   # False where NaN
    counted = np.zeros(num_regions, bool)
    counted[list(patterned)] = True
    invalid = ~(strong & counted[None] & np.logical_and.reduce([np.isfinite(e) for e in errors.values()]))
    for e in errors.values():
        e[invalid] = np.nan
    return errors


def pattern_gap(errors: dict[str, np.ndarray]) -> dict[str, float | None]:
    """:func:`gap_closed` of :func:`pattern_errors`: 1 for the source's pattern carried over, 0 for a flat
    region of the right colour."""
    return gap_closed(errors, "source_pattern", "flat")


# ---------------------------------------------------------------------------
# parsing maps


def confusion_matrix(predicted: np.ndarray, truth: np.ndarray, num_regions: int) -> np.ndarray:
    """Region ids ``[...]`` (same shape) -> int64 ``[R, R]``, rows: truth, columns: predicted."""
    if predicted.shape != truth.shape:
        raise ValueError(f"parsing maps differ in shape: {predicted.shape} vs {truth.shape}")
    bins = truth.astype(np.int64).ravel() * num_regions + predicted.astype(np.int64).ravel()
    return np.bincount(bins, minlength=num_regions * num_regions).reshape(num_regions, num_regions)


def parsing_scores(confusion: np.ndarray) -> dict[str, float | None]:
    """Pixel accuracy and mean IoU over the regions present in the truth or the prediction."""
    total = confusion.sum()
    hits = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - hits
    present = union > 0
    return {"pixel_accuracy": float(hits.sum() / total) if total else None,
            "miou": float((hits[present] / union[present]).mean()) if present.any() else None}
