"""split / resize / segment on the tiny synthetic set, their bad-input errors, idempotence."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from casd.errors import DataError
from casd.data.images import LIP_TO_REGION
from casd.data.layout import flat_name
from casd.data.tables import read_list, read_pairs
from casd.data.prepare import SOURCES, read_sources, resize, segment, split


def copy_raw(tiny_raw: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    return raw


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------- split

def test_split_on_tiny_set(tiny_prepared, tiny_raw):
    split_dir = tiny_prepared / "split"
    for phase in ("train", "test"):
        listed = read_list(tiny_raw / f"{phase}.lst")
        placed = sorted(p.name for p in (split_dir / phase).glob("*.jpg"))
        assert placed == sorted(listed) and placed
        assert read_pairs(split_dir / f"pairs-{phase}.csv") == read_pairs(tiny_raw / f"fashion-resize-pairs-{phase}.csv")
    originals = {flat_name(p.relative_to(tiny_raw)): p for p in (tiny_raw / "img_highres").rglob("*.jpg")}
    for phase in ("train", "test"):
        for placed in (split_dir / phase).glob("*.jpg"):
            assert placed.read_bytes() == originals[placed.name].read_bytes()
    report = json.loads((tiny_prepared / "reports" / "split.json").read_text())
    assert report["unlisted"] == [] and report["links"] == 0 and report["skipped"] == 0
    sources = read_sources(split_dir)
    assert {n: Path(s) for n, s in sources.items()} == {n: p for n, p in originals.items() if n in sources}
    assert len(sources) == sum(len(read_list(tiny_raw / f"{phase}.lst")) for phase in ("train", "test"))


def test_split_reports_missing_and_unlisted_and_is_idempotent(tiny_raw, tmp_path, tiny_data_config, capsys):
    raw = copy_raw(tiny_raw, tmp_path)
    train = read_list(raw / "train.lst")
    # one listed image without a file, one file in neither list (its pairs rows removed)
    (raw / "train.lst").write_text("\n".join(train[1:] + ["fashionMENDenimid0000099901_1front.jpg"]) + "\n")
    pairs = [p for p in read_pairs(raw / "fashion-resize-pairs-train.csv") if train[0] not in p]
    (raw / "fashion-resize-pairs-train.csv").write_text("from,to\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    out = tmp_path / "split"
    absent = "fashionMENDenimid0000099901_1front.jpg"
    with pytest.raises(DataError, match=rf"train.lst: {absent} is listed but no image under .*img_highres has"):
        split(tiny_data_config, raw, out, tmp_path / "reports")
    (raw / "train.lst").write_text("\n".join(train[1:]) + "\n")
    summary = split(tiny_data_config, raw, out, tmp_path / "reports")
    err = capsys.readouterr().err
    assert "in neither list" in err and train[0] in err
    assert summary["unlisted"] == [train[0]]
    assert json.loads((tmp_path / "reports" / "split.json").read_text())["unlisted"] == [train[0]]
    assert summary["train"]["pairs"] == len(pairs)

    # a second run leaves placed files alone; a stale file is removed
    placed = out / "train" / train[1]
    before = placed.stat().st_mtime_ns
    (out / "train" / "stale.jpg").write_bytes(b"x")
    time.sleep(0.01)
    split(tiny_data_config, raw, out, tmp_path / "reports")
    assert placed.stat().st_mtime_ns == before and not (out / "train" / "stale.jpg").exists()
    assert no_temp_files(out)


def test_split_pairs_row_naming_absent_image(tiny_raw, tmp_path, tiny_data_config):
    raw = copy_raw(tiny_raw, tmp_path)
    path = raw / "fashion-resize-pairs-test.csv"
    train_name = read_list(raw / "train.lst")[0]
    test_name = read_list(raw / "test.lst")[0]
    lines = path.read_text().splitlines()
    lines.insert(2, f"{test_name},{train_name}")  # a train image in a test pair: absent from test/
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"pairs-test.csv, row 3: pair dropped: {train_name} is not among the test"):
        split(tiny_data_config, raw, tmp_path / "split", tmp_path / "reports")
    assert not (tmp_path / "split" / "pairs-test.csv").exists()
    skip = dataclasses.replace(tiny_data_config, on_error="skip")
    summary = split(skip, raw, tmp_path / "split", tmp_path / "reports")
    assert summary["test"]["pairs"] == len(lines) - 2
    report = (tmp_path / "reports" / "skipped-split.csv").read_text()
    assert f"{train_name} is not among the test images" in report and ",3," in report


def test_split_rejects_unsafe_list_names_and_overlap(tiny_raw, tmp_path, tiny_data_config):
    raw = copy_raw(tiny_raw, tmp_path)
    test = read_list(raw / "test.lst")
    (raw / "test.lst").write_text("\n".join(test + ["../../outside.jpg"]) + "\n")
    with pytest.raises(DataError, match=r"test.lst, row \d+: unsafe file name '../../outside.jpg'"):
        split(tiny_data_config, raw, tmp_path / "split", tmp_path / "reports")
    (raw / "test.lst").write_text("\n".join(test + [read_list(raw / "train.lst")[0]]) + "\n")
    with pytest.raises(DataError, match="listed in train.lst too"):
        split(tiny_data_config, raw, tmp_path / "split", tmp_path / "reports")


# --------------------------------------------------------------------------- resize

def test_resize_on_tiny_set(tiny_prepared):
    for phase in ("train", "test"):
        sources = sorted(p.name for p in (tiny_prepared / "split" / phase).glob("*.jpg"))
        outputs = sorted((tiny_prepared / "resized" / phase).glob("*.jpg"))
        assert [p.name for p in outputs] == sources
        for path in outputs:
            with Image.open(path) as image:
                assert image.size == (44, 64) and image.mode == "RGB"


def test_resize_crop_border_and_idempotence(tmp_path, tiny_data_config):
    split_dir = tmp_path / "split"
    (split_dir / "test").mkdir(parents=True)
    (split_dir / "train").mkdir(parents=True)
    # 128x88 raw image: 8-column red borders (annotation frame 128x88, crop_border 8) around a blue middle
    pixels = np.zeros((128, 88, 3), np.uint8)
    pixels[:, :8], pixels[:, -8:], pixels[:, 8:-8] = (255, 0, 0), (255, 0, 0), (0, 0, 255)
    Image.fromarray(pixels).save(split_dir / "train" / "a.jpg", quality=100)
    config = dataclasses.replace(tiny_data_config, crop_border=8)
    out = tmp_path / "resized"
    assert resize(config, split_dir, out, tmp_path / "reports") == {"train": 1, "test": 0}
    cropped = np.asarray(Image.open(out / "train" / "a.jpg")).astype(int)
    assert cropped.shape == (64, 44, 3) and cropped[..., 0].max() < 60 and cropped[..., 2].min() > 190
    plain = resize(tiny_data_config, split_dir, tmp_path / "plain", tmp_path / "reports")
    assert plain["train"] == 1
    assert np.asarray(Image.open(tmp_path / "plain" / "train" / "a.jpg"))[:, 0, 0].min() > 190  # red border kept

    mtime = (out / "train" / "a.jpg").stat().st_mtime_ns
    time.sleep(0.01)
    resize(config, split_dir, out, tmp_path / "reports")
    assert (out / "train" / "a.jpg").stat().st_mtime_ns == mtime  # up to date: skipped
    resize(dataclasses.replace(config, image_size=(32, 20)), split_dir, out, tmp_path / "reports")
    assert Image.open(out / "train" / "a.jpg").size == (20, 32)    # other settings: redone


def test_resize_corrupt_and_truncated_images(tiny_prepared, tmp_path, tiny_data_config):
    split_dir = tmp_path / "split"
    shutil.copytree(tiny_prepared / "split", split_dir)
    (split_dir / SOURCES).unlink()  # no record of the raw files: the split copies are named
    images = sorted((split_dir / "test").glob("*.jpg"))
    for image in images[:2]:
        image.unlink()  # a hard link: replace, never write through it
    images[0].write_bytes(b"definitely not a jpeg")
    data = (tiny_prepared / "split" / "test" / images[1].name).read_bytes()
    images[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"\.jpg: corrupt or truncated image \(") as info:
        resize(tiny_data_config, split_dir, tmp_path / "resized", tmp_path / "reports")
    assert str(info.value).startswith(str(split_dir / "test")) and info.value.row is None
    assert no_temp_files(tmp_path / "resized")
    skip = dataclasses.replace(tiny_data_config, on_error="skip")
    counts = resize(skip, split_dir, tmp_path / "resized", tmp_path / "reports")
    assert counts["test"] == len(images) - 2
    assert not (tmp_path / "resized" / "test" / images[0].name).exists()
    with open(tmp_path / "reports" / "skipped-resize.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "row", "problem"] and len(rows) == 3
    assert {Path(r[0]).name for r in rows[1:]} == {images[0].name, images[1].name}
    assert all(r[1] == "" and r[2].startswith("corrupt or truncated image") for r in rows[1:])


# --------------------------------------------------------------------------- segment

def test_segment_on_tiny_set(tiny_prepared, tiny_raw):
    for phase in ("train", "test"):
        for image in (tiny_prepared / "split" / phase).glob("*.jpg"):
            merged = np.asarray(Image.open(tiny_prepared / "parsing" / phase / f"{image.stem}.png"))
            lip = Image.open(tiny_raw / "semantic_merge3" / f"{image.stem}.png")
            expected = LIP_TO_REGION[np.asarray(lip.resize((44, 64), Image.NEAREST))]
            assert merged.shape == (64, 44) and np.array_equal(merged, expected)
            assert merged.max() <= 7 and len(np.unique(merged)) >= 4


def make_parsing_case(tiny_prepared, tmp_path):
    raw, split_dir = tmp_path / "raw", tmp_path / "split"
    shutil.copytree(tiny_prepared / "split", split_dir)
    (raw / "semantic_merge3").mkdir(parents=True)
    stems = sorted(p.stem for phase in ("train", "test") for p in (split_dir / phase).glob("*.jpg"))
    for stem in stems:
        shutil.copy(tiny_prepared / "raw" / "semantic_merge3" / f"{stem}.png", raw / "semantic_merge3")
    return raw, split_dir, stems


def test_segment_crafted_map_with_crop(tiny_prepared, tmp_path, tiny_data_config):
    raw, split_dir, stems = make_parsing_case(tiny_prepared, tmp_path)
    lip = np.zeros((128, 88), np.uint8)
    lip[:, 4:84] = np.arange(20, dtype=np.uint8).repeat(4)[None, :]  # 4-column bands of ids 0..19
    lip[:, :4] = 5                                                  # cut away by crop_border 4
    Image.fromarray(lip).save(raw / "semantic_merge3" / f"{stems[0]}.png")
    config = dataclasses.replace(tiny_data_config, crop_border=4, image_size=(128, 80))
    segment(config, raw, split_dir, tmp_path / "parsing", tmp_path / "reports")
    phase = "train" if (split_dir / "train" / f"{stems[0]}.jpg").exists() else "test"
    merged = np.asarray(Image.open(tmp_path / "parsing" / phase / f"{stems[0]}.png"))
    assert np.array_equal(merged, LIP_TO_REGION[lip[:, 4:84]])


@pytest.mark.parametrize("problem, write", [
    ("is 64x44 \\(HxW\\), expected 128x88", lambda p: Image.fromarray(np.zeros((64, 44), np.uint8)).save(p)),
    ("label 23 outside the LIP ids 0..19", lambda p: Image.fromarray(np.full((128, 88), 23, np.uint8)).save(p)),
    ("mode RGB", lambda p: Image.fromarray(np.zeros((128, 88, 3), np.uint8)).save(p)),
    ("corrupt or truncated parsing map", lambda p: p.write_bytes(b"\x89PNG broken")),
    ("parsing map not found", lambda p: p.unlink()),
])
def test_segment_bad_parsing_maps(tiny_prepared, tmp_path, tiny_data_config, problem, write):
    raw, split_dir, stems = make_parsing_case(tiny_prepared, tmp_path)
    bad = raw / "semantic_merge3" / f"{stems[0]}.png"
    write(bad)
    with pytest.raises(DataError, match=problem) as info:
        segment(tiny_data_config, raw, split_dir, tmp_path / "parsing", tmp_path / "reports")
    assert str(info.value).startswith(f"{bad}: ")
    assert no_temp_files(tmp_path / "parsing")
    skip = dataclasses.replace(tiny_data_config, on_error="skip")
    counts = segment(skip, raw, split_dir, tmp_path / "parsing", tmp_path / "reports")
    assert sum(counts.values()) == len(stems) - 1
    assert not list((tmp_path / "parsing").rglob(f"{stems[0]}.png"))
    assert stems[0] in (tmp_path / "reports" / "skipped-segment.csv").read_text()


# --------------------------------------------------------------------------- real releases: spellings, gaps, links

def remove_rows(path: Path, name: str) -> None:
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if name not in line))


def test_split_accepts_the_release_spelling(tiny_raw, tmp_path, tiny_data_config):
    raw = copy_raw(tiny_raw, tmp_path)
    for kind in ("pairs", "annotation"):
        for phase in ("train", "test"):
            (raw / f"fashion-resize-{kind}-{phase}.csv").rename(raw / f"fasion-resize-{kind}-{phase}.csv")
    summary = split(tiny_data_config, raw, tmp_path / "split", tmp_path / "reports")
    assert summary["train"]["pairs"] > 0 and summary["test"]["pairs"] > 0


def test_listed_image_absent_on_disk_is_skipped_with_its_pairs(tiny_raw, tmp_path, tiny_data_config):
    raw = copy_raw(tiny_raw, tmp_path)
    gone = read_list(raw / "train.lst")[0]
    for path in (raw / "img_highres").rglob("*.jpg"):
        if flat_name(path.relative_to(raw / "img_highres")) == gone:
            path.unlink()
    with pytest.raises(DataError, match=f"train.lst: {gone} is listed but no image"):
        split(tiny_data_config, raw, tmp_path / "split", tmp_path / "reports")
    skip = dataclasses.replace(tiny_data_config, on_error="skip")
    summary = split(skip, raw, tmp_path / "split", tmp_path / "reports")
    report = (tmp_path / "reports" / "skipped-split.csv").read_text()
    assert f"{gone} is listed but no image" in report
    dropped = [p for p in read_pairs(raw / "fashion-resize-pairs-train.csv") if gone in p]
    assert dropped and report.count(f"{gone} listed in train.lst but not under img_highres/") == len(dropped)
    assert summary["train"]["pairs"] == len(read_pairs(raw / "fashion-resize-pairs-train.csv")) - len(dropped)


@pytest.mark.parametrize("damage", ["row missing", "header only", "duplicate row"])
def test_every_listed_image_needs_exactly_one_annotation_row(tiny_raw, tmp_path, tiny_data_config, damage):
    raw = copy_raw(tiny_raw, tmp_path)
    annotation = raw / "fashion-resize-annotation-train.csv"
    names = read_list(raw / "train.lst")
    lines = annotation.read_text().splitlines()
    if damage == "row missing":
        remove_rows(annotation, names[0])
        victims = [names[0]]
    elif damage == "header only":
        annotation.write_text(lines[0] + "\n")
        victims = names
    else:
        annotation.write_text("\n".join(lines + [next(line for line in lines if line.startswith(names[0]))]) + "\n")
        victims = [names[0]]
    with pytest.raises(DataError, match="annotation-train.csv"):
        split(tiny_data_config, raw, tmp_path / "split", tmp_path / "reports")
    skip = dataclasses.replace(tiny_data_config, on_error="skip")
    if damage == "header only":   # skipping every train image is no finished split
        with pytest.raises(DataError, match=r"train.lst: split: none of the 12 train item\(s\)"):
            split(skip, raw, tmp_path / "split", tmp_path / "reports")
    else:
        split(skip, raw, tmp_path / "split", tmp_path / "reports")
    report = (tmp_path / "reports" / "skipped-split.csv").read_text()
    placed = {p.name for p in (tmp_path / "split" / "train").glob("*.jpg")}
    assert not placed & set(victims) and placed == set(names) - set(victims)
    for victim in victims:
        assert f"{victim} (in train.lst) has no valid row" in report
    kept = read_pairs(tmp_path / "split" / "pairs-train.csv")
    assert not [p for p in kept if set(p) & set(victims)]
    assert len([line for line in report.splitlines() if "pair dropped" in line and "no valid row in" in line]) == len(
        [p for p in read_pairs(raw / "fashion-resize-pairs-train.csv") if set(p) & set(victims)])


def test_links_inside_are_followed_and_counted_outside_refused(tiny_raw, tmp_path, tiny_data_config):
    raw = copy_raw(tiny_raw, tmp_path)
    identity = next((raw / "img_highres").glob("*/*/id_*"))
    elsewhere = raw / "moved"   # a linked identity folder inside root
    identity.rename(elsewhere)
    identity.symlink_to(elsewhere, target_is_directory=True)
    image = next(p for p in (raw / "img_highres").rglob("*.jpg") if not str(p).startswith(str(identity)))
    image.rename(raw / "one.jpg")
    image.symlink_to(raw / "one.jpg")
    summary = split(tiny_data_config, raw, tmp_path / "split", tmp_path / "reports")
    assert summary["links"] == 2 and summary["skipped"] == 0
    assert summary["train"]["placed"] + summary["test"]["placed"] == 18

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    image.unlink()
    image.symlink_to(secret)
    with pytest.raises(DataError, match=rf"{image.name}: resolves to .*secret.txt, outside data.root .* "
                                        r"data.follow_external_links: true"):
        split(tiny_data_config, raw, tmp_path / "split2", tmp_path / "reports")
    assert not (tmp_path / "split2").exists() or "root:x" not in "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "split2").rglob("*.jpg"))
    external = tmp_path / "external.jpg"
    shutil.copy(raw / "one.jpg", external)
    image.unlink()
    image.symlink_to(external)
    allowed = split(dataclasses.replace(tiny_data_config, follow_external_links=True), raw, tmp_path / "split3",
                    tmp_path / "reports")
    assert allowed["train"]["placed"] + allowed["test"]["placed"] == 18


def test_errors_name_the_file_under_the_raw_folder(tiny_raw, tmp_path, tiny_data_config):
    raw = copy_raw(tiny_raw, tmp_path)
    victim = sorted((raw / "img_highres").rglob("*.jpg"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    split(tiny_data_config, raw, tmp_path / "split", tmp_path / "reports")
    with pytest.raises(DataError, match="corrupt or truncated image") as info:
        resize(tiny_data_config, tmp_path / "split", tmp_path / "resized", tmp_path / "reports")
    assert info.value.path == str(victim)


# --------------------------------------------------------------------------- content, not mtime; no temp files

def test_replaced_inputs_are_redone_whatever_their_mtime(tiny_prepared, tmp_path, tiny_data_config):
    raw, split_dir, stems = make_parsing_case(tiny_prepared, tmp_path)
    out = tmp_path / "parsing"
    segment(tiny_data_config, raw, split_dir, out, tmp_path / "reports")
    source = raw / "semantic_merge3" / f"{stems[0]}.png"
    phase = "train" if (split_dir / "train" / f"{stems[0]}.jpg").exists() else "test"
    Image.fromarray(np.full((128, 88), 2, np.uint8)).save(source)   # all hair
    os.utime(source, ns=(1, 1))                                        # and older than the output
    segment(tiny_data_config, raw, split_dir, out, tmp_path / "reports")
    assert (np.asarray(Image.open(out / phase / f"{stems[0]}.png")) == 2).all()

    resized = tmp_path / "resized"
    resize(tiny_data_config, split_dir, resized, tmp_path / "reports")
    image = split_dir / phase / f"{stems[0]}.jpg"
    image.unlink()
    Image.new("RGB", (88, 128), (0, 255, 0)).save(image)
    os.utime(image, ns=(1, 1))
    before = {p.name: p.stat().st_mtime_ns for p in (resized / phase).glob("*.jpg")}
    resize(tiny_data_config, split_dir, resized, tmp_path / "reports")
    assert np.asarray(Image.open(resized / phase / image.name))[..., 1].min() > 200
    after = {p.name: p.stat().st_mtime_ns for p in (resized / phase).glob("*.jpg")}
    assert [n for n in before if before[n] != after[n]] == [image.name]   # the others are skipped


def test_failing_parallel_stage_leaves_no_temp_files(tiny_prepared, tmp_path, tiny_data_config):
    raw, split_dir, stems = make_parsing_case(tiny_prepared, tmp_path)
    for stem in stems[1:]:  # large maps keep the workers busy writing when the pool is stopped
        Image.fromarray(np.random.default_rng(0).integers(0, 20, (128, 88), dtype=np.uint8)).save(
            raw / "semantic_merge3" / f"{stem}.png")
    Image.fromarray(np.zeros((64, 44), np.uint8)).save(raw / "semantic_merge3" / f"{stems[0]}.png")
    config = dataclasses.replace(tiny_data_config, workers=2, image_size=(1024, 704))
    for _ in range(3):
        with pytest.raises(DataError, match="expected 128x88"):
            segment(config, raw, split_dir, tmp_path / "parsing", tmp_path / "reports")
        assert no_temp_files(tmp_path / "parsing")


SIGTERM_SCRIPT = """
import sys, time
from pathlib import Path
import casd.data.prepare as prepare
from casd.data.config import DataConfig
from casd.fileio import atomic_path

