"""casd annotate: COCO -> OpenPose, framing, the SCHP parser against the authors' code, the whole chain.

The pose models are stand-ins made here with the released models' ONNX
signatures (YOLOX with NMS: [1, 3, H, W] pixels -> [1, N, 5] boxes + score;
RTMPose-m: [1, 3, 256, 192] -> SimCC x [1, 17, 384], y [1, 17, 512]): they
find the dark person drawn on a white photo and put each joint at a fixed
fraction of its box, so that rtmlib's real pre- and post-processing, the
framing and the conversion have a known answer. The parser is a tiny-width
SCHP with random weights, loaded through the authors' names.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("rtmlib")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from casd import cli  # noqa: E402
from casd.annotate import (Annotator, annotate, annotate_deepfashion, annotate_image,  # noqa: E402
                           locate_weights, _default_annotator)
from casd.annotate import framing, parsing  # noqa: E402
from casd.annotate.pose import PoseEstimator, coco_to_openpose  # noqa: E402
from casd.data.images import LIP_TO_REGION  # noqa: E402
from casd.data.layout import annotation_file, list_file  # noqa: E402
from casd.data.tables import read_annotations, read_list  # noqa: E402
from casd.errors import DataError, WeightsError  # noqa: E402
from casd.weights import REGISTRY  # noqa: E402

from parser_rules import IMAGE_SIZE, INPUT_SIZE, rule_state_dict  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "annotate" / "parser_equivalence.pt"

# Joint k of the stand-in pose model sits at this fraction (x, y) of the dark box (COCO order; the person faces
# the camera, so their left is the picture's right).
FRACTIONS = np.array([[0.50, 0.06], [0.56, 0.04], [0.44, 0.04], [0.62, 0.06], [0.38, 0.06],
                      [0.75, 0.20], [0.25, 0.20], [0.85, 0.38], [0.15, 0.38], [0.90, 0.52], [0.10, 0.52],
                      [0.65, 0.55], [0.35, 0.55], [0.65, 0.75], [0.35, 0.75], [0.65, 0.95], [0.35, 0.95]])
CONFIDENCE = np.full(17, 0.9)
CONFIDENCE[[3, 4]] = 0.1  # the ears: below the threshold


# --------------------------------------------------------------------------- COCO -> OpenPose

def test_coco_to_openpose_order_neck_and_threshold():
    xy = np.stack([np.arange(17) * 2.0 + 1, np.arange(17) * 3.0 + 2], axis=1)  # joint k at x=2k+1, y=3k+2
    scores = np.full(17, 0.9)
    scores[[3, 9]] = 0.2  # left ear, left wrist
    kp = coco_to_openpose(xy, scores, threshold=0.3)
    expected_coco = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for j, c in enumerate(expected_coco):
        if c is None or c in (3, 9):
            continue
        assert kp[j].tolist() == [3 * c + 2, 2 * c + 1], j
    assert kp[7].tolist() == [-1, -1] and kp[17].tolist() == [-1, -1]  # Lwri, Lear under the threshold
    assert kp[1].tolist() == [round((17 + 20) / 2), round((11 + 13) / 2)]  # neck: midpoint of the shoulders
    scores[6] = 0.1  # one shoulder missing -> no neck
    kp = coco_to_openpose(xy, scores, threshold=0.3)
    assert kp[1].tolist() == [-1, -1] and kp[2].tolist() == [-1, -1]
    kp = coco_to_openpose(xy, np.ones(17), frame=(20, 20))  # outside the frame -> missing
    assert (kp[(kp[:, 0] >= 20) | (kp[:, 1] >= 20)] == -1).all() and kp[0].tolist() == [2, 1]


# --------------------------------------------------------------------------- framing

def test_frame_centres_the_person_at_the_dataset_aspect():
    photo = Image.new("RGB", (400, 300), (255, 255, 255))
    photo.paste((0, 0, 0), (250, 50, 300, 250))  # a 50x200 person right of centre
    frame = framing.frame_person(np.array([250, 50, 300, 250]), size=(64, 44), margin=0.1)
    image = framing.crop(photo, frame)
    assert image.shape == (64, 44, 3)
    dark = np.argwhere(image.mean(axis=2) < 128)
    centre = dark.mean(axis=0)
    assert abs(centre[0] - 31.5) < 0.6 and abs(centre[1] - 21.5) < 0.6
    assert dark[:, 0].min() in (5, 6) and dark[:, 0].max() in (57, 58)  # 10% margin above and below
    back = frame.to_photo(frame.to_frame(np.array([[12.0, 34.0]])))
    np.testing.assert_allclose(back, [[12.0, 34.0]])
    # a frame reaching past the photo is filled with white
    frame = framing.frame_person(np.array([0, 0, 20, 100]), size=(64, 44))
    assert (framing.crop(photo, frame)[:, :5] == 255).all()


# --------------------------------------------------------------------------- parser

@pytest.mark.slow
def test_parser_matches_the_authors_network_and_extractor():
    fx = torch.load(FIXTURE, weights_only=True)
    names = parsing.upstream_parser_names()
    with torch.device("meta"):
        model = parsing.SCHPParser()
    assert sorted(names) == sorted(model.state_dict())
    shapes = {up: tuple(model.state_dict()[own].shape) for own, up in names.items()}
    model.load_state_dict(parsing.convert_upstream_state_dict(
        {f"module.{k}": v for k, v in rule_state_dict(shapes).items()}), assign=True)
    model.double().eval()
    with torch.no_grad():
        outputs = model(fx["input"].double())
    for ours, theirs in zip(outputs, (fx["parsing"], fx["fusion"], fx["edge"])):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    image = fx["image"].numpy()
    assert image.shape[:2] == IMAGE_SIZE
    torch.testing.assert_close(parsing.preprocess(image, INPUT_SIZE), fx["input"], rtol=0, atol=1e-6)
    labels = parsing.postprocess(fx["fusion"].float(), *IMAGE_SIZE, INPUT_SIZE)
    np.testing.assert_array_equal(labels, fx["labels"].numpy())
    labels = parsing.postprocess(fx["random_logits"], *IMAGE_SIZE, INPUT_SIZE)
    np.testing.assert_array_equal(labels, fx["random_labels"].numpy())
    assert len(np.unique(labels)) == 20


def test_parser_checkpoint_mismatch_is_one_line(tmp_path):
    state = {f"module.{up}": torch.zeros(1) for up in parsing.upstream_parser_names(parsing.ParserConfig.tiny()).values()}
    state["module.extra.weight"] = torch.zeros(1)
    del state["module.conv1.weight"]
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(DataError) as info:
        parsing.load_parser(tmp_path / "bad.pth", parsing.ParserConfig.tiny())
    message = str(info.value)
    assert "\n" not in message and "1 missing: conv1.weight" in message and "1 unexpected: extra.weight" in message
    assert "of another shape" in message


# --------------------------------------------------------------------------- stand-in models

class DarkBoxDetector(torch.nn.Module):
    """YOLOX-with-NMS signature: the box of the dark pixels (value < 100), score 1."""

    def forward(self, x):
        mask = x.mean(1)[0] < 100
        h, w = mask.shape
        ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        big = torch.tensor(1e6)
        box = torch.stack([torch.where(mask, xs, big).amin(), torch.where(mask, ys, big).amin(),
                           torch.where(mask, xs, -big).amax() + 1, torch.where(mask, ys, -big).amax() + 1,
                           mask.any().float()])  # no dark pixel: score 0, filtered out
        return box.view(1, 1, 5)


class FractionPose(torch.nn.Module):
    """RTMPose SimCC signature: joint k at FRACTIONS[k] of the dark box, peak height CONFIDENCE[k]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("fractions", torch.tensor(FRACTIONS, dtype=torch.float32))
        self.register_buffer("confidence", torch.tensor(CONFIDENCE, dtype=torch.float32))

    def forward(self, x):
        value = x.mean(1)[0]  # normalised; the person (40, 50, 60) is about -1.1, the warp's black border -2
        mask = (value < -0.5) & (value > -1.6)
        h, w = mask.shape
        ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        big = torch.tensor(1e6)
        x0, x1 = torch.where(mask, xs, big).amin(), torch.where(mask, xs, -big).amax() + 1
        y0, y1 = torch.where(mask, ys, big).amin(), torch.where(mask, ys, -big).amax() + 1
        px = x0 + self.fractions[:, 0] * (x1 - x0) - 0.5  # pixel index of the joint
        py = y0 + self.fractions[:, 1] * (y1 - y0) - 0.5
        bins_x = torch.arange(2 * w, dtype=torch.float32) / 2  # SimCC split ratio 2
        bins_y = torch.arange(2 * h, dtype=torch.float32) / 2
        simcc_x = self.confidence[:, None] * torch.exp(-(bins_x[None] - px[:, None]) ** 2)
        simcc_y = self.confidence[:, None] * torch.exp(-(bins_y[None] - py[:, None]) ** 2)
        return simcc_x[None], simcc_y[None]


