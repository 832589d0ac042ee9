"""casd.inference.Synthesizer and casd generate: pose transfer and style control through the Synthesizer API and the CLI.

A random-init tiny generator (vgg_weights none) on a few 32x24 prepared images
written here: the checks are about what is computed (which tokens, which
decode call), not about image quality.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from casd import inference, visuals
from casd.data.layout import output_name
from casd.errors import CasdError, DataError
from casd.data.images import REGION_NAMES
from casd.data.pose import pose_input
from helpers import responsive_tiny_generator, save_tiny_generator, tiny_generator

SIZE = (32, 24)
NAMES = [f"fashionWOMENDressesid000000{i:02d}01_1front.jpg" for i in range(4)]


def _keypoints(rng):
    kp = np.stack([rng.integers(0, SIZE[0], 18), rng.integers(0, SIZE[1], 18)], axis=1)
    kp[rng.random(18) < 0.2] = -1
    return kp.astype(np.int16)



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """data/{resized,parsing}/test/ and data/pose/test.npz for NAMES, random content."""
    root = tmp_path_factory.mktemp("prepared") / "data"
    rng = np.random.default_rng(0)
    for sub in ("resized/test", "parsing/test", "pose"):
        (root / sub).mkdir(parents=True)
    for name in NAMES:
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(root / "resized/test" / name)
        ids = np.repeat(np.arange(len(REGION_NAMES), dtype=np.uint8), SIZE[0] * SIZE[1] // 8).reshape(SIZE)
        Image.fromarray(rng.permutation(ids.reshape(-1)).reshape(SIZE)).save(
            root / "parsing/test" / name.replace(".jpg", ".png"))
    np.savez(root / "pose/test.npz", names=np.array(NAMES), keypoints=np.stack([_keypoints(rng) for _ in NAMES]))
    return root


@pytest.fixture(scope="module")
def generator():
    return responsive_tiny_generator()


@pytest.fixture()
def synthesizer(generator, data_root):
    return inference.Synthesizer(generator, SIZE, data_root=data_root)


_reader_generator = functools.cache(tiny_generator)


def _person_tensors(data_root, name):
    synthesizer = inference.Synthesizer(_reader_generator(), SIZE, data_root=data_root)
    person = synthesizer.person(name)
    return person.image[None], person.parsing[None], synthesizer.keypoints(name)[None]


def test_batched_transfer_equals_one_at_a_time(synthesizer):
    """The generator's modulated norm uses batch statistics; generation must not depend on batching."""
    batch = synthesizer.transfer_batch(NAMES[:3], NAMES[1:4])
    for i in range(3):
        torch.testing.assert_close(batch[i], synthesizer.transfer(NAMES[i], NAMES[i + 1]), rtol=0, atol=1e-4)


def test_transfer_equals_generator_forward(synthesizer, generator, data_root):
    image, parsing, _ = _person_tensors(data_root, NAMES[0])
    _, _, kp = _person_tensors(data_root, NAMES[1])
    with torch.no_grad():
        expected, _ = generator(pose_input(kp, SIZE), image, parsing)
    out = synthesizer.transfer(NAMES[0], NAMES[1])
    assert out.shape == (3, *SIZE)
    torch.testing.assert_close(out, expected[0], rtol=0, atol=1e-6)


def test_swap_equals_decode_with_hand_edited_tokens(synthesizer, generator, data_root):
    src, src_parsing, _ = _person_tensors(data_root, NAMES[0])
    donor, donor_parsing, _ = _person_tensors(data_root, NAMES[2])
    _, _, kp = _person_tensors(data_root, NAMES[1])
    with torch.no_grad():
        tokens = generator.encode_style(src, src_parsing)
        donor_tokens = generator.encode_style(donor, donor_parsing)
        k = REGION_NAMES.index("upper_clothes")
        edited = tokens.clone()
        edited[:, k] = donor_tokens[:, k]
        expected, _ = generator.decode(pose_input(kp, SIZE), edited)
    out = synthesizer.swap(NAMES[0], NAMES[1], {"upper_clothes": NAMES[2]})
    torch.testing.assert_close(out, expected[0], rtol=0, atol=1e-6)
    # the swap really changed the picture, and only through that one token
    assert not torch.allclose(out, synthesizer.transfer(NAMES[0], NAMES[1]), atol=1e-4)


