"""The synthetic DeepFashion generator: layout, label/pixel correspondence, determinism, real-data mode."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from casd.errors import ConfigError, DataError
from casd.data.config import DataConfig
from casd.data.layout import flat_name
from casd.data.tables import read_annotations, read_list, read_pairs
from casd.data.synthetic import (BG, EYE_COLOUR, FACE, MOUTH_COLOUR, OUTLINE_SHADE, SynthConfig, colour_image, draw_labels,
                        generate, identity_palette, lighting, make_identity, outline, render, run, sample_figure,
                        validate_source)
from conftest import TINY_RAW_SIZE, tiny_synth_config

PATH_RE = re.compile(r"^img_highres/(MEN|WOMEN)/([A-Za-z_]+)/id_(\d{8})/(\d{2})_(\d)_(front|side|back|full|additional)"
                     r"\.jpg$")


def tree(raw: Path) -> dict[str, Path]:
    return {flat_name(p.relative_to(raw / "img_highres")): p for p in (raw / "img_highres").rglob("*.jpg")}


def test_raw_layout(tiny_raw):
    paths = sorted(str(p.relative_to(tiny_raw)) for p in (tiny_raw / "img_highres").rglob("*"))
    images = [p for p in paths if p.endswith(".jpg")]
    assert len(images) == 2 * 3 * 3
    matches = [PATH_RE.match(p) for p in images]
    assert all(matches), [p for p, m in zip(images, matches) if not m]
    categories = {(m[1], m[2]) for m in matches}
    assert categories == {("MEN", "Denim"), ("WOMEN", "Blouses_Shirts")}  # an underscore category among them
    identities = {m[3] for m in matches}
    assert len(identities) == 6 and all(sum(m[3] == i for m in matches) == 3 for i in identities)

    flat = tree(tiny_raw)
    train, test = read_list(tiny_raw / "train.lst"), read_list(tiny_raw / "test.lst")
    assert sorted(train + test) == sorted(flat) and not set(train) & set(test)
    identity_of = {name: re.search(r"id\d{8}", name)[0] for name in flat}
    assert not {identity_of[n] for n in train} & {identity_of[n] for n in test}  # disjoint identities

    for phase, names in (("train", train), ("test", test)):
        pairs = read_pairs(tiny_raw / f"fashion-resize-pairs-{phase}.csv")
        assert len(pairs) == len(names) * 2  # 3 poses: 3 * 2 ordered pairs per identity
        for a, b in pairs:
            assert a != b and identity_of[a] == identity_of[b] and a in names and b in names
        annotations = read_annotations(tiny_raw / f"fashion-resize-annotation-{phase}.csv", frame=TINY_RAW_SIZE)
        assert sorted(annotations) == sorted(names)
        for name in names:
            labels = np.asarray(Image.open(tiny_raw / "semantic_merge3" / f"{name[:-4]}.png"))
            assert labels.shape == TINY_RAW_SIZE and labels.dtype == np.uint8 and labels.max() <= 19
            with Image.open(flat[name]) as image:
                assert image.size == TINY_RAW_SIZE[::-1] and image.mode == "RGB"
    header = (tiny_raw / "fashion-resize-annotation-train.csv").read_text().splitlines()[0]
    assert header == "name:keypoints_y:keypoints_x"


def test_views_and_missing_joints_over_many_images():
    size = (128, 88)
    person = make_identity(0, 0, 0)
    views = ["front", "side", "back", "full", "additional"] * 8
    keypoints = np.stack([render(person, v, size, np.random.default_rng([1, i]))[2] for i, v in enumerate(views)])
    nose, eyes = keypoints[:, 0, 0], keypoints[:, 14:16, 0]
    back = np.array(views) == "back"
    assert (nose[back] == -1).all() and (eyes[back] == -1).all()      # no face seen from the back
    front = np.array(views) == "front"
    assert (nose[front] >= 0).mean() > 0.8
    assert (keypoints == -1).any() and ((keypoints[..., 0] >= 0).mean() > 0.7)
    present = keypoints[..., 0] >= 0
    assert (keypoints[present][:, 0] < size[0]).all() and (keypoints[present][:, 1] < size[1]).all()


@pytest.mark.parametrize("category", range(10))
def test_labels_and_pixels_correspond_exactly(category):
    """Every pixel's colour is its label's identity colour x light, darker on outlines, eyes/mouth only on the face."""
    size = (96, 66)
    person = dataclasses.replace(make_identity(3, category, category),
                                 upper_texture=("solid", 0.03, 0.0), lower_texture=("solid", 0.03, 0.0))
    for i, view in enumerate(("front", "side", "back")):
        figure = sample_figure(np.random.default_rng([category, i]), view, size, person.build)
        labels = draw_labels(figure, person, size)
        rng = np.random.default_rng(7)
        image = colour_image(labels, figure, person, np.random.default_rng(7))
        palette = identity_palette(person, 235 + rng.uniform(-12, 12, size=3))[:, 0]
        shade = lighting(*size) * np.where(outline(labels), np.float32(OUTLINE_SHADE), np.float32(1.0))
        expected = np.clip(palette[labels] * shade[..., None], 0, 255).astype(np.uint8)
        detail = (image == EYE_COLOUR).all(-1) | (image == MOUTH_COLOUR).all(-1)
        assert (labels[detail & (image != expected).any(-1)] == FACE).all()
        assert np.abs(image[~detail].astype(int) - expected[~detail]).max() <= 1
        assert (labels != BG).sum() > 0.1 * labels.size and len(np.unique(labels)) >= 6


def test_keypoints_lie_on_their_body_parts():
    size = (256, 176)
    person = make_identity(0, 1, 0)  # MEN / Denim: trousers
    arm_labels, leg_labels = {5, 6, 7, 14, 15}, {9, 10, 12, 16, 17, 18, 19, 6}
    hits = {"wrist": [], "ankle": [], "neck": []}
    for i in range(20):
        image, labels, kp = render(person, "front", size, np.random.default_rng([5, i]))
        for joint, part, allowed in ((4, "wrist", arm_labels), (7, "wrist", arm_labels), (10, "ankle", leg_labels),
                                     (13, "ankle", leg_labels), (1, "neck", {5, 6, 7, 13, 2})):
            if kp[joint, 0] >= 0:
                hits[part].append(int(labels[kp[joint, 0], kp[joint, 1]]) in allowed)
    assert all(np.mean(v) > 0.9 for v in hits.values()), {k: np.mean(v) for k, v in hits.items()}


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_other_seed_differs(tiny_raw, tmp_path):
    again = tmp_path / "again"
    generate(tiny_synth_config(), TINY_RAW_SIZE, again, workers=2)  # worker count must not matter either
    assert digests(again) == digests(tiny_raw)
    other = tmp_path / "other"
    generate(tiny_synth_config(seed=1), TINY_RAW_SIZE, other, workers=1)
    a, b = digests(tiny_raw), digests(other)
    images = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != b.get(k) for k in images) == len(images)


def test_regenerating_keeps_unchanged_files_and_removes_stale(tmp_path):
    config = dataclasses.replace(tiny_synth_config(), image_size=(64, 44), poses_per_identity=3)
    out = tmp_path / "raw"
    generate(config, (64, 44), out)
    image = next((out / "img_highres").rglob("*.jpg"))
    mtime = image.stat().st_mtime_ns
    generate(dataclasses.replace(config, poses_per_identity=2), (64, 44), out)
    assert image.stat().st_mtime_ns == mtime or not image.exists()
    assert len(list((out / "img_highres").rglob("*.jpg"))) == 2 * 3 * 2
    assert len(list((out / "semantic_merge3").glob("*.png"))) == 2 * 3 * 2


def test_annotation_frame_other_than_image_size(tmp_path):
    config = dataclasses.replace(tiny_synth_config(), image_size=(128, 88))
    generate(config, (64, 44), tmp_path)
    names = read_list(tmp_path / "test.lst")
    annotations = read_annotations(tmp_path / "fashion-resize-annotation-test.csv", frame=(64, 44))
    assert sorted(annotations) == sorted(names)
    assert np.asarray(Image.open(tmp_path / "semantic_merge3" / f"{names[0][:-4]}.png")).shape == (64, 44)


def test_synth_config_validation():
    with pytest.raises(ConfigError, match="poses_per_identity"):
        SynthConfig(poses_per_identity=1)
    with pytest.raises(ConfigError, match="categories"):
        SynthConfig(categories=11)
    with pytest.raises(ConfigError, match="test_fraction"):
        SynthConfig(test_fraction=1.0)


def test_deepfashion_source_is_validated_not_generated(tiny_raw, tmp_path):
    config = DataConfig(source="deepfashion", root=str(tiny_raw))
    manifest = run(config, tiny_synth_config(), tmp_path / "raw")
    stored = json.loads((tmp_path / "raw" / "SOURCE.json").read_text())
    assert stored == manifest and stored["root"] == str(tiny_raw) and len(stored["files"]) == 6
    assert not (tmp_path / "raw" / "img_highres").exists()
    copy = tmp_path / "copy"
    import shutil
    shutil.copytree(tiny_raw, copy)
    # the field's release spelling is accepted (and recorded)
    (copy / "fashion-resize-annotation-train.csv").rename(copy / "fasion-resize-annotation-train.csv")
    assert "fasion-resize-annotation-train.csv" in validate_source(copy, tmp_path / "m1")["files"]
    (copy / "semantic_merge3").rename(copy / "parsing")
    with pytest.raises(DataError, match="missing semantic_merge3"):
        validate_source(copy, tmp_path / "m3")
    with pytest.raises(DataError, match="not found"):
        validate_source(tmp_path / "nowhere", tmp_path / "m4")


def test_data_root_is_a_dvc_dependency_of_the_stages_that_read_it():
    import yaml
    root = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage in ("split", "pose", "segment"):
        assert "${data.root}" in stages[stage]["deps"] and "data.root" in stages[stage]["params"]
    for params_file in ("params.yaml", "params-deepfashion.yaml"):
        data = yaml.safe_load((root / params_file).read_text())["data"]
        DataConfig(**data)  # a valid section whose root exists for the synthetic source (data/raw, synth's output)
    assert yaml.safe_load((root / "params.yaml").read_text())["data"]["root"] == "data/raw"
    assert "repro -f" not in (root / "README.md").read_text()
