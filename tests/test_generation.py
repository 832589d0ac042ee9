"""The test stage: batched generation of every test pair, output names, strips, resuming."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from casd import generation, visuals
from casd.data.layout import output_name
from casd.models.generator import predicted_parsing
from casd.errors import ConfigError
from casd.models.generator import GeneratorConfig
from helpers import responsive_tiny_generator, save_tiny_generator
from tests.conftest import TINY_IMAGE_SIZE


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny project checkpoints (different weights) and the first one as an upstream state dict."""
    from casd.checkpoints import export_upstream_state_dict

    root = tmp_path_factory.mktemp("checkpoints")
    generator = responsive_tiny_generator()
    torch.save(export_upstream_state_dict(generator), root / "latest_net_netG.pth")
    return {"casd": save_tiny_generator(root / "generator.pt", generator, TINY_IMAGE_SIZE),
            "other": save_tiny_generator(root / "other.pt", responsive_tiny_generator(seed=1), TINY_IMAGE_SIZE),
            "upstream": root / "latest_net_netG.pth", "model": dataclasses.asdict(generator.config)}


def _job(root, out, checkpoint, **test):
    config = generation.GenerationConfig(checkpoint=str(checkpoint), device="cpu",
                                        **{"batch_size": 4, "strips": 3, **test})
    return generation.GenerationJob(config=config, image_size=TINY_IMAGE_SIZE, data_root=root,
                                   out_dir=out / "generated", parsing_dir=out / "predicted_parsing",
                                   strips_dir=out / "strips")


@pytest.fixture(scope="module")
def reference(tiny_prepared, checkpoints, tmp_path_factory):
    """One finished run of the test stage, batches of 4 (shared: read it, do not modify it)."""
    job = _job(tiny_prepared, tmp_path_factory.mktemp("reference"), checkpoints["casd"])
    return job, generation.run_test(job)


@pytest.fixture
def job(tiny_prepared, checkpoints, tmp_path):
    return _job(tiny_prepared, tmp_path, checkpoints["casd"])


def _pairs(root):
    from casd.data.tables import read_pairs

    return read_pairs(root / "split" / "pairs-test.csv")


def _same_pictures(dir_a, dir_b, tolerance=0):
    names = sorted(p.name for p in dir_b.glob("*.png"))
    assert names and set(names) <= {p.name for p in dir_a.glob("*.png")}
    for name in names:
        a = np.asarray(Image.open(dir_a / name)).astype(int)
        b = np.asarray(Image.open(dir_b / name)).astype(int)
        assert np.abs(a - b).max() <= tolerance, name


def test_every_pair_generated_under_its_name_with_strips(reference, tiny_prepared):
    job, manifest = reference
    pairs = _pairs(tiny_prepared)
    assert len(pairs) >= 9  # three batches of 4 at least partly filled
    expected = {f"{s[:-4]}___{t[:-4]}.png" for s, t in pairs}
    assert {p.name for p in job.out_dir.glob("*.png")} == expected
    assert {p.name for p in job.parsing_dir.glob("*.png")} == expected
    assert [tuple(p) for p in manifest["pairs"]] == [(s, t, output_name(s, t)) for s, t in pairs]
    assert manifest["complete"] and manifest["generated"] == len(pairs) and manifest["skipped"] == 0
    strips = sorted(job.strips_dir.glob("*.png"))
    assert len(strips) == 3 and {p.name for p in strips} <= expected
    h, w = TINY_IMAGE_SIZE
    picture = np.asarray(Image.open(job.out_dir / strips[0].name))
    strip = np.asarray(Image.open(strips[0]))
    assert picture.shape == (h, w, 3) and strip.shape == (h, 5 * w, 3)
    np.testing.assert_array_equal(strip[:, 2 * w:3 * w], picture)  # source | pose | generated | truth | parsing
    regions = np.asarray(Image.open(job.parsing_dir / strips[0].name))
    assert regions.shape == (h, w) and regions.dtype == np.uint8 and regions.max() < 8
    np.testing.assert_array_equal(strip[:, 4 * w:], visuals.parsing_colours(regions))
    assert manifest["strip_panels"] == ["source", "target pose", "generated", "ground truth", "predicted parsing"]
    source, target = next((s, t) for s, t in pairs if output_name(s, t) == strips[0].name)
    truth = np.asarray(Image.open(tiny_prepared / "resized" / "test" / target))
    assert np.abs(strip[:, 3 * w:4 * w].astype(int) - truth).max() <= 1
    assert picture.std() > 1  # not a blank picture


def test_batched_generation_equals_batch_of_one(reference, tiny_prepared, checkpoints, tmp_path):
    single = _job(tiny_prepared, tmp_path, checkpoints["casd"], batch_size=1, strips=0, limit=5)
    generation.run_test(single)
    _same_pictures(reference[0].out_dir, single.out_dir, tolerance=1)


def test_restart_after_interruption_skips_finished_pairs(job, monkeypatch):
    from casd.models.generator import Generator

    calls = {"n": 0}
    real = Generator.decode

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the stage is killed during its second batch
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Generator, "decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generation.run_test(job)
    first = {p.name: p.stat().st_mtime_ns for p in job.out_dir.glob("*.png")}
    assert len(first) == 4  # the first batch was written, nothing half-written
    assert not json.loads((job.out_dir / "manifest.json").read_text())["complete"]
    assert not [p for p in job.out_dir.iterdir() if ".tmp" in p.name]

    monkeypatch.setattr(Generator, "decode", real)
    manifest = generation.run_test(job)
    assert manifest["skipped"] == 4 and manifest["generated"] == len(manifest["pairs"]) - 4
    assert {p.name: p.stat().st_mtime_ns for p in job.out_dir.glob("*.png") if p.name in first} == first
    # a removed strip is regenerated on the next run, nothing else
    strip = next(job.strips_dir.glob("*.png"))
    strip.unlink()
    manifest = generation.run_test(job)
    assert manifest["generated"] == 1 and strip.is_file()