def test_swap_edits_only_the_chosen_tokens(synthesizer, monkeypatch):
    seen = {}
    original = synthesizer.decode

    def spy(poses, tokens):
        seen["tokens"] = tokens.clone()
        return original(poses, tokens)

    monkeypatch.setattr(synthesizer, "decode", spy)
    synthesizer.swap(NAMES[0], NAMES[1], {"head": NAMES[3]})
    src, donor = synthesizer.encode([NAMES[0]]), synthesizer.encode([NAMES[3]])
    head = [REGION_NAMES.index("hair"), REGION_NAMES.index("face")]
    rest = [i for i in range(len(REGION_NAMES)) if i not in head]
    assert torch.equal(seen["tokens"][:, head], donor[:, head])
    assert torch.equal(seen["tokens"][:, rest], src[:, rest])


def test_mix_endpoints_equal_the_two_people(synthesizer):
    at0 = synthesizer.mix(NAMES[0], NAMES[1], NAMES[2], alpha=0.0)
    at1 = synthesizer.mix(NAMES[0], NAMES[1], NAMES[2], alpha=1.0)
    torch.testing.assert_close(at0, synthesizer.transfer(NAMES[0], NAMES[1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(at1, synthesizer.transfer(NAMES[2], NAMES[1]), rtol=0, atol=1e-6)
    # regions: alpha 1 on hair+face only is the head swap
    torch.testing.assert_close(synthesizer.mix(NAMES[0], NAMES[1], NAMES[2], 1.0, regions="hair,face"),
                               synthesizer.swap(NAMES[0], NAMES[1], {"head": NAMES[2]}), rtol=0, atol=1e-6)


def test_inputs_as_tensors_and_json_pose(synthesizer, data_root, tmp_path):
    image, parsing, kp = _person_tensors(data_root, NAMES[0])
    ids = parsing[0].argmax(0)
    pose_file = tmp_path / "pose.json"
    pose_file.write_text(json.dumps(kp[0].tolist()))
    by_tensor = synthesizer.transfer((image[0], ids), kp[0])
    torch.testing.assert_close(by_tensor, synthesizer.transfer(NAMES[0], str(pose_file)), rtol=0, atol=1e-6)
    torch.testing.assert_close(by_tensor, synthesizer.transfer(NAMES[0], NAMES[0]), rtol=0, atol=1e-6)
    # another frame, rescaled: the same joints given at twice the size
    scaled = {"size": [SIZE[0] * 2, SIZE[1] * 2],
              "keypoints": [[-1, -1] if y < 0 else [2 * y, 2 * x] for y, x in kp[0].tolist()]}
    pose_file.write_text(json.dumps(scaled))
    assert torch.equal(synthesizer.keypoints(str(pose_file)), kp[0])


def test_image_path_needs_parsing(synthesizer, data_root, tmp_path):
    path = data_root / "resized/test" / NAMES[1]
    outside = tmp_path / "person.jpg"
    outside.write_bytes(path.read_bytes())
    with pytest.raises(DataError, match="--parsing"):
        synthesizer.person(str(outside))
    person = synthesizer.person(str(outside), parsing=data_root / "parsing/test" / NAMES[1].replace(".jpg", ".png"))
    assert torch.equal(person.parsing, synthesizer.person(NAMES[1]).parsing)


def test_bad_inputs_are_one_clear_error_each(synthesizer, tmp_path):
    with pytest.raises(DataError, match="no prepared image") as e:
        synthesizer.transfer("fashionWOMENDressesid0000000001_1fron.jpg", NAMES[1])
    assert "did you mean" in str(e.value)
    with pytest.raises(DataError, match="no prepared pose"):
        synthesizer.transfer(NAMES[0], "nobody.jpg")
    with pytest.raises(CasdError, match="unknown region 'shirt'"):
        synthesizer.swap(NAMES[0], NAMES[1], {"shirt": NAMES[2]})
    short = tmp_path / "short.json"
    short.write_text(json.dumps([[1, 1]] * 17))
    with pytest.raises(DataError, match="expected 18 .* got 17"):
        synthesizer.transfer(NAMES[0], str(short))
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps([[SIZE[0], 0]] + [[1, 1]] * 17))
    with pytest.raises(DataError, match="outside"):
        synthesizer.transfer(NAMES[0], str(outside))


def test_generate_pairs_writes_images_and_strips(synthesizer, tmp_path):
    written = inference.generate_pairs(synthesizer, [(NAMES[0], NAMES[1]), (NAMES[2], NAMES[3])], tmp_path,
                                      swaps={"upper_clothes": NAMES[3]}, batch_size=2)
    images = [p for p in written if not p.name.endswith("_strip.png")]
    strips = [p for p in written if p.name.endswith("_strip.png")]
    assert len(images) == len(strips) == 2
    assert images[0].name == output_name(NAMES[0], NAMES[1]).replace(
        ".png", f"_swap-upper_clothes-{NAMES[3].removesuffix('.jpg')}.png")
    plain = inference.generate_pairs(synthesizer, [(NAMES[0], NAMES[1])], tmp_path / "plain", strips=False)
    assert [p.name for p in plain] == [output_name(NAMES[0], NAMES[1])]  # the test stage's name
    with Image.open(images[0]) as img:
        assert img.size == (SIZE[1], SIZE[0])
    with Image.open(strips[0]) as img:  # source | pose | donor | result | predicted parsing, 2 px gaps
        strip = np.asarray(img)
    assert strip.shape == (SIZE[0], 5 * SIZE[1] + 4 * 2, 3)
    _, regions = synthesizer.transfer_with_parsing(NAMES[0], NAMES[1])  # no swap: another picture, but a parsing
    assert regions.shape == SIZE and regions.dtype == torch.uint8 and int(regions.max()) < 8
    parsing_panel = strip[:, 4 * (SIZE[1] + 2):]
    assert {tuple(c) for c in parsing_panel.reshape(-1, 3)} <= {tuple(c) for c in visuals.REGION_COLOURS}
    # the written result is the single-pair swap (batched float noise may move a value by one level)
    expected = visuals.to_uint8(synthesizer.swap(NAMES[0], NAMES[1], {"upper_clothes": NAMES[3]})).astype(int)
    with Image.open(images[0]) as img:
        assert np.abs(np.asarray(img).astype(int) - expected).max() <= 1


# --------------------------------------------------------------------------- CLI

@pytest.fixture()
def checkpoint(generator, tmp_path):
    """The fixture generator as ``casd train`` exports it (models/generator.pt format)."""
    return save_tiny_generator(tmp_path / "generator.pt", generator, SIZE)


def _run(argv, capsys):
    from casd.cli import main as casd_main

    with pytest.raises(SystemExit) as e:
        casd_main(["generate", *argv])
    assert e.value.code == 1
    return capsys.readouterr().err.strip()


def test_cli_tryon_writes_result_and_strip(checkpoint, data_root, tmp_path, synthesizer, monkeypatch):
    from casd.cli import main as casd_main

    monkeypatch.chdir(tmp_path)  # no params.yaml here: everything from the checkpoint
    out = tmp_path / "out"
    casd_main(["generate", "--checkpoint", str(checkpoint), "--data-root", str(data_root), "--source", NAMES[0],
               "--pose", NAMES[1], "--swap", f"upper_clothes={NAMES[2]}", "--out", str(out)])
    results = sorted(out.glob("*.png"))
    assert [p.name.endswith("_strip.png") for p in results] == [False, True]
    with Image.open(results[0]) as img:
        got = np.asarray(img).astype(int)
    expected = visuals.to_uint8(synthesizer.swap(NAMES[0], NAMES[1], {"upper_clothes": NAMES[2]})).astype(int)
    assert np.abs(got - expected).max() <= 1


def test_cli_pairs_batch(checkpoint, data_root, tmp_path):
    from casd.cli import main as casd_main
    from casd.data.tables import write_pairs

    write_pairs(tmp_path / "pairs.csv", [(NAMES[0], NAMES[1]), (NAMES[1], NAMES[2]), (NAMES[3], NAMES[0])])
    casd_main(["generate", "--checkpoint", str(checkpoint), "--data-root", str(data_root), "--pairs",
               str(tmp_path / "pairs.csv"), "--mix", NAMES[2], "--alpha", "0.5", "--regions", "head",
               "--no-strip", "--out", str(tmp_path / "out")])
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_cli_errors_one_line_each(checkpoint, data_root, tmp_path, capsys):
    base = ["--checkpoint", str(checkpoint), "--data-root", str(data_root), "--out", str(tmp_path / "o")]
    err = _run([*base, "--source", "nobody.jpg", "--pose", NAMES[1]], capsys)
    assert "nobody.jpg: no prepared image" in err and len(err.splitlines()) == 1
    err = _run([*base, "--source", NAMES[0], "--pose", NAMES[1], "--swap", f"shirt={NAMES[2]}"], capsys)
    assert "unknown region 'shirt'" in err and "upper_clothes" in err
    bad_pose = tmp_path / "pose.json"
    bad_pose.write_text(json.dumps([[3, 4]] * 16))
    err = _run([*base, "--source", NAMES[0], "--pose", str(bad_pose)], capsys)
    assert f"{bad_pose}: expected 18" in err and "got 16" in err
    err = _run([*base, "--source", NAMES[0], "--pose", NAMES[1], "--mix", NAMES[2], "--alpha", "2"], capsys)
    assert "--alpha" in err
    assert not (tmp_path / "o").exists()


def test_cli_checkpoint_of_another_configuration(checkpoint, data_root, tmp_path, capsys):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"image_size": list(SIZE)},
                                      "model": {"width": 32, "vgg_weights": "none"}}))
    base = ["--checkpoint", str(checkpoint), "--data-root", str(data_root), "--source", NAMES[0],
            "--pose", NAMES[1], "--out", str(tmp_path / "o")]
    err = _run([*base, "--params", str(params)], capsys)
    assert "checkpoint made for other settings" in err and "model.width: checkpoint 16, params 32" in err
    params.write_text(yaml.safe_dump({"data": {"image_size": [64, 44]}}))
    err = _run([*base, "--params", str(params)], capsys)
    assert "data.image_size: checkpoint [32, 24], params [64, 44]" in err
    # a state dict that is no generator: the file and the first key it lacks are named
    torch.save({"dec.fc.fc.weight": torch.zeros(2, 2)}, tmp_path / "latest_net_netG.pth")
    err = _run(["--checkpoint", str(tmp_path / "latest_net_netG.pth"), "--source", NAMES[0], "--pose", NAMES[1]],
               capsys)
    assert f"{tmp_path / 'latest_net_netG.pth'}: not a CASD generator state dict: no enc_content" in err


def test_strip_scale_and_captions():
    panels = [np.full((*SIZE, 3), v, np.uint8) for v in (0, 128, 255)]
    plain = visuals.make_strip(panels, gap=2)
    assert plain.shape == (SIZE[0], 3 * SIZE[1] + 2 * 2, 3)
    assert (plain[:, SIZE[1]:SIZE[1] + 2] == 255).all()  # white gap
    big = visuals.make_strip(panels, gap=2, scale=3, labels=["source", "pose", "result"])
    assert big.shape == (14 + 3 * SIZE[0], 3 * 3 * SIZE[1] + 2 * 2, 3)
    assert (big[14:, :3 * SIZE[1]] == 0).all()
    assert (big[:14] < 255).any()  # some caption ink