def _export(module: torch.nn.Module, shape: tuple[int, ...], path: Path, outputs: list[str]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), torch.zeros(shape), str(path), dynamo=False, input_names=["input"],
                          output_names=outputs, opset_version=17)
    return path


def _zip(onnx: Path, folder: str, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.write(onnx, f"{folder}/end2end.onnx")
    return zip_path


@pytest.fixture(scope="module")
def standin_weights(tmp_path_factory) -> Path:
    """A torch-hub-like folder holding the three files under their registered names (stand-in contents)."""
    folder = tmp_path_factory.mktemp("weights")
    det = _export(DarkBoxDetector(), (1, 3, 640, 640), folder / "det.onnx", ["dets"])
    pose = _export(FractionPose(), (1, 3, 256, 192), folder / "pose.onnx", ["simcc_x", "simcc_y"])
    _zip(det, "yolox", folder / REGISTRY["yolox-person"].filename)
    _zip(pose, "rtmpose", folder / REGISTRY["rtmpose-body"].filename)
    torch.manual_seed(0)
    tiny = parsing.SCHPParser(parsing.ParserConfig.tiny())
    names = parsing.upstream_parser_names(parsing.ParserConfig.tiny())
    state = {f"module.{names[k]}": v for k, v in tiny.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 150}, folder / REGISTRY["schp-lip"].filename)
    return folder


