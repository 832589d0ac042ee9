"""The data stages at DeepFashion scale: 52,712 750x1101 JPEGs in the real layout, data.workers 2.

    python benchmarks/bench_data_scale.py --scale 0.02 [--dir /tmp/casd-scale] [--out reports/bench-scale.json]

Builds a raw folder of ``scale`` x the real counts (48,674 train / 4,038 test images, 101,966 / 8,570 pairs)
in the released layout and formats: a few distinct 750x1101 JPEGs and 256x176 LIP parsing maps, hard-linked
under every name (a cheap filler: decoding costs what real photos cost, but the page cache serves the
bytes), the lst files, the pairs and annotation CSVs (``fasion-`` spelling, ``:``-separated, missing
joints). Then runs each data stage script (synth check, split, resize, pose, segment) as its own process
at 256x176 and records wall time, CPU time (process and workers), peak RSS (the process tree, sampled)
and bytes written. For comparison, upstream's approach (sequential PIL resize to 256x256, one dense
256x256x18 uint8 ``.npy`` pose map per image) is timed on a subsample and extrapolated to the same count;
those figures are labelled ``extrapolated``.

Measured at --scale 0.02 (1,054 images) on the 2-core CPU container while shared and loaded (load average
12-17, so wall times are inflated; CPU times are the steadier figure), CPU s: synth check 0.3, split 0.6,
resize 24.1 (23 ms an image, Lanczos, quality 95, digest included), pose 2.5 (mostly importing torch),
segment 1.6; peak RSS of a stage's process tree 621 MB (pose: torch), 119 MB for resize. Upstream's
approach on 200 of those images: 14 ms CPU an image to resize, 7 ms and 1.18 MB an image of .npy maps,
i.e. 62 GB for 52,712 images (extrapolated).

Measured at --scale 1 (52,712 images) on the same 2-core container, quiet (load average about 2), wall / CPU /
peak RSS of the process tree / written: split 18.6 s / 22.1 s / 178 MB / 16.8 MB, resize 534 s / 1029 s /
267 MB / 698 MB, pose 6.8 s / 6.3 s / 611 MB / 2.4 MB, segment 30.8 s / 54.4 s / 183 MB / 27.9 MB: all data
stages 591 s (9.8 min) wall, peak RSS 611 MB. Upstream's approach, timed on 300 images and extrapolated to
52,712: sequential resize 12.5 min, dense .npy maps 7.0 min and 62.2 GB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from casd.data.layout import flat_name, flat_stem  # noqa: E402
from casd.data.tables import write_annotations, write_pairs  # noqa: E402

FULL = {"train_images": 48_674, "test_images": 4_038, "train_pairs": 101_966, "test_pairs": 8_570}
RAW_SIZE = (1101, 750)          # H, W of img_highres
ANNOTATION_SIZE = (256, 176)
IMAGE_SIZE = (256, 176)
CATEGORIES = (("MEN", "Denim"), ("WOMEN", "Blouses_Shirts"), ("MEN", "Tees_Tanks"), ("WOMEN", "Dresses"),
              ("WOMEN", "Skirts"), ("MEN", "Jackets_Vests"))
VIEWS = ((1, "front"), (2, "side"), (3, "back"), (4, "full"), (7, "additional"), (6, "flat"))
STAGES = ("synth", "split", "resize", "pose", "segment")


def filler_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Distinct 750x1101 photos-like JPEGs (smooth shapes plus noise, quality 90)."""
    rng = np.random.default_rng(seed)
    h, w = RAW_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blobs = []
    for _ in range(count):
        image = np.empty((h, w, 3), np.float32)
        for c in range(3):
            fy, fx, phase = rng.uniform(0.002, 0.02, 2).tolist() + [rng.uniform(0, 6.3)]
            image[..., c] = 128 + 90 * np.sin(yy * fy + xx * fx + phase)
        image += rng.normal(0, 12, image.shape).astype(np.float32)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


def filler_parsing(count: int, seed: int = 1) -> list[bytes]:
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        labels = np.zeros(ANNOTATION_SIZE, np.uint8)
        for label in rng.choice(np.arange(1, 20), 8, replace=False):
            y, x = rng.integers(0, ANNOTATION_SIZE[0] - 40), rng.integers(0, ANNOTATION_SIZE[1] - 30)
            labels[y:y + 40, x:x + 30] = label
        buffer = io.BytesIO()
        Image.fromarray(labels).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs


