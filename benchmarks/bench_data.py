"""Data-side benchmark: pose preparation, pose / limb map rendering, synthetic generation (256x176).

    python benchmarks/bench_data.py [--images 2000] [--out reports/bench-data.json]

Measures, per image:

- pose stage: annotation CSV -> compact ``.npz`` keypoints (parse, validate,
  rescale, write), and the bytes written;
- for comparison, upstream's way on this machine: a dense H x W x 18 uint8 map
  filled joint by joint from a full-grid Gaussian, saved as one ``.npy`` per
  image (the reference figure is 4.0 ms and 1.2 MB per image at 256x256);
- rendering the generator's 30-channel pose input (one-hot joints + 12 limb
  distance maps) in the loader, batched and one at a time (upstream computes
  the limb maps per sample in numpy float64, also measured here);
- synthetic generation: images per second on one core, files included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from casd.fileio import write_json  # noqa: E402
from casd.data.config import DataConfig  # noqa: E402
from casd.data.tables import write_annotations  # noqa: E402
from casd.data.pose import LIMBS, PoseConfig, extract_pose, pose_input  # noqa: E402
from casd.data.synthetic import SynthConfig, generate  # noqa: E402

SIZE = (256, 176)


def random_keypoints(n: int, rng: np.random.Generator) -> np.ndarray:
    kp = np.stack([rng.integers(0, SIZE[0], (n, 18)), rng.integers(0, SIZE[1], (n, 18))], axis=-1)
    kp[rng.uniform(size=(n, 18)) < 0.15] = -1
    return kp


def bench_pose_stage(n: int, workdir: Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    raw = workdir / "raw"
    for phase, count in (("train", n), ("test", max(1, n // 10))):
        kp = random_keypoints(count, rng)
        write_annotations(raw / f"fashion-resize-annotation-{phase}.csv",
                          {f"fashionMENDenimid{i:08d}01_1front.jpg": kp[i] for i in range(count)})
        (workdir / "split" / phase).mkdir(parents=True, exist_ok=True)
        for i in range(count):   # the split stage's images (pose reads their names)
            (workdir / "split" / phase / f"fashionMENDenimid{i:08d}01_1front.jpg").touch()
    total = n + max(1, n // 10)
    data = DataConfig(image_size=SIZE, annotation_size=SIZE, workers=1)
    start, cpu_start = time.perf_counter(), time.process_time()
    extract_pose(data, PoseConfig(), raw, workdir / "pose", workdir / "reports", workdir / "split")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    written = sum(p.stat().st_size for p in (workdir / "pose").glob("*.npz"))
    return {"ms_per_image": 1000 * seconds / total, "cpu_ms_per_image": 1000 * cpu_seconds / total,
            "bytes_per_image": written / total, "images": total}


def bench_upstream_dense(n: int, workdir: Path) -> dict[str, float]:
    """Upstream's approach re-expressed: per joint a full-grid Gaussian cast to uint8, one .npy per image."""
    rng = np.random.default_rng(1)
    kp = random_keypoints(n, rng)
    out = workdir / "upstreamK"
    out.mkdir()
    yy, xx = np.meshgrid(np.arange(SIZE[0]), np.arange(SIZE[1]), indexing="ij")
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(n):
        dense = np.zeros(SIZE + (18,), dtype=np.uint8)
        for j, (y, x) in enumerate(kp[i]):
            if y >= 0:
                dense[..., j] = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 6.0 ** 2))
        np.save(out / f"{i}.npy", dense)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    written = sum(p.stat().st_size for p in out.glob("*.npy"))
    return {"ms_per_image": 1000 * seconds / n, "cpu_ms_per_image": 1000 * cpu_seconds / n,
            "bytes_per_image": written / n, "images": n}