def _annotator(folder: Path, size=framing.FRAME_SIZE) -> Annotator:
    explicit = {key: str(folder) for key in ("yolox-person", "rtmpose-body", "schp-lip")}
    return Annotator.from_weights("cpu", explicit, parsing.ParserConfig.tiny(), size=size)


def _photo(path: Path | None = None, size=(400, 320), box=(250, 60, 310, 260)) -> Image.Image:
    """White photo (W, H) with a dark 'person' rectangle, x0 y0 x1 y1."""
    photo = Image.new("RGB", size, (255, 255, 255))
    photo.paste((40, 50, 60), box)
    if path is not None:
        photo.save(path)
    return photo


# --------------------------------------------------------------------------- the chain

def test_annotator_frames_the_person_and_places_the_joints(standin_weights):
    annotator = _annotator(standin_weights)
    box = np.array([250, 60, 310, 260], dtype=np.float64)
    result = annotator(_photo(box=tuple(int(v) for v in box)))
    assert result.image.shape == (256, 176, 3) and result.lip.shape == (256, 176)
    assert result.lip.dtype == np.uint8 and result.lip.max() < 20
    np.testing.assert_array_equal(result.regions, LIP_TO_REGION[result.lip])
    # the person fills the frame's height less the margins, centred
    dark = np.argwhere(result.image.mean(axis=2) < 128)
    assert abs(dark[:, 0].mean() - 127.5) < 1.5 and abs(dark[:, 1].mean() - 87.5) < 1.5
    # each joint where the stand-in put it: a fraction of the person's box, carried into the frame
    photo_xy = box[:2] + FRACTIONS * (box[2:] - box[:2]) - 0.5
    expected = coco_to_openpose(result.frame.to_frame(photo_xy), CONFIDENCE, frame=(256, 176))
    kept = expected[:, 0] >= 0
    assert kept.sum() == 16 and not kept[16] and not kept[17]  # both ears below the threshold
    np.testing.assert_array_equal(result.keypoints[~kept], -1)
    assert np.abs(result.keypoints[kept] - expected[kept]).max() <= 2
    assert result.keypoints[2, 1] < result.keypoints[5, 1]  # right shoulder on the picture's left


