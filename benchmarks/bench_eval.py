"""Test / evaluate benchmark: generation pairs/s batched vs one at a time, metric throughput.

    python benchmarks/bench_eval.py [--pairs 8] [--size 256x176] [--model upstream|demo] [--batch 8]
                                    [--device cpu] [--out reports/bench-eval.json]

Measures:

- test stage: generator pairs/s, batch-1 loop (upstream's test loop: one
  ``netG(pose, image, parsing)`` call per pair) vs this project's batched
  path (plain batched calls with the norm's statistics per sample, which gives
  the same pictures as batch-1 calls); the reference figure is
  1.31 s per pair for upstream's generator at 256x176 on a 2-core CPU;
- FID: Inception pool3 feature extraction, images/s, batch 1 vs batched
  (random weights: the cost does not depend on their values);
- SSIM (scikit-image's function, pair by pair) pairs/s; region colours + parsing confusion pairs/s; LPIPS (AlexNet,
  random weights) pairs/s, the ``lpips`` per-pair loop vs the batched metric.

The inputs are random tensors: throughput does not depend on the content.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from casd.evaluation import metrics  # noqa: E402
from casd.fileio import write_json  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    """Best wall-clock seconds of ``repeat`` runs of ``fn()`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def generator_inputs(n: int, size: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    pose = torch.rand(n, 30, h, w, generator=g)
    image = torch.rand(n, 3, h, w, generator=g) * 2 - 1
    labels = torch.randint(0, 8, (n, h, w), generator=g)
    parsing = torch.nn.functional.one_hot(labels, 8).permute(0, 3, 1, 2).float()
    return pose, image, parsing


@torch.no_grad()
def bench_generation(n: int, size: tuple[int, int], model: str, batch: int, device: torch.device) -> dict:
    from casd.models.generator import Generator, GeneratorConfig

    config = GeneratorConfig(vgg_weights="none") if model == "upstream" else GeneratorConfig(
        pose_width=16, style_width=16, width=64, mlp_width=64, adain_blocks=2, modulated_blocks=2, vgg_weights="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generator = Generator(config).to(device).eval().set_modulated_norm("sample")  # as the test stage
    pose, image, parsing = (t.to(device) for t in generator_inputs(n, size))

    def one_at_a_time():
        for i in range(n):
            generator(pose[i:i + 1], image[i:i + 1], parsing[i:i + 1])

    def batched():  # the test stage's path: per-sample norm statistics, plain batched calls
        for s in range(0, n, batch):
            generator(pose[s:s + batch], image[s:s + batch], parsing[s:s + batch])

    # same pictures either way (the decoder's statistics stay per sample)
    single = torch.cat([generator(pose[i:i + 1], image[i:i + 1], parsing[i:i + 1])[0] for i in range(min(n, batch))])
    together = generator(pose[:batch], image[:batch], parsing[:batch])[0]
    max_diff = float((single - together).abs().max())
    t1, tb = timed(one_at_a_time), timed(batched)
    return {"model": model, "size": list(size), "pairs": n, "batch": batch, "device": str(device),
            "params_M": round(sum(p.numel() for p in generator.parameters()) / 1e6, 2),
            "batch1_s_per_pair": t1 / n, "batch1_pairs_per_s": n / t1,
            "batched_s_per_pair": tb / n, "batched_pairs_per_s": n / tb, "speedup": t1 / tb,
            "max_abs_diff_batched_vs_batch1": max_diff}


def bench_fid_features(n: int, size: tuple[int, int], batch: int, device: torch.device) -> dict:
    inception = metrics.build_inception(None).to(device)
    images = np.random.default_rng(0).integers(0, 256, (n, *size, 3), dtype=np.uint8)

    def one_at_a_time():
        for i in range(n):
            metrics.inception_features(inception, images[i:i + 1])

    def batched():
        for s in range(0, n, batch):
            metrics.inception_features(inception, images[s:s + batch])

    t1, tb = timed(one_at_a_time), timed(batched)
    return {"images": n, "batch": batch, "batch1_images_per_s": n / t1, "batched_images_per_s": n / tb,
            "speedup": t1 / tb}


def bench_pair_metrics(n: int, size: tuple[int, int], batch: int, device: torch.device) -> dict:
    import lpips

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)

    def ssim_metric():  # scikit-image's function per pair (see casd.evaluation.metrics.ssim for why)
        for s in range(0, n, batch):
            metrics.ssim(a[s:s + batch], b[s:s + batch])

    with metrics._quiet_torchvision():
        net = lpips.LPIPS(pretrained=False, pnet_rand=True, net="alex", verbose=False).eval().to(device)

    @torch.no_grad()
    def lpips_loop():
        for x, y in zip(a, b):
            net(lpips.im2tensor(x).to(device), lpips.im2tensor(y).to(device))

    def lpips_batched():
        for s in range(0, n, batch):
            metrics.lpips_distance(net, a[s:s + batch], b[s:s + batch])

    rng = np.random.default_rng(1)
    regions = rng.integers(0, 8, a.shape[:3]).astype(np.uint8)
    blind = rng.uniform(0, 255, (8, 3))

    def region_metrics():  # region colours and the parsing confusion matrix, vectorised per batch
        for s in range(0, n, batch):
            metrics.colour_errors(a[s:s + batch], b[s:s + batch], regions[s:s + batch], b[s:s + batch],
                                  regions[s:s + batch], blind)
            metrics.confusion_matrix(regions[s:s + batch], regions[s:s + batch][:, ::-1], 8)

    ts, tr = timed(ssim_metric), timed(region_metrics)
    tl1, tlb = timed(lpips_loop), timed(lpips_batched)
    return {"pairs": n, "batch": batch, "ssim_pairs_per_s": n / ts, "colour_and_parsing_pairs_per_s": n / tr,
            "lpips_loop_pairs_per_s": n / tl1, "lpips_batched_pairs_per_s": n / tlb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8, help="pairs generated per measurement")
    parser.add_argument("--size", default="256x176", help="H x W")
    parser.add_argument("--model", choices=["upstream", "demo"], default="upstream",
                        help="generator widths: upstream CASD or the demo profile")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=16, help="images for the metric measurements")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: generation,fid,pairs")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    results = {"torch_threads": torch.get_num_threads(), "device": str(device)}
    if "generation" not in skip:
        results["generation"] = bench_generation(args.pairs, size, args.model, args.batch, device)
    if "fid" not in skip:
        results["fid_features"] = bench_fid_features(args.images, size, args.batch, device)
    if "pairs" not in skip:
        results["pair_metrics"] = bench_pair_metrics(args.images, size, args.batch, device)
    print(json.dumps(results, indent=2))
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