def build_raw(root: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """The raw DeepFashion layout at ``scale`` x the real counts under ``root``; returns the counts."""
    rng = np.random.default_rng(seed)
    counts = {k: max(2, round(v * scale)) for k, v in FULL.items()}
    jpegs, parsing = filler_jpegs(8), filler_parsing(8)
    blob_dir = root / ".blobs"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(jpegs):
        (blob_dir / f"{i}.jpg").write_bytes(data)
    for i, data in enumerate(parsing):
        (blob_dir / f"{i}.png").write_bytes(data)
    (root / "semantic_merge3").mkdir(exist_ok=True)
    identity = 0
    for phase in ("train", "test"):
        names, by_person = [], []
        while len(names) < counts[f"{phase}_images"]:
            gender, category = CATEGORIES[identity % len(CATEGORIES)]
            person = []
            for pose in range(min(6, counts[f"{phase}_images"] - len(names))):
                view_code, view = VIEWS[pose]
                relative = f"img_highres/{gender}/{category}/id_{identity:08d}/{pose + 1:02d}_{view_code}_{view}.jpg"
                path = root / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                os.link(blob_dir / f"{rng.integers(len(jpegs))}.jpg", path)
                name = flat_name(relative)
                os.link(blob_dir / f"{rng.integers(len(parsing))}.png", root / "semantic_merge3" / f"{flat_stem(name)}.png")
                names.append(name)
                person.append(name)
            by_person.append(person)
            identity += 1
        (root / f"{phase}.lst").write_text("\n".join(names) + "\n")
        candidates = [(a, b) for person in by_person for a in person for b in person if a != b]
        picks = rng.choice(len(candidates), counts[f"{phase}_pairs"], replace=len(candidates) < counts[f"{phase}_pairs"])
        write_pairs(root / f"fasion-resize-pairs-{phase}.csv", [candidates[i] for i in picks])
        keypoints = {}
        for name in names:
            kp = np.stack([rng.integers(0, ANNOTATION_SIZE[0], 18), rng.integers(0, ANNOTATION_SIZE[1], 18)], axis=1)
            kp[rng.random(18) < 0.15] = -1
            keypoints[name] = kp
        write_annotations(root / f"fasion-resize-annotation-{phase}.csv", keypoints)
    shutil.rmtree(blob_dir)  # the names keep the data (hard links)
    return counts


def inodes(path: Path) -> set[tuple[int, int]]:
    out = set()
    for dirpath, _, filenames in os.walk(path):
        for file in filenames:
            stat = os.lstat(os.path.join(dirpath, file))
            out.add((stat.st_dev, stat.st_ino))
    return out


def folder_bytes(path: Path, exclude: set[tuple[int, int]]) -> tuple[int, int]:
    """(bytes of the files under ``path``, once per inode, hard links into ``exclude`` not counted; files)."""
    seen, total, files = set(exclude), 0, 0
    for dirpath, _, filenames in os.walk(path):
        for file in filenames:
            stat = os.lstat(os.path.join(dirpath, file))
            files += 1
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total, files


def run_stage(stage: str, workdir: Path) -> dict[str, float]:
    """Run ``stages/<stage>.py`` in ``workdir``: wall s, CPU s (tree), peak RSS of the tree (sampled, MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = psutil.Popen([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=workdir,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
    peak = 0
    while process.poll() is None:
        try:
            tree = [process] + process.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = process.stdout.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"{stage} failed ({process.returncode}):\n{output}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak / 2 ** 20, 1),
            "summary": output.strip().splitlines()[-1:]}


def upstream_way(raw: Path, out: Path, sample: int) -> dict[str, float]:
    """Upstream's resize (sequential, PIL default filter, 256x256) and dense .npy pose maps, per image."""
    images = sorted((raw / "img_highres").rglob("*.jpg"))[:sample]
    out.mkdir(parents=True, exist_ok=True)
    start, cpu0 = time.perf_counter(), time.process_time()
    for i, path in enumerate(images):
        with Image.open(path) as image:
            image.resize([256, 256]).save(out / f"{i}.jpg")
    resize_wall, resize_cpu = time.perf_counter() - start, time.process_time() - cpu0
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    start, cpu0 = time.perf_counter(), time.process_time()
    for i in range(len(images)):
        maps = np.zeros((256, 256, 18), dtype="uint8")
        for joint in range(18):  # upstream's cords_to_map: a full-grid Gaussian per joint, truncated to uint8
            y, x = rng.integers(0, 256), rng.integers(0, 176)
            maps[..., joint] = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 6 ** 2))
        np.save(out / f"{i}.npy", maps)
    pose_wall, pose_cpu = time.perf_counter() - start, time.process_time() - cpu0
    npy_bytes = sum(p.stat().st_size for p in out.glob("*.npy"))
    jpg_bytes = sum(p.stat().st_size for p in out.glob("*.jpg"))
    n = len(images)
    return {"sample_images": n, "resize_s_per_image": resize_wall / n, "resize_cpu_s_per_image": resize_cpu / n,
            "pose_npy_s_per_image": pose_wall / n, "pose_npy_cpu_s_per_image": pose_cpu / n,
            "npy_bytes_per_image": npy_bytes / n, "resized_jpg_bytes_per_image": jpg_bytes / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of DeepFashion's counts (default 1)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/casd-scale"), help="work folder (replaced)")
    parser.add_argument("--workers", type=int, default=2, help="data.workers (default 2)")
    parser.add_argument("--upstream-sample", type=int, default=300, help="images timed for upstream's approach")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    if args.dir.exists():
        shutil.rmtree(args.dir)
    raw = args.dir / "deepfashion"
    start = time.perf_counter()
    counts = build_raw(raw, args.scale)
    build_s = time.perf_counter() - start
    images = counts["train_images"] + counts["test_images"]
    print(f"raw set: {counts} ({images} images) built in {build_s:.0f} s under {raw}", flush=True)
    params = yaml.safe_load((REPO / "params-deepfashion.yaml").read_text())
    params["data"].update(source="deepfashion", root=str(raw), image_size=list(IMAGE_SIZE),
                          annotation_size=list(ANNOTATION_SIZE), workers=args.workers)
    (args.dir / "params.yaml").write_text(yaml.safe_dump(params))

    results: dict[str, object] = {"scale": args.scale, "counts": counts, "workers": args.workers, "stages": {}}
    outputs = {"synth": "data/raw", "split": "data/split", "resize": "data/resized", "pose": "data/pose",
               "segment": "data/parsing"}
    raw_inodes = inodes(raw)
    for stage in STAGES:
        figures = run_stage(stage, args.dir)
        figures["bytes_written"], figures["files_written"] = folder_bytes(args.dir / outputs[stage], raw_inodes)
        results["stages"][stage] = figures  # type: ignore[index]
        print(f"{stage:8s} wall {figures['wall_s']:8.1f} s  cpu {figures['cpu_s']:8.1f} s  peak RSS (tree) "
              f"{figures['peak_rss_mb']:7.0f} MB  written {figures['bytes_written'] / 1e6:9.1f} MB "
              f"({figures['files_written']} files)", flush=True)
    total_wall = sum(s["wall_s"] for s in results["stages"].values())  # type: ignore[union-attr]
    peak = max(s["peak_rss_mb"] for s in results["stages"].values())  # type: ignore[union-attr]
    factor = FULL["train_images"] + FULL["test_images"]
    results["total"] = {"wall_s": round(total_wall, 1), "peak_rss_mb": peak,
                        "wall_s_extrapolated_to_full": round(total_wall * factor / images, 1)}
    print(f"all data stages: {total_wall:.1f} s wall, peak RSS {peak:.0f} MB at {images} images "
          f"(linear extrapolation to {factor}: {total_wall * factor / images / 60:.1f} min)")

    upstream = upstream_way(raw, args.dir / "upstream", min(args.upstream_sample, images))
    extrapolated = {"images": factor,
                    "resize_s": round(upstream["resize_s_per_image"] * factor, 1),
                    "pose_npy_s": round(upstream["pose_npy_s_per_image"] * factor, 1),
                    "npy_gb": round(upstream["npy_bytes_per_image"] * factor / 1e9, 1)}
    results["upstream"] = {"measured": upstream, "extrapolated": extrapolated}
    print(f"upstream's approach, measured on {upstream['sample_images']} images and EXTRAPOLATED to {factor}: "
          f"sequential resize {extrapolated['resize_s'] / 60:.1f} min, dense .npy maps "
          f"{extrapolated['pose_npy_s'] / 60:.1f} min and {extrapolated['npy_gb']:.1f} GB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
