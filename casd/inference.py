"""The test stage: generate every test pair, in batches, resumably.

For each (source, target) row of ``data/split/pairs-test.csv`` the generator
renders the source person in the target's pose; the picture is written as

    data/generated/<source stem>___<target stem>.png     (:func:`output_name`)

at ``data.image_size``, the same frame as the ground truth
``data/resized/test/<target>``, so that the evaluate stage compares them pixel
for pixel. For ``test.strips`` pairs spread evenly over the list, a strip
``source | target pose | generated | ground truth`` goes to
``data/strips/<same name>.png``.

Upstream generates one pair at a time; here ``test.batch_size`` pairs go
through the network at once, with the generator's ``modulated_norm`` set to
``"sample"`` (see :class:`casd.models.generator.Generator`), so that a batch
gives upstream's batch-1 pictures.

Resuming: every file is written atomically, so a file that exists is
complete. ``data/generated/manifest.json`` records a fingerprint of what decides
the pictures (checkpoint bytes, test inputs' bytes, image size, pose rendering,
AMP); a restarted stage with the same fingerprint skips the pairs already
written, a different fingerprint clears the old pictures first (as do pairs no
longer listed), so the folder always holds exactly the manifest's pictures. (``dvc.yaml`` marks the outputs
``persist: true`` so that DVC does not delete them before a rerun.)

``test.checkpoint`` is a project checkpoint (``models/generator.pt`` of the
train stage, a ``checkpoints/*.pt`` training state, or an imported one) or an
upstream release ``latest_net_netG.pth`` (a plain state dict, converted on the
fly by :func:`casd.checkpoints.load_upstream_generator`), so that with
DeepFashion data ``dvc repro evaluate`` reproduces the paper's numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from casd.config import from_dict, load_params, resolve_device
from casd.errors import ConfigError, DataError
from casd import visuals
from casd.checkpoints import load_generator
from casd.fileio import safe_name, write_json

AMP_MODES = ("auto", "none", "fp16", "bf16")
GENERATED_DIR = Path("data/generated")
STRIPS_DIR = Path("data/strips")
MANIFEST = "manifest.json"
SEPARATOR = "___"  # between the two stems of an output name; flat DeepFashion names never contain it
_FINGERPRINT_VERSION = 1


@dataclass
class TestConfig:
    """The ``test:`` section of params.yaml."""

    __test__ = False  # not a pytest class

    checkpoint: str = "models/generator.pt"  # project checkpoint, or upstream latest_net_netG.pth
    batch_size: int = 8                      # pairs per generator call
    device: str = "auto"                     # auto (cuda if available) | cpu | cuda | cuda:N
    amp: str = "auto"                        # auto (fp16 on CUDA, none on CPU) | none | fp16 | bf16
    strips: int = 16                         # strips for this many pairs spread over the list; -1 = all, 0 = none
    limit: int = 0                           # only the first N pairs (quick looks); 0 = all
    workers: int = 0                         # DataLoader worker processes reading the test images

    def __post_init__(self):
        if self.amp not in AMP_MODES:
            raise ConfigError(f"params.yaml [test]: amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"params.yaml [test]: batch_size must be >= 1, got {self.batch_size}")
        if int(self.limit) < 0 or int(self.workers) < 0 or int(self.strips) < -1:
            raise ConfigError("params.yaml [test]: limit and workers must be >= 0, strips >= -1")


@dataclass
class TestJob:
    """Everything the test stage reads from params.yaml, typed."""

    __test__ = False

    test: TestConfig
    image_size: tuple[int, int]              # data.image_size
    pose_mode: str = "onehot"                # pose.mode  (for upstream checkpoints, which do not record it)
    pose_sigma: float = 6.0                  # pose.sigma
    model: dict | None = None                # model: section (upstream checkpoints: the architecture)
    data_root: Path = Path("data")
    out_dir: Path = GENERATED_DIR
    strips_dir: Path = STRIPS_DIR

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TestJob":
        data = params.get("data") or {}
        size = data.get("image_size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size)):
            raise ConfigError(f"params.yaml [data]: image_size must be [H, W] integers, got {size!r}")
        pose = params.get("pose") or {}
        return cls(test=from_dict(TestConfig, params.get("test"), "test"), image_size=(size[0], size[1]),
                   pose_mode=str(pose.get("mode", "onehot")), pose_sigma=float(pose.get("sigma", 6.0)),
                   model=dict(params.get("model") or {}))


def output_name(source: str, target: str) -> str:
    """``<source stem>___<target stem>.png``: the generated picture of one pair."""
    stem = lambda name: name[:-4] if name.lower().endswith((".jpg", ".png")) else name  # noqa: E731
    return safe_name(f"{stem(source)}{SEPARATOR}{stem(target)}.png", "pairs")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``test.amp`` on ``device`` (None = full precision)."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]


def fingerprint(checkpoint: Path, dataset, pose_mode: str, pose_sigma: float, amp: torch.dtype | None) -> str:
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

    add(checkpoint)
    layout, phase = dataset.layout, dataset.phase
    add(layout.pairs(phase))
    add(layout.keypoints(phase))
    for name in dataset.names:
        add(layout.image(phase, name))
        add(layout.parsing_map(phase, name))
    h.update(json.dumps([_FINGERPRINT_VERSION, list(dataset.image_size), pose_mode, pose_sigma, str(amp)]).encode())
    return h.hexdigest()[:20]


def strip_indices(count: int, strips: int) -> set[int]:
    """Indices of the pairs that get a strip: ``strips`` spread evenly over ``count`` (-1: all)."""
    if strips < 0 or strips >= count:
        return set(range(count))
    return set(np.linspace(0, count - 1, strips).round().astype(int).tolist()) if strips else set()


def _prepare_output(out_dir: Path, strips_dir: Path | None, stamp: str, manifest: dict) -> None:
    """Keep the pictures of a run with the same fingerprint, for the pairs still listed; clear the rest."""
    path = out_dir / MANIFEST
    previous = None
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError):
            previous = None
    keep = {f for _, _, f in manifest["pairs"]} if previous == stamp else set()
    keep_strips = set(manifest["strips"]) & keep
    stale = [p for p in out_dir.glob("*.png") if p.name not in keep] if out_dir.is_dir() else []
    if strips_dir is not None and strips_dir.is_dir():
        stale += [p for p in strips_dir.glob("*.png") if p.name not in keep_strips]
    if stale:
        why = "are no longer listed" if previous == stamp else "come from another checkpoint, data or settings"
        print(f"test: removing {len(stale)} earlier pictures that {why}", flush=True)
    for p in stale:
        p.unlink()
    write_json(path, {**manifest, "complete": False})


@torch.no_grad()
def generate_test_pairs(generator: torch.nn.Module, dataset, out_dir: str | Path, *,
                        strips_dir: str | Path | None = STRIPS_DIR, batch_size: int = 8,
                        device: torch.device | str = "cpu", amp: torch.dtype | None = None,
                        strips: int = 16, limit: int = 0, workers: int = 0, stamp: str = "",
                        info: Mapping[str, Any] | None = None) -> dict:
    """Generate every pair of ``dataset`` (a :class:`casd.data.dataset.PairDataset` of the test phase).

    Writes ``out_dir/<output_name>`` per pair, strips for :func:`strip_indices`
    pairs under ``strips_dir``, and ``out_dir/manifest.json`` (pairs, file
    names, fingerprint ``stamp``, timing). Pairs whose picture exists under the
    same ``stamp`` are skipped. Returns the manifest.
    """
    from tqdm import tqdm

    from casd.data.dataset import add_pose_input

    out_dir = Path(out_dir)
    strips_dir = Path(strips_dir) if strips_dir is not None else None
    device = torch.device(device)
    generator = generator.to(device).eval().set_modulated_norm("sample")  # upstream's batch-1 pictures, batched
    names = dataset.names
    pairs = [(names[int(s)], names[int(t)]) for s, t in dataset.pairs]
    if limit:
        pairs = pairs[:limit]
    files = [output_name(s, t) for s, t in pairs]
    if len(set(files)) != len(files):
        dup = next(f for f in files if files.count(f) > 1)
        raise DataError(dataset.layout.pairs(dataset.phase), f"pair listed twice (output {dup})")
    with_strip = strip_indices(len(pairs), strips)
    manifest = {"fingerprint": stamp, "image_size": list(dataset.image_size), "pose_mode": dataset.pose_config.mode,
                "amp": str(amp).replace("torch.", "") if amp else "none", "checkpoint_source": (info or {}).get(
                    "source"), "pairs": [[s, t, f] for (s, t), f in zip(pairs, files)],
                "strips": sorted(files[i] for i in with_strip)}
    _prepare_output(out_dir, strips_dir, stamp, manifest)

    def done(i: int) -> bool:
        return (out_dir / files[i]).is_file() and (i not in with_strip or strips_dir is None
                                                  or (strips_dir / files[i]).is_file())

    todo = [i for i in range(len(pairs)) if not done(i)]
    skipped = len(pairs) - len(todo)
    if skipped:
        print(f"test: {skipped} of {len(pairs)} pairs already generated, {len(todo)} to go", flush=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, todo), batch_size=batch_size,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    started = time.perf_counter()
    order = iter(todo)
    with tqdm(total=len(todo), desc="test pairs", unit="pair", disable=not todo) as bar:
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            add_pose_input(batch, dataset.image_size, dataset.pose_config)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                fake = generator.decode(batch["BP2"], generator.encode_style(batch["P1"], batch["SP1"]))[0]
            fake = fake.float()
            pictures = visuals.to_uint8(fake)  # [B, H, W, 3]
            sources, truths = visuals.to_uint8(batch["P1"]), visuals.to_uint8(batch["P2"])
            for b, picture in enumerate(pictures):
                i = next(order)
                visuals.save_png(picture, out_dir / files[i])
                if strips_dir is not None and i in with_strip:
                    skeleton = visuals.draw_skeleton(batch["K2"][b], dataset.image_size)
                    visuals.save_png(visuals.make_strip([sources[b], skeleton, picture, truths[b]]),
                                     strips_dir / files[i])
            bar.update(len(pictures))
    seconds = time.perf_counter() - started
    manifest.update(complete=True, generated=len(todo), skipped=skipped, seconds=round(seconds, 3),
                    pairs_per_s=round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
                    batch_size=batch_size, device=str(device))
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | Path = GENERATED_DIR) -> dict:
    """The manifest of a finished test stage (DataError if absent or incomplete)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(path, "not found: run the test stage first (dvc repro test)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not manifest.get("complete"):
        raise DataError(path, "the test stage did not finish; run it again (it resumes)")
    return manifest


def run_test(job: TestJob) -> dict:
    """The test stage: load the checkpoint named by ``test.checkpoint`` and generate every test pair."""
    from casd.data.dataset import PairDataset
    from casd.data.pose import PoseConfig

    cfg = job.test
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.amp, device)
    checkpoint = Path(cfg.checkpoint)
    loaded = load_generator(checkpoint, device=device, modulated_norm="sample")
    loaded.check_settings(model=job.model, image_size=job.image_size, pose_mode=job.pose_mode)
    generator = loaded.generator
    pose_mode = loaded.pose_mode or job.pose_mode
    pose_sigma = float(loaded.pose_sigma or job.pose_sigma)
    info = {**loaded.extra, "source": "upstream" if loaded.format == "upstream" else "casd"}
    if not getattr(generator, "vgg_pretrained", True):
        print("test: note: this generator's style encoder VGG holds random weights (model.vgg_weights: none)",
              flush=True)
    dataset = PairDataset(job.data_root, "test", job.image_size, render_pose=False,
                          pose_config=PoseConfig(mode=pose_mode, sigma=pose_sigma), preload=False)
    stamp = fingerprint(checkpoint, dataset, pose_mode, pose_sigma, amp)
    manifest = generate_test_pairs(generator, dataset, job.out_dir, strips_dir=job.strips_dir,
                                   batch_size=cfg.batch_size, device=device, amp=amp, strips=cfg.strips,
                                   limit=cfg.limit, workers=cfg.workers, stamp=stamp,
                                   info={**info, "checkpoint": str(checkpoint)})
    rate = f", {manifest['pairs_per_s']} pairs/s" if manifest.get("pairs_per_s") else ""
    print(f"test: {len(manifest['pairs'])} pairs -> {job.out_dir} ({manifest['generated']} generated, "
          f"{manifest['skipped']} already there{rate}); strips -> {job.strips_dir}", flush=True)
    return manifest


def run_from_params(params_path: str | Path = "params.yaml") -> dict:
    """The test stage: params.yaml -> :func:`run_test` with the standard paths."""
    return run_test(TestJob.from_params(load_params(params_path)))


def test_cli(argv: list[str]) -> None:
    """``casd test``: generate every test pair (the test stage)."""
    parser = argparse.ArgumentParser(prog="casd test", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--checkpoint", help="override test.checkpoint")
    parser.add_argument("--batch-size", type=int, help="override test.batch_size")
    parser.add_argument("--device", help="override test.device")
    args = parser.parse_args(argv)
    job = TestJob.from_params(load_params(args.params))
    overrides = {k: v for k, v in {"checkpoint": args.checkpoint, "batch_size": args.batch_size,
                                   "device": args.device}.items() if v is not None}
    if overrides:
        job = dataclasses.replace(job, test=dataclasses.replace(job.test, **overrides))
    run_test(job)


test_cli.__test__ = False  # not a pytest test, despite the name
