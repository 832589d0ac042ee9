"""The test stage: every pair of ``data/split/pairs-test.csv`` through the generator, resumable.

Per pair it writes ``data/generated/<from>___<to>.png`` and the predicted
target parsing ``data/predicted_parsing/<from>___<to>.png`` (uint8 region
ids), strips for ``test.strips`` pairs in ``data/strips/``, and
``data/generated/manifest.json`` whose fingerprint lets a restarted stage
skip finished pairs (names and folders: :mod:`casd.data.layout`, which the
evaluate stage reads them by). The generator runs with
``modulated_norm="sample"``: a batch gives upstream's batch-of-one pictures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm import tqdm

from casd import visuals
from casd.checkpoints import load_generator
from casd.config import DEFAULT_PARAMS, Checks, from_dict, resolve_device
from casd.data.config import DataConfig
from casd.data.dataset import PairBatch, PairDataset
from casd.data.layout import (GENERATED_DIR, GENERATED_MANIFEST, PREDICTED_PARSING_DIR, PREPARED, STRIPS_DIR,
                              output_name, write_generated_manifest)
from casd.data.pose import PoseConfig
from casd.errors import DataError
from casd.models.generator import predicted_parsing

STRIP_PANELS = ("source", "target pose", "generated", "ground truth", "predicted parsing")
TEST_AMP_MODES = ("none", "auto", "fp16", "bf16")  # test.amp; auto: fp16 on CUDA, fp32 elsewhere
_FINGERPRINT_VERSION = 1


@dataclasses.dataclass
class GenerationConfig:
    """The ``test:`` section of params.yaml: how the test stage generates every test pair."""

    checkpoint: str = "models/generator.pt"  # any generator file casd.checkpoints.load_generator reads
    batch_size: int = 8                      # pairs per generator call
    device: str = "auto"                     # auto (cuda if available) | cpu | cuda | cuda:N
    amp: str = "none"                        # none (fp32, as upstream tests) | auto (fp16 on CUDA) | fp16 | bf16
    strips: int = 16                         # strips for this many pairs spread over the list; -1 = all, 0 = none
    limit: int = 0                           # only the first N pairs (quick looks); 0 = all
    workers: int = 0                         # DataLoader worker processes reading the test images

    def __post_init__(self):
        checks = Checks("test")
        checks.choice("amp", self.amp, TEST_AMP_MODES)
        checks.number("batch_size", self.batch_size, minimum=1, integer=True)
        checks.number("limit", self.limit, minimum=0, integer=True)
        checks.number("workers", self.workers, minimum=0, integer=True)
        checks.number("strips", self.strips, minimum=-1, integer=True)
        checks.done()


@dataclasses.dataclass
class GenerationJob:
    """Everything the test stage reads from params.yaml, typed, and where it writes."""

    config: GenerationConfig
    image_size: tuple[int, int]                          # data.image_size
    pose: PoseConfig = dataclasses.field(default_factory=PoseConfig)  # for files that do not record it (upstream)
    model: dict | None = None                            # model: section, checked against the checkpoint
    data_root: Path = PREPARED.root
    out_dir: Path = GENERATED_DIR
    parsing_dir: Path = PREDICTED_PARSING_DIR
    strips_dir: Path = STRIPS_DIR

    @classmethod
    def from_params(cls, params: Mapping[str, Any], source: str | Path = DEFAULT_PARAMS) -> "GenerationJob":
        """The sections of params file ``source`` (read into ``params``) the test stage uses."""
        data = from_dict(DataConfig, params.get("data"), "data", source)
        return cls(config=from_dict(GenerationConfig, params.get("test"), "test", source),
                   image_size=tuple(data.image_size), pose=from_dict(PoseConfig, params.get("pose"), "pose", source),
                   model=dict(params.get("model") or {}))


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``test.amp`` on ``device`` (None = full precision)."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def fingerprint(checkpoint: Path, dataset: PairDataset, amp: torch.dtype | None) -> str:
    """Hash of everything that decides the generated pictures.

    The checkpoint's bytes, the test inputs' bytes (pairs CSV, keypoints, every
    image and parsing map a pair uses: a re-run of resize or segment with other
    settings changes them under the same names), image size, pose rendering, AMP.
    """
    h = hashlib.sha256()

    def add(path: Path) -> None:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)

    layout, phase = dataset.layout, dataset.phase
    add(checkpoint)
    add(layout.pairs(phase))
    add(layout.keypoints(phase))
    for name in dataset.names:
        add(layout.image(phase, name))
        add(layout.parsing_map(phase, name))
    pose = dataset.pose_config
    h.update(json.dumps([_FINGERPRINT_VERSION, list(dataset.image_size), pose.mode, pose.sigma, str(amp)]).encode())
    return h.hexdigest()[:20]


def strip_indices(count: int, strips: int) -> set[int]:
    """Indices of the pairs that get a strip: ``strips`` spread evenly over ``count`` (-1: all)."""
    if strips < 0 or strips >= count:
        return set(range(count))
    return set(np.linspace(0, count - 1, strips).round().astype(int).tolist()) if strips else set()


def _prepare_output(job: GenerationJob, stamp: str, manifest: dict) -> None:
    """Keep the pictures of a run with the same fingerprint, for the pairs still listed; clear the rest."""
    path = job.out_dir / GENERATED_MANIFEST
    previous = None
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError):
            previous = None
    keep = {f for _, _, f in manifest["pairs"]} if previous == stamp else set()
    keep_strips = set(manifest["strips"]) & keep
    stale = []
    for folder, kept in ((job.out_dir, keep), (job.parsing_dir, keep), (job.strips_dir, keep_strips)):
        if folder is not None and folder.is_dir():
            stale += [p for p in folder.glob("*.png") if p.name not in kept]
    if stale:
        why = "are no longer listed" if previous == stamp else "come from another checkpoint, data or settings"
        print(f"test: removing {len(stale)} earlier pictures that {why}", flush=True)
    for p in stale:
        p.unlink()
    write_generated_manifest(job.out_dir, {**manifest, "complete": False})


@torch.no_grad()
def generate_test_pairs(generator, dataset: PairDataset, job: GenerationJob, stamp: str = "",
                        checkpoint_source: str | None = None) -> dict:
    """Generate every pair of ``dataset`` (a test-phase :class:`PairDataset`) as ``job`` says.

    Writes ``job.out_dir/<output_name>`` and ``job.parsing_dir/<output_name>``
    per pair, strips (:data:`STRIP_PANELS`) for :func:`strip_indices` pairs under
    ``job.strips_dir`` (None: no strips), and ``out_dir/manifest.json``
    (pairs, file names, fingerprint ``stamp``, timing). Pairs already written
    under the same ``stamp`` are skipped. Returns the manifest.
    """
    cfg = job.config
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.amp, device)
    generator = generator.to(device).eval().set_modulated_norm("sample")  # upstream's batch-1 pictures, batched
    names = dataset.names
    pairs = [(names[int(s)], names[int(t)]) for s, t in dataset.pairs]
    if cfg.limit:
        pairs = pairs[:cfg.limit]
    files = [output_name(s, t) for s, t in pairs]
    if len(set(files)) != len(files):
        dup = next(f for f in files if files.count(f) > 1)
        raise DataError(dataset.layout.pairs(dataset.phase), f"pair listed twice (output {dup})")
    with_strip = strip_indices(len(pairs), cfg.strips) if job.strips_dir is not None else set()
    manifest = {"fingerprint": stamp, "image_size": list(dataset.image_size), "pose_mode": dataset.pose_config.mode,
                "amp": str(amp).replace("torch.", "") if amp else "none", "checkpoint_source": checkpoint_source,
                "checkpoint": cfg.checkpoint, "predicted_parsing": str(job.parsing_dir),
                "pairs": [[s, t, f] for (s, t), f in zip(pairs, files)],
                "strips": sorted(files[i] for i in with_strip), "strip_panels": list(STRIP_PANELS)}
    _prepare_output(job, stamp, manifest)

    def done(i: int) -> bool:
        return ((job.out_dir / files[i]).is_file() and (job.parsing_dir / files[i]).is_file()
                and (i not in with_strip or (job.strips_dir / files[i]).is_file()))

    todo = [i for i in range(len(pairs)) if not done(i)]
    skipped = len(pairs) - len(todo)
    if skipped:
        print(f"test: {skipped} of {len(pairs)} pairs already generated, {len(todo)} to go", flush=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, todo), batch_size=cfg.batch_size,
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                         collate_fn=PairBatch.collate)
    started = time.perf_counter()
    order = iter(todo)
    with tqdm(total=len(todo), desc="test pairs", unit="pair", disable=not todo) as bar:
        for batch in loader:
            batch = batch.to(device).render_target_pose(dataset.image_size, dataset.pose_config)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                tokens = generator.encode_style(batch.source, batch.source_parsing)
                fake, attention = generator.decode(batch.target_pose, tokens)
            pictures = visuals.to_uint8(fake.float())  # [B, H, W, 3]
            regions = predicted_parsing(attention, dataset.image_size).cpu().numpy()  # [B, H, W]
            sources, truths = visuals.to_uint8(batch.source), visuals.to_uint8(batch.target)
            for b, picture in enumerate(pictures):
                i = next(order)
                visuals.save_png(picture, job.out_dir / files[i])
                visuals.save_png(regions[b], job.parsing_dir / files[i])
                if i in with_strip:
                    skeleton = visuals.draw_skeleton(batch.target_keypoints[b], dataset.image_size)
                    strip = visuals.make_strip([sources[b], skeleton, picture, truths[b],
                                                visuals.parsing_colours(regions[b])])
                    visuals.save_png(strip, job.strips_dir / files[i])
            bar.update(len(pictures))
    seconds = time.perf_counter() - started
    manifest.update(complete=True, generated=len(todo), skipped=skipped, seconds=round(seconds, 3),
                    pairs_per_s=round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
                    batch_size=cfg.batch_size, device=str(device))
    write_generated_manifest(job.out_dir, manifest)
    return manifest


def run_test(job: GenerationJob) -> dict:
    """The test stage: load ``test.checkpoint`` (checked against params) and generate every test pair."""
    checkpoint = Path(job.config.checkpoint)
    device = resolve_device(job.config.device)
    loaded = load_generator(checkpoint, device=device)
    loaded.check_settings(model=job.model, image_size=job.image_size, pose_mode=job.pose.mode)
    pose = PoseConfig(mode=loaded.pose_mode or job.pose.mode, sigma=loaded.pose_sigma or job.pose.sigma)
    if not loaded.generator.vgg_pretrained:
        print("test: note: this generator's style encoder VGG holds random weights (model.vgg_weights: none)",
              flush=True)
    dataset = PairDataset(job.data_root, "test", job.image_size, pose_config=pose, preload=False)
    stamp = fingerprint(checkpoint, dataset, autocast_dtype(job.config.amp, device))
    manifest = generate_test_pairs(loaded.generator, dataset, job, stamp,
                                   "upstream" if loaded.format == "upstream" else "casd")
    rate = f", {manifest['pairs_per_s']} pairs/s" if manifest.get("pairs_per_s") else ""
    print(f"test: {len(manifest['pairs'])} pairs -> {job.out_dir} ({manifest['generated']} generated, "
          f"{manifest['skipped']} already there{rate}); predicted parsing -> {job.parsing_dir}; "
          f"strips -> {job.strips_dir}", flush=True)
    return manifest