def test_other_checkpoint_replaces_old_pictures(reference, tiny_prepared, checkpoints, tmp_path):
    import shutil

    job = _job(tiny_prepared, tmp_path, checkpoints["other"])
    shutil.copytree(reference[0].out_dir, job.out_dir)  # a finished run of the first checkpoint
    manifest = generation.run_test(job)
    assert manifest["skipped"] == 0 and manifest["generated"] == len(manifest["pairs"])
    for path in job.out_dir.glob("*.png"):
        assert not np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(reference[0].out_dir / path.name)))


def test_upstream_state_dict_is_converted_on_the_fly(reference, tiny_prepared, checkpoints, tmp_path):
    from casd.checkpoints import load_generator

    loaded = load_generator(checkpoints["upstream"])
    assert loaded.format == "upstream" and loaded.image_size is None
    assert loaded.config == GeneratorConfig(**{**checkpoints["model"], "vgg_weights": "torchvision"})
    job = dataclasses.replace(_job(tiny_prepared, tmp_path, checkpoints["upstream"], strips=0, limit=4),
                              model=checkpoints["model"])
    assert generation.run_test(job)["checkpoint_source"] == "upstream"
    _same_pictures(reference[0].out_dir, job.out_dir)


def test_limit_and_config_checks(job):
    limited = dataclasses.replace(job, config=dataclasses.replace(job.config, limit=2, strips=-1))
    manifest = generation.run_test(limited)
    assert len(manifest["pairs"]) == 2 and len(list(job.strips_dir.glob("*.png"))) == 2
    with pytest.raises(ConfigError, match="amp"):
        generation.GenerationConfig(amp="fp8")
    with pytest.raises(ConfigError, match="image_size"):
        generation.run_test(dataclasses.replace(job, image_size=(128, 88)))
    assert generation.strip_indices(10, 3) == {0, 4, 9} or len(generation.strip_indices(10, 3)) == 3
    assert output_name("a_1front.jpg", "b_2back.jpg") == "a_1front___b_2back.png"


def test_repository_params_build_the_test_job():
    from pathlib import Path

    from casd.config import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    job = generation.GenerationJob.from_params(params)
    assert job.config.checkpoint and job.image_size == tuple(params["data"]["image_size"])
    assert job.out_dir == Path("data/generated") and job.strips_dir == Path("data/strips")


def test_changed_test_inputs_or_pair_list_are_not_reused(reference, tiny_prepared, checkpoints, tmp_path):
    import shutil

    data = tmp_path / "data"
    for part in ("split", "resized", "pose", "parsing"):
        shutil.copytree(tiny_prepared / part, data / part)
    job = _job(data, tmp_path, checkpoints["casd"], limit=4, strips=0)
    shutil.copytree(reference[0].out_dir, job.out_dir)
    shutil.copytree(reference[0].parsing_dir, job.parsing_dir)
    shutil.copytree(reference[0].strips_dir, job.strips_dir)
    manifest = generation.run_test(job)  # same checkpoint and inputs: nothing to do but drop unlisted pairs
    assert manifest["generated"] == 0 and manifest["skipped"] == 4
    assert sorted(p.name for p in job.out_dir.glob("*.png")) == sorted(f for _, _, f in manifest["pairs"])
    assert sorted(p.name for p in job.parsing_dir.glob("*.png")) == sorted(f for _, _, f in manifest["pairs"])
    assert not list(job.strips_dir.glob("*.png"))  # strips no longer asked for are removed too
    target = data / "resized" / "test" / manifest["pairs"][0][1]
    image = np.asarray(Image.open(target)).copy()
    Image.fromarray(255 - image).save(target, format="JPEG")  # e.g. the resize stage ran with other settings
    manifest = generation.run_test(job)
    assert manifest["generated"] == 4 and manifest["skipped"] == 0


def test_autocast_path_runs_and_stays_close(reference, tiny_prepared, checkpoints, tmp_path):
    """test.amp (fp16 on CUDA by default) goes through torch.autocast; on CPU bf16 exercises the same path."""
    job = _job(tiny_prepared, tmp_path, checkpoints["casd"], amp="bf16", limit=3, strips=0)
    manifest = generation.run_test(job)
    assert manifest["amp"] == "bfloat16"
    assert manifest["fingerprint"] != reference[1]["fingerprint"]  # other precision, other pictures
    for path in job.out_dir.glob("*.png"):
        a = np.asarray(Image.open(path)).astype(int)
        b = np.asarray(Image.open(reference[0].out_dir / path.name)).astype(int)
        assert np.abs(a - b).mean() < 8, path.name


def test_predicted_parsing_is_the_argmax_of_the_averaged_attention():
    a = torch.zeros(1, 8, 2, 4)
    a[:, 1, :, :2], a[:, 2, :, 2:] = 3.0, 3.0  # block a: region 1 on the left, 2 on the right
    b = torch.zeros(1, 8, 2, 4)
    b[:, 5] = 1.0                             # block b: a weaker vote for region 5 everywhere
    regions = predicted_parsing([a, b], (4, 8))
    assert regions.dtype == torch.uint8 and regions.shape == (1, 4, 8)
    assert (regions[0, :, :3] == 1).all() and (regions[0, :, 5:] == 2).all()
    assert (predicted_parsing([b, b], (4, 8)) == 5).all()