@pytest.mark.filterwarnings("ignore:model.vgg_weights")
def test_annotate_writes_the_dataset_formats_and_generate_reads_them(standin_weights, tmp_path):
    from casd.inference import Synthesizer
    from casd.models.generator import Generator, GeneratorConfig

    photos = [tmp_path / "alice.jpg", tmp_path / "bob.png"]
    _photo(photos[0])
    _photo(photos[1], size=(500, 300), box=(100, 40, 160, 280))
    out = tmp_path / "out"
    table = annotate(photos, out, _annotator(standin_weights))
    assert sorted(table) == ["alice.jpg", "bob.jpg"]
    rows = read_annotations(out / "annotation.csv", frame=(256, 176))
    for name, kp in table.items():
        np.testing.assert_array_equal(rows[name], kp)
        stem = name[:-4]
        assert Image.open(out / "img" / name).size == (176, 256)
        lip = np.asarray(Image.open(out / "semantic_merge3" / f"{stem}.png"))
        regions = np.asarray(Image.open(out / "parsing" / f"{stem}.png"))
        np.testing.assert_array_equal(regions, LIP_TO_REGION[lip])
        pose = json.loads((out / "keypoints" / f"{stem}.json").read_text())
        assert pose["size"] == [256, 176] and pose["keypoints"] == kp.tolist()
    torch.manual_seed(0)
    source = out / "img" / "alice.jpg"
    synthesizer = Synthesizer(Generator(GeneratorConfig.tiny()), (64, 44), data_root=tmp_path / "none",
                        parsing={str(source): out / "parsing" / "alice.png"})
    image = synthesizer.transfer(str(source), str(out / "keypoints" / "bob.json"))
    assert image.shape == (3, 64, 44) and torch.isfinite(image).all()


def test_annotate_deepfashion_makes_a_data_root(standin_weights, tmp_path):
    src = tmp_path / "src"
    rel = ["img_highres/MEN/Denim/id_00000001/01_1_front.jpg", "img_highres/MEN/Denim/id_00000001/01_2_side.jpg",
           "img_highres/WOMEN/Dresses/id_00000002/02_1_front.jpg"]
    for i, r in enumerate(rel):
        (src / r).parent.mkdir(parents=True, exist_ok=True)
        _photo(src / r, box=(100 + 20 * i, 50, 170 + 20 * i, 300))
    flat = ["fashionMENDenimid0000000101_1front.jpg", "fashionMENDenimid0000000101_2side.jpg",
            "fashionWOMENDressesid0000000202_1front.jpg"]
    (src / "fasion-resize-pairs-test.csv").write_text(f"from,to\n{flat[0]},{flat[1]}\n{flat[1]},{flat[0]}\n")
    (src / "train.lst").write_text(f"{flat[2]}\n")
    out = tmp_path / "root"
    counts = annotate_deepfashion(src, out, _annotator(standin_weights))
    assert counts == {"train_images": 1, "test_images": 2}
    assert read_list(out / list_file("train")) == [flat[2]]
    assert sorted(read_list(out / list_file("test"))) == sorted(flat[:2])
    for phase, names in (("train", flat[2:]), ("test", flat[:2])):
        rows = read_annotations(out / annotation_file(phase), frame=(256, 176))
        assert sorted(rows) == sorted(names)
    for r, name in zip(rel, flat):
        assert Image.open(out / r).size == (176, 256)
        assert np.asarray(Image.open(out / "semantic_merge3" / f"{name[:-4]}.png")).max() < 20
    assert (out / "fashion-resize-pairs-test.csv").read_text().splitlines()[1] == f"{flat[0]},{flat[1]}"
    # the pipeline's split stage takes the folder as data.root
    from casd.data.config import DataConfig
    from casd.data.prepare import split

    summary = split(DataConfig(source="deepfashion", root=str(out)), raw_dir=out, out_dir=tmp_path / "split",
                    reports_dir=tmp_path / "reports")
    assert sorted(p.name for p in (tmp_path / "split" / "test").iterdir()) == sorted(flat[:2]), summary


def test_no_person_is_one_data_error(standin_weights):
    with pytest.raises(DataError, match="no person detected"):
        _annotator(standin_weights)(Image.new("RGB", (200, 300), (255, 255, 255)), "empty.jpg")


# --------------------------------------------------------------------------- offline

def test_offline_annotate_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    photo = tmp_path / "me.jpg"
    _photo(photo)
    with pytest.raises(SystemExit) as info:
        cli.main(["annotate", str(photo), "--out", str(tmp_path / "out")])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    for key in ("yolox-person", "rtmpose-body", "schp-lip"):
        assert REGISTRY[key].filename in err and key in err
    assert "casd weights fetch" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "out").exists()
    _default_annotator.cache_clear()
    with pytest.raises(WeightsError, match="casd weights fetch"):
        annotate_image(np.zeros((40, 30, 3), np.uint8))
    with pytest.raises(WeightsError):
        locate_weights()


def test_pose_estimator_never_downloads(tmp_path):
    with pytest.raises(DataError, match="model file not found"):
        PoseEstimator("https://example.invalid/yolox.zip", tmp_path / "pose.onnx")