def upstream_limb_maps(kp: np.ndarray) -> np.ndarray:
    """Upstream's per-sample numpy float64 limb maps (same formula), for the loader comparison."""
    ys, xs = np.meshgrid(np.arange(SIZE[0], dtype=np.float64), np.arange(SIZE[1], dtype=np.float64), indexing="ij")
    out = np.zeros(SIZE + (12,))
    for c, (a, b) in enumerate(LIMBS):
        (y1, x1), (y2, x2) = kp[a], kp[b]
        if min(y1, x1, y2, x2) < 0 or (y1, x1) == (y2, x2):
            continue
        big_a, big_b, big_c = y2 - y1, x1 - x2, (y1 - y2) * x1 + (x2 - x1) * y1
        out[..., c] = np.exp(-0.1 * np.abs(big_a * xs + big_b * ys + big_c) / np.hypot(big_a, big_b))
    return out


def bench_loader(n: int = 64, batch: int = 16) -> dict[str, float]:
    kp = torch.from_numpy(random_keypoints(n, np.random.default_rng(2)))
    pose_input(kp[:batch], SIZE)  # warm-up
    start = time.perf_counter()
    for i in range(0, n, batch):
        pose_input(kp[i:i + batch], SIZE)
    batched = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for i in range(n):
        pose_input(kp[i:i + 1], SIZE)
    single = (time.perf_counter() - start) / n
    buffer = torch.empty(batch, 30, *SIZE)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(0, n, batch):
        pose_input(kp[i:i + batch], SIZE, out=buffer)
    reused = (time.perf_counter() - start) / n
    reused_cpu = (time.process_time() - cpu_start) / n
    # Upstream's loader per sample: read the dense 811 KB .npy, recompute the limb maps in numpy float64.
    with tempfile.TemporaryDirectory() as tmp:
        dense = Path(tmp) / "k.npy"
        np.save(dense, np.zeros(SIZE + (18,), np.uint8))
        count = min(n, 32)
        start = time.perf_counter()
        for i in range(count):
            np.load(dense)
            upstream_limb_maps(kp[i].numpy())
        upstream = (time.perf_counter() - start) / count
    return {"ms_per_image_batched": 1000 * batched, "ms_per_image_single": 1000 * single,
            "ms_per_image_batched_reused_buffer": 1000 * reused,
            "cpu_ms_per_image_batched_reused_buffer": 1000 * reused_cpu,
            "upstream_loader_ms_per_image": 1000 * upstream, "batch": batch, "threads": torch.get_num_threads()}


def bench_synth(workdir: Path, identities: int = 4) -> dict[str, float]:
    config = SynthConfig(seed=0, image_size=SIZE, categories=4, identities_per_category=identities,
                         poses_per_identity=5)
    start, cpu_start = time.perf_counter(), time.process_time()
    counts = generate(config, SIZE, workdir / "synth", workers=1)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    images = counts["train_images"] + counts["test_images"]
    # One process, one thread: images per CPU second is the per-core rate even on a shared machine.
    return {"images_per_second_wall": images / seconds, "images_per_cpu_second": images / cpu_seconds,
            "images": images}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="annotation rows for the pose stage")
    parser.add_argument("--dense-images", type=int, default=100, help="images for the upstream-style dense write")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        results = {
            "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
            "size": list(SIZE),
            "pose_stage": bench_pose_stage(args.images, tmp_path),
            "upstream_dense_npy": bench_upstream_dense(args.dense_images, tmp_path),
            "loader_pose_input": bench_loader(),
            "synth": bench_synth(tmp_path),
        }
    ours, theirs = results["pose_stage"], results["upstream_dense_npy"]
    results["pose_stage_speedup_vs_reference_4ms"] = 4.0 / ours["ms_per_image"]
    results["synth_meets_50_images_per_core_second"] = results["synth"]["images_per_cpu_second"] >= 50
    results["pose_stage_bytes_fraction_vs_reference_1.2MB"] = ours["bytes_per_image"] / 1.2e6
    results["pose_stage_speedup_vs_upstream_measured"] = theirs["ms_per_image"] / ours["ms_per_image"]
    print(json.dumps(results, indent=2))
    if args.out:
        write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