def slow(job):
    with atomic_path(job[1]) as tmp:
        tmp.write_bytes(b"partial")
        Path(sys.argv[2], "started").touch()
        time.sleep(60)
    return Path(job[1]).name, "x", None

prepare._resize_one = slow
config = DataConfig(image_size=(64, 44), annotation_size=(128, 88), workers=2)
prepare.resize(config, sys.argv[1], Path(sys.argv[2]) / "resized", Path(sys.argv[2]) / "reports")
"""


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_leave_no_temp_files(tiny_prepared, tmp_path, signum):
    import signal
    import subprocess
    import sys
    script = tmp_path / "slow.py"
    script.write_text(SIGTERM_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), str(tiny_prepared / "split"), str(tmp_path)],
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    assert list((tmp_path / "resized").rglob(".*.tmp*"))   # writers are mid-file
    process.send_signal(getattr(signal, signum))
    process.wait(timeout=30)
    assert process.returncode != 0
    assert no_temp_files(tmp_path / "resized")


# --------------------------------------------------------------------------- upstream's code geometry

def test_upstream_resize_is_pils_default_stretch(tmp_path, tiny_data_config):
    split_dir = tmp_path / "split"
    (split_dir / "test").mkdir(parents=True)
    (split_dir / "train").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (110, 75, 3), dtype=np.uint8)).save(split_dir / "train" / "a.jpg")
    config = dataclasses.replace(tiny_data_config, image_size=(64, 64), resize_filter="bicubic", jpeg_quality=75)
    resize(config, split_dir, tmp_path / "resized", tmp_path / "reports")
    # upstream's tool/resize_fashion.py: Image.open(...).resize([w, h]).save(name): PIL's defaults throughout
    with Image.open(split_dir / "train" / "a.jpg") as image:
        image.resize([64, 64]).save(tmp_path / "upstream.jpg")
    ours = (tmp_path / "resized" / "train" / "a.jpg").read_bytes()
    assert ours == (tmp_path / "upstream.jpg").read_bytes()
    lanczos = dataclasses.replace(config, resize_filter="lanczos")
    resize(lanczos, split_dir, tmp_path / "resized", tmp_path / "reports")
    assert (tmp_path / "resized" / "train" / "a.jpg").read_bytes() != ours   # the setting redoes the output


def test_parsing_frame_image_reads_maps_as_they_are(tiny_prepared, tmp_path, tiny_data_config):
    raw, split_dir, stems = make_parsing_case(tiny_prepared, tmp_path)
    lip = np.random.default_rng(2).integers(0, 20, (64, 64), dtype=np.uint8)
    for stem in stems:
        Image.fromarray(lip).save(raw / "semantic_merge3" / f"{stem}.png")
    config = dataclasses.replace(tiny_data_config, image_size=(64, 64), parsing_frame="image", crop_border=4)
    segment(config, raw, split_dir, tmp_path / "parsing", tmp_path / "reports")
    merged = np.asarray(Image.open(next((tmp_path / "parsing").rglob("*.png"))))
    assert np.array_equal(merged, LIP_TO_REGION[lip])   # no crop, no resize
    with pytest.raises(DataError, match=r"is 64x64 \(HxW\), expected 64x44 \(data.image_size, data.parsing_frame: image\)"):
        segment(dataclasses.replace(config, image_size=(64, 44)), raw, split_dir, tmp_path / "parsing2",
                tmp_path / "reports")
