"""The data files: names and paths (casd.data.layout), the CSV tables and their errors (casd.data.tables), the
parsing merge table and readers (casd.data.images), coordinate rescaling, the data: section (casd.data.config)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch

from casd.errors import ConfigError, DataError
from PIL import Image

from casd.data.config import DataConfig
from casd.data.images import LIP_TO_REGION, REGION_NAMES, merge_parsing, parsing_onehot, read_image, read_regions
from casd.data.inputs import ErrorPolicy
from casd.data.layout import PreparedLayout, flat_category, flat_name, flat_person, raw_file
from casd.data.tables import (read_annotations, read_list, read_pairs, read_pairs_rows, rescale_keypoints,
                              write_annotations, write_pairs)

GOOD_Y = list(range(10, 28))
GOOD_X = [5] * 17 + [-1]


def annotation_csv(tmp_path, rows, header="name:keypoints_y:keypoints_x", sep=":"):
    path = tmp_path / "ann.csv"
    lines = [header] + [sep.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def row(name="fashionMENDenimid0000008001_1front.jpg", ys=GOOD_Y, xs=GOOD_X):
    return [name, json.dumps(ys), json.dumps(xs)]


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize("path, flat", [
    ("img_highres/MEN/Denim/id_00000080/01_1_front.jpg", "fashionMENDenimid0000008001_1front.jpg"),
    ("img_highres/WOMEN/Blouses_Shirts/id_00000044/01_7_additional.jpg",
     "fashionWOMENBlouses_Shirtsid0000004401_7additional.jpg"),
    ("/data/DeepFashion/img_highres/WOMEN/Tees_Tanks/id_00001234/12_3_back.jpg",
     "fashionWOMENTees_Tanksid0000123412_3back.jpg"),
    ("MEN/Jackets_Vests/id_00000007/02_4_full.jpg", "fashionMENJackets_Vestsid0000000702_4full.jpg"),
])
def test_flat_name_examples(path, flat):
    assert flat_name(path) == flat


def test_a_flat_name_tells_its_person_and_category():
    name = flat_name("img_highres/WOMEN/Blouses_Shirts/id_00000044/02_7_additional.jpg")
    assert flat_person(name) == "fashionWOMENBlouses_Shirtsid00000044"
    assert flat_person(name) == flat_person(name.replace("02_7additional", "01_1front"))
    assert flat_category(name) == "WOMEN Blouses_Shirts"
    assert flat_category("me.jpg") == ""


@pytest.mark.parametrize("path, problem", [
    ("img_highres/KIDS/Denim/id_00000080/01_1_front.jpg", "gender"),
    ("img_highres/MEN/Denim/id_80/01_1_front.jpg", "identity"),
    ("img_highres/MEN/Denim/id_00000080/front.jpg", "file name"),
    ("img_highres/MEN/Den.im/id_00000080/01_1_front.jpg", "category"),
    ("id_00000080/01_1_front.jpg", "expected"),
    ("img_highres/MEN/../id_00000080/01_1_front.jpg", "expected"),
])
def test_flat_name_rejects_malformed_paths(path, problem):
    with pytest.raises(DataError, match=problem):
        flat_name(path)


# --------------------------------------------------------------------------- list and pairs

def test_read_list_keeps_jpg_lines_and_rejects_unsafe_names(tmp_path):
    path = tmp_path / "train.lst"
    path.write_text("a.jpg\n\n# comment\nb.jpg  \n")
    assert read_list(path) == ["a.jpg", "b.jpg"]
    path.write_text("a.jpg\n../evil.jpg\n")
    with pytest.raises(DataError, match=r"train.lst, row 2: unsafe file name"):
        read_list(path)
    path.write_text("a.jpg\nsub/dir.jpg\n")
    policy = ErrorPolicy("skip")
    assert read_list(path, policy) == ["a.jpg"] and policy.skipped[0][1] == 2


def test_read_pairs_checks_header_and_names(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("from,to\na.jpg,b.jpg\nb.jpg,a.jpg\n")
    assert read_pairs(path) == [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg")]
    path.write_text("source,to\na.jpg,b.jpg\n")
    with pytest.raises(DataError, match="missing column.*from"):
        read_pairs(path)
    path.write_text("from:to\na.jpg:b.jpg\n")
    with pytest.raises(DataError, match="wrong separator ':'"):
        read_pairs(path)
    path.write_text("from,to\na.jpg,..\n")
    with pytest.raises(DataError, match="row 2: unsafe file name '..'"):
        read_pairs(path)


# --------------------------------------------------------------------------- annotations

def test_read_annotations_round_trip(tmp_path):
    keypoints = {"x.jpg": np.stack([GOOD_Y, GOOD_X], 1), "y.jpg": np.full((18, 2), -1)}
    write_annotations(tmp_path / "a.csv", keypoints)
    back = read_annotations(tmp_path / "a.csv", frame=(256, 176))
    assert list(back) == ["x.jpg", "y.jpg"]
    assert np.array_equal(back["x.jpg"][:17], keypoints["x.jpg"][:17]) and (back["y.jpg"] == -1).all()
    assert back["x.jpg"][17].tolist() == [-1, -1]  # y=27 but x=-1: the joint is missing
    # a joint with only one missing coordinate is missing altogether
    ys = list(GOOD_Y)
    ys[3] = -1
    path = annotation_csv(tmp_path, [row(ys=ys)])
    kp = next(iter(read_annotations(path).values()))
    assert kp[3].tolist() == [-1, -1] and kp[2].tolist() == [12, 5]


@pytest.mark.parametrize("rows, header, sep, message", [
    ([row()], "name,keypoints_y,keypoints_x", ",", r"row 1: wrong separator ','"),
    ([row()], "name:keypoints_y", ":", r"missing column\(s\) keypoints_x"),
    ([row(ys=GOOD_Y[:17])], None, ":", r"row 2: keypoints_y has 17 values, expected 18"),
    ([row(xs=GOOD_X + [3])], None, ":", r"row 2: keypoints_x has 19 values, expected 18"),
    ([row(ys=GOOD_Y[:17] + [1.5])], None, ":", r"row 2: keypoints_y has non-integer value 1.5"),
    ([row(), [row()[0], '["a"]*18', json.dumps(GOOD_X)]], None, ":", r"row 3: .*(not a JSON list|annotated twice)"),
    ([row(ys=[300] + GOOD_Y[1:])], None, ":", r"row 2: .*keypoint 0 at \(y=300, x=5\) is outside"),
    ([row(xs=[176] + GOOD_X[1:])], None, ":", r"row 2: .*keypoint 0 at \(y=10, x=176\) is outside the 256x176"),
    ([row(ys=[-5] + GOOD_Y[1:])], None, ":", r"row 2: .*negative coordinate"),
    ([row(name="../../etc/passwd.jpg")], None, ":", r"row 2: unsafe file name"),
    ([row(name="sub/x.jpg")], None, ":", r"row 2: unsafe file name"),
    ([row(), row()], None, ":", r"row 3: .* annotated twice"),
])
def test_read_annotations_bad_input(tmp_path, rows, header, sep, message):
    path = annotation_csv(tmp_path, rows, header or "name:keypoints_y:keypoints_x", sep)
    with pytest.raises(DataError, match=message) as info:
        read_annotations(path, frame=(256, 176))
    assert str(path) in str(info.value)


def test_annotations_agree_with_pandas_as_upstream_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    keypoints = {f"fashionWOMENDressesid{i:08d}01_1front.jpg": np.stack([rng.integers(0, 256, 18),
                                                                         rng.integers(0, 176, 18)], 1)
                 for i in range(200)}
    for kp in keypoints.values():
        kp[rng.random(18) < 0.2] = -1
    path = tmp_path / "fasion-resize-annotation-test.csv"
    write_annotations(path, keypoints)
    assert path.read_text().splitlines()[:2] == [
        "name:keypoints_y:keypoints_x",
        f"{next(iter(keypoints))}:{json.dumps(next(iter(keypoints.values()))[:, 0].tolist())}:"
        f"{json.dumps(next(iter(keypoints.values()))[:, 1].tolist())}"]
    ours = read_annotations(path, frame=(256, 176))
    upstream = pd.read_csv(path, sep=":")   # upstream's loader: json.loads of each list, (x, y) stacked
    assert list(ours) == upstream["name"].tolist() == list(keypoints)
    for name, ys, xs in upstream.itertuples(index=False):
        kp = ours[name]
        assert kp.dtype == np.int64 and kp.shape == (18, 2)
        assert kp[:, 0].tolist() == json.loads(ys) and kp[:, 1].tolist() == json.loads(xs)
        assert np.array_equal(kp, keypoints[name])


def test_annotation_lists_in_any_json_spelling_read_as_json_does(tmp_path):
    spellings = ["[" + ",".join(map(str, GOOD_Y)) + "]", "[ " + " ,\t".join(map(str, GOOD_Y)) + " ]",
                 json.dumps([-0] + GOOD_Y[1:]), json.dumps([2 ** 62] + GOOD_Y[1:])]
    path = annotation_csv(tmp_path, [[f"{i}.jpg", ys, json.dumps(GOOD_X)] for i, ys in enumerate(spellings)])
    back = read_annotations(path)
    assert [kp[:17, 0].tolist() for kp in back.values()] == [json.loads(ys)[:17] for ys in spellings]
    path = annotation_csv(tmp_path, [row(ys=[2 ** 63] + GOOD_Y[1:])])
    with pytest.raises(DataError, match=r"row 2: keypoints_y has out-of-range value 9223372036854775808"):
        read_annotations(path)


def test_annotation_errors_name_the_line_and_come_in_row_order(tmp_path):
    good, bad = ":".join(row("a.jpg")), ":".join(row("b.jpg", xs=GOOD_X[:5]))
    lines = ["name:keypoints_y:keypoints_x", good, "", "   ", "::", "c.jpg:[1]", good + ":extra", bad,
             ":".join(row("../d.jpg")), ":".join(row("e.jpg", ys=[-2] + GOOD_Y[1:])), good,
             '"f:g.jpg":' + ":".join(row()[1:])]
    path = tmp_path / "ann.csv"
    path.write_text("\n".join(lines) + "\n")
    policy = ErrorPolicy("skip")
    assert list(read_annotations(path, policy=policy)) == ["f:g.jpg"]   # a.jpg twice: neither row counts
    assert [(row, problem) for _, row, problem in policy.skipped] == [
        (6, "2 fields, expected 3 (separator ':')"), (7, "4 fields, expected 3 (separator ':')"),
        (8, "keypoints_x has 5 values, expected 18"),
        (9, "unsafe file name '../d.jpg' (path separators and '..' are not allowed)"),
        (10, "e.jpg: negative coordinate other than -1"),
        (11, "a.jpg annotated twice (each image needs exactly one row)")]
    assert all(file == str(path) for file, _, _ in policy.skipped)
    # fail: the first bad row's problem, whatever kind of check finds a later one first
    path.write_text("\n".join([lines[0], bad, "c.jpg:[1]"]) + "\n")
    with pytest.raises(DataError, match=r"ann.csv, row 2: keypoints_x has 5 values, expected 18$"):
        read_annotations(path)


def test_pairs_round_trip_field_counts_and_pandas(tmp_path):
    path = tmp_path / "fasion-resize-pairs-test.csv"
    pairs = [("a.jpg", "b.jpg"), ("b,c.jpg", "a.jpg"), ('q"uote.jpg', "a.jpg")]
    write_pairs(path, pairs)
    assert path.read_bytes() == b'from,to\na.jpg,b.jpg\n"b,c.jpg",a.jpg\n"q""uote.jpg",a.jpg\n'
    assert read_pairs(path) == pairs == list(pd.read_csv(path).itertuples(index=False, name=None))
    path.write_text("from,to\na.jpg,b.jpg\n\n , \nb.jpg\na.jpg,b.jpg,c.jpg\nb.jpg , a.jpg\n")
    policy = ErrorPolicy("skip")
    assert read_pairs_rows(path, policy) == [(2, "a.jpg", "b.jpg"), (7, "b.jpg", "a.jpg")]
    assert [(row, problem) for _, row, problem in policy.skipped] == [(5, "1 fields, expected 2"),
                                                                       (6, "3 fields, expected 2")]
    path.write_text("to,from\nb.jpg,a.jpg\n")
    assert read_pairs(path) == [("a.jpg", "b.jpg")]
    write_pairs(path, [])
    assert path.read_text() == "from,to\n" and read_pairs(path) == []


def test_missing_joint_y_minus_one_with_valid_x_is_not_outside(tmp_path):
    # y=300 for joint 17 but its x is -1: missing, so not an out-of-frame error
    path = annotation_csv(tmp_path, [row(ys=GOOD_Y[:17] + [300])])
    assert read_annotations(path, frame=(256, 176))[row()[0]][17].tolist() == [-1, -1]


def test_skip_policy_collects_bad_rows_and_writes_report(tmp_path):
    path = annotation_csv(tmp_path, [row("a.jpg"), row("b.jpg", ys=GOOD_Y[:3]), row("c.jpg", xs=[999] * 18)])
    policy = ErrorPolicy("skip")
    kept = read_annotations(path, frame=(256, 176), policy=policy)
    assert list(kept) == ["a.jpg"]
    assert [(r, p.split(" ")[0]) for _, r, p in policy.skipped] == [(3, "keypoints_y"), (4, "c.jpg:")]
    report = policy.write_report("pose", tmp_path / "reports")
    with open(report) as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["file", "row", "problem"] and [line[1] for line in lines[1:]] == ["3", "4"]
    assert ErrorPolicy("fail").write_report("pose", tmp_path / "reports2") is None


# --------------------------------------------------------------------------- parsing merge

def test_merge_table_matches_reference_groups():
    groups = {0: [0], 1: [9, 12], 2: [1, 2], 3: [3], 4: [4, 13], 5: [5, 6, 7, 10, 11], 6: [14, 15],
              7: [8, 16, 17, 18, 19]}
    for region, lips in groups.items():
        for lip in lips:
            assert LIP_TO_REGION[lip] == region, (lip, region)
    assert sorted(sum(groups.values(), [])) == list(range(20)) and len(REGION_NAMES) == 8
    assert REGION_NAMES[1] == "pants" and REGION_NAMES[6] == "arms"


def test_merge_parsing_on_crafted_map():
    lip = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]], dtype=np.uint8)
    expected = np.array([[0, 2, 2, 3, 4], [5, 5, 5, 7, 1], [5, 5, 1, 4, 6], [6, 7, 7, 7, 7]], dtype=np.uint8)
    assert np.array_equal(merge_parsing(lip), expected)
    onehot = parsing_onehot(torch.from_numpy(expected)[None])
    assert onehot.shape == (1, 8, 4, 5) and torch.equal(onehot.sum(1), torch.ones(1, 4, 5))
    assert onehot[0, 1, 1, 4] == 1 and onehot[0, 1, 2, 2] == 1 and onehot[0, 1].sum() == 2


# --------------------------------------------------------------------------- coordinates

def test_rescale_identity_and_downscale():
    kp = np.array([[0, 0], [255, 175], [128, 88], [-1, -1], [10, -1]] + [[3, 4]] * 13)
    assert np.array_equal(rescale_keypoints(kp, (256, 176), (256, 176))[:4], kp[:4])
    out = rescale_keypoints(kp, (256, 176), (64, 44))
    assert out.dtype == np.int16
    # pixel centres: y' = round((y + .5) / 4 - .5): 0 -> 0 (clipped from -0.375), 255 -> 63.5-.5 = 63, 128 -> 31.625 -> 32
    assert out[:5].tolist() == [[0, 0], [63, 43], [32, 22], [-1, -1], [-1, -1]]
    assert out[5].tolist() == [round((3 + .5) / 4 - .5), round((4 + .5) / 4 - .5)]


def test_rescale_with_crop_border():
    # 256x256 annotation frame, 40 columns cut each side -> 176 wide, then to 128x88
    kp = np.array([[100, 39], [100, 40], [100, 215], [100, 216], [100, 128]] + [[-1, -1]] * 13)
    out = rescale_keypoints(kp, (256, 256), (128, 88), crop_border=40)
    assert out[0].tolist() == [-1, -1] and out[3].tolist() == [-1, -1]   # cut away by the crop
    assert out[1].tolist() == [50, 0] and out[2].tolist() == [50, 87]
    assert out[4, 1] == round((128 - 40 + .5) * 88 / 176 - .5)
    assert (out[5:] == -1).all()


def test_data_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="source"):
        DataConfig(source="real")
    with pytest.raises(ConfigError, match="on_error"):
        DataConfig(on_error="ignore")
    with pytest.raises(ConfigError, match="image_size"):
        DataConfig(image_size=(64,))
    with pytest.raises(ConfigError, match=r"image_size must be \[H, W\] positive integers, got 64"):
        DataConfig(image_size=64)
    with pytest.raises(ConfigError, match="outside data/raw"):
        DataConfig(source="deepfashion", root="data/raw")
    with pytest.raises(ConfigError, match="with source: synthetic, root must be data/raw"):
        DataConfig(source="synthetic", root=str(tmp_path))
    with pytest.raises(ConfigError, match="divisible by 4"):
        DataConfig(image_size=(30, 24))
    for key, value in (("resize_filter", "nearest"), ("keypoint_frame", "scaled"), ("parsing_frame", "raw"),
                       ("jpeg_quality", 0), ("follow_external_links", "yes")):
        with pytest.raises(ConfigError, match=key):
            DataConfig(**{key: value})
    assert str(DataConfig(source="deepfashion", root=str(tmp_path)).raw_dir()) == str(tmp_path)
    assert str(DataConfig().raw_dir()) == "data/raw"


# --------------------------------------------------------------------------- whole files, spellings, readers

def test_bom_is_accepted_utf16_and_empty_files_name_the_fix(tmp_path):
    lst = tmp_path / "train.lst"
    lst.write_bytes("\ufefffashionMENDenimid0000008001_1front.jpg\n".encode("utf-8"))
    assert read_list(lst) == ["fashionMENDenimid0000008001_1front.jpg"]
    path = annotation_csv(tmp_path, [row()])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert list(read_annotations(path)) == ["fashionMENDenimid0000008001_1front.jpg"]
    path.write_bytes(path.read_bytes()[3:].decode().encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16; save it as UTF-8"):
        read_annotations(path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty file, expected a header line name:keypoints_y:keypoints_x"):
        read_annotations(path)
    lst.write_text("\n")
    with pytest.raises(DataError, match="no names ending in .jpg"):
        read_list(lst)


def test_duplicate_annotation_rows_fail_or_drop_the_image(tmp_path):
    path = annotation_csv(tmp_path, [row(), row("fashionMENDenimid0000008002_2side.jpg"), row()])
    with pytest.raises(DataError, match="annotated twice"):
        read_annotations(path)
    policy = ErrorPolicy("skip")
    assert list(read_annotations(path, policy=policy)) == ["fashionMENDenimid0000008002_2side.jpg"]
    assert policy.skipped[0][1] == 4


def test_release_spelling_fasion_is_accepted(tmp_path):
    (tmp_path / "fasion-resize-pairs-train.csv").write_text("from,to\n")
    assert raw_file(tmp_path, "fashion-resize-pairs-train.csv").name == "fasion-resize-pairs-train.csv"
    (tmp_path / "fashion-resize-pairs-train.csv").write_text("from,to\n")
    assert raw_file(tmp_path, "fashion-resize-pairs-train.csv").name == "fashion-resize-pairs-train.csv"
    (tmp_path / "fashion-resize-pairs-train.csv").write_text("from,to\na.jpg,b.jpg\n")
    with pytest.raises(DataError, match="both fashion-resize-pairs-train.csv and fasion-resize-pairs-train.csv "
                                        "exist and differ"):
        raw_file(tmp_path, "fashion-resize-pairs-train.csv")
    with pytest.raises(DataError, match="nor fasion-resize-annotation-test.csv"):
        raw_file(tmp_path, "fashion-resize-annotation-test.csv")


def test_prepared_layout_and_readers(tmp_path):
    layout = PreparedLayout(tmp_path)
    assert layout.pairs("train") == tmp_path / "split" / "pairs-train.csv"
    assert layout.image("test", "a.jpg") == tmp_path / "resized" / "test" / "a.jpg"
    assert layout.keypoints("test") == tmp_path / "pose" / "test.npz"
    assert layout.parsing_map("train", "a.jpg") == tmp_path / "parsing" / "train" / "a.png"
    Image.new("L", (6, 4), 128).save(tmp_path / "grey.jpg")
    assert read_image(tmp_path / "grey.jpg", (4, 6)).shape == (4, 6, 3)
    with pytest.raises(DataError, match="image is 4x6, expected 8x6"):
        read_image(tmp_path / "grey.jpg", (8, 6))
    assert read_image(tmp_path / "grey.jpg", (8, 12), resample=Image.Resampling.BICUBIC).shape == (8, 12, 3)
    Image.fromarray(np.array([[0, 7], [8, 1]], np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match="region id 8 outside the merged ids 0..7"):
        read_regions(tmp_path / "bad.png", (2, 2))
    Image.fromarray(np.array([[0, 7], [3, 1]], np.uint8)).save(tmp_path / "ok.png")
    assert read_regions(tmp_path / "ok.png", (4, 4), nearest_resize=True).shape == (4, 4)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image"):
        read_image(tmp_path / "text.jpg")
