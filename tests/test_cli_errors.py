"""Bad input to the ``casd`` commands: one line on stderr naming the thing and the problem, no traceback.

One row per case: ``row(id, argv, expected fragment, setup=None, code=1)``. ``argv`` and the fragment may
name ``{tmp}`` (the test's folder), ``{ckpt}`` (a tiny project generator.pt at 32x24), ``{upstream}`` (the
same generator as upstream's latest_net_netG.pth), ``{data}`` (prepared data at 32x24 of the images in
NAMES); ``setup(tmp, world)`` writes what the row needs under ``tmp``. Add a row to add a case.
"""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from casd.checkpoints import export_upstream_state_dict, load_checkpoint, save_checkpoint
from casd.cli import main as casd_main
from casd.data.images import REGION_NAMES
from helpers import save_tiny_generator, tiny_generator

SIZE = (32, 24)
NAMES = [f"fashionWOMENDressesid000000{i:02d}01_1front.jpg" for i in range(3)]


def row(id_: str, argv: str, expected: str, setup=None, code: int = 1, marks=()):
    return pytest.param(argv.split(), expected, setup, code, id=id_, marks=marks)


# --------------------------------------------------------------------------- setups

def _text_file(tmp, world):
    (tmp / "notes.txt").write_text("hello world\nthis is not a checkpoint\n")


def _pickled_list(tmp, world):
    save_checkpoint(tmp / "list.pt", [torch.zeros(1)])


def _empty_file(tmp, world):
    (tmp / "empty.pt").write_bytes(b"")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def _malicious(protocol):
    def setup(tmp, world):
        with open(tmp / "evil.pth", "wb") as f:
            pickle.dump({"weight": _Payload()}, f, protocol=protocol)
    return setup


def _checkpoint_with(**changes):
    def setup(tmp, world):
        save_checkpoint(tmp / "changed.pt", {**world.state, **changes})
    return setup


def _missing_key(tmp, world):
    weights = dict(world.state["generator"])
    del weights["decoder.to_image.bias"]
    save_checkpoint(tmp / "missing.pt", {**world.state, "generator": weights})


def _upstream_missing_key(tmp, world):
    state = torch.load(world.upstream, weights_only=True)
    del state["dec.model2.0.conv.bias"]
    torch.save(state, tmp / "latest_net_netG.pth")


def _pose_json(keypoints, size=None):
    def setup(tmp, world):
        body = keypoints + [[1, 1]] * (18 - len(keypoints))
        (tmp / "pose.json").write_text(json.dumps(body if size is None else {"size": size, "keypoints": body}))
    return setup


def _file_named_out(tmp, world):
    (tmp / "out").write_text("a file, not a folder")


def _existing_destination(tmp, world):
    (tmp / "upstream.pt").write_bytes(b"keep me")


def _parsing_of_another_shape(tmp, world):
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(tmp / "photo.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp / "square.png")


GENERATE = "generate --checkpoint {ckpt} --data-root {data} --out {tmp}/o"
PAIR = f"--source {NAMES[0]} --pose {NAMES[1]}"
TORCH_CUDA = torch.cuda.is_available()

CASES = [
    # casd generate: arguments
    row("generate-out-is-a-file", f"generate --checkpoint {{ckpt}} --data-root {{data}} {PAIR} --out {{tmp}}/out",
        "{tmp}/out: --out must be a folder", _file_named_out),
    row("generate-batch-size-0", f"{GENERATE} {PAIR} --batch-size 0", "--batch-size must be >= 1, got 0"),
    row("generate-device-banana", f"{GENERATE} {PAIR} --device banana",
        "device 'banana': expected auto, cpu, cuda or cuda:N"),
    row("generate-device-cuda-without-gpu", f"{GENERATE} {PAIR} --device cuda",
        "device 'cuda' requested but CUDA is not available", marks=pytest.mark.skipif(TORCH_CUDA, reason="GPU")),
    row("generate-alpha-without-mix", f"{GENERATE} {PAIR} --alpha 0.3", "--alpha applies to --mix"),
    # casd generate: checkpoint files
    row("generate-text-checkpoint", f"generate --checkpoint {{tmp}}/notes.txt --data-root {{data}} {PAIR}",
        "{tmp}/notes.txt: not a PyTorch checkpoint", _text_file),
    row("generate-pickled-list", f"generate --checkpoint {{tmp}}/list.pt --data-root {{data}} {PAIR}",
        "{tmp}/list.pt: not a generator file: it holds a list", _pickled_list),
    row("generate-empty-checkpoint", f"generate --checkpoint {{tmp}}/empty.pt --data-root {{data}} {PAIR}",
        "{tmp}/empty.pt: the checkpoint file is empty", _empty_file),
    row("generate-malicious-pickle-protocol-2", f"generate --checkpoint {{tmp}}/evil.pth --data-root {{data}} {PAIR}",
        "{tmp}/evil.pth: refused: it holds a Python object (builtins.print)", _malicious(2)),
    row("generate-malicious-pickle-protocol-4", f"generate --checkpoint {{tmp}}/evil.pth --data-root {{data}} {PAIR}",
        "{tmp}/evil.pth: refused: it holds a Python object (builtins.print)", _malicious(4)),
    row("generate-image-size-not-divisible-by-4",
        f"generate --checkpoint {{tmp}}/changed.pt --data-root {{data}} {PAIR}",
        "{tmp}/changed.pt: image_size must be [H, W] divisible by 4 (the generator down-samples twice), got [63, 45]",
        _checkpoint_with(image_size=[63, 45])),
    row("generate-state-dict-key-missing", f"generate --checkpoint {{tmp}}/missing.pt --data-root {{data}} {PAIR}",
        "{tmp}/missing.pt: generator weights do not fit the file's own model configuration: "
        "missing 1: decoder.to_image.bias", _missing_key),
    row("generate-checkpoint-of-another-frame", f"generate --checkpoint {{tmp}}/changed.pt --data-root {{data}} {PAIR}",
        "the generator works at 64x48 but the prepared data is 32x24", _checkpoint_with(image_size=[64, 48])),
    # casd generate: pose and parsing inputs
    row("generate-keypoint-10e30", f"{GENERATE} --source {NAMES[0]} --pose {{tmp}}/pose.json",
        f"{{tmp}}/pose.json: keypoint 0 (y={10 ** 30}, x=3) is outside the 32x24 frame", _pose_json([[10 ** 30, 3]])),
    row("generate-keypoint-outside-declared-frame", f"{GENERATE} --source {NAMES[0]} --pose {{tmp}}/pose.json",
        "{tmp}/pose.json: keypoint 0 (y=70, x=3) is outside the 64x44 frame", _pose_json([[70, 3]], [64, 44])),
    row("generate-keypoint-negative-not-missing", f"{GENERATE} --source {NAMES[0]} --pose {{tmp}}/pose.json",
        "{tmp}/pose.json: keypoint 0 is [-5, 3]: coordinates are >= 0, or -1 for a missing joint",
        _pose_json([[-5, 3]])),
    row("generate-parsing-of-another-aspect-ratio",
        f"{GENERATE} --source {{tmp}}/photo.png --parsing {{tmp}}/square.png --pose {NAMES[1]}",
        "{tmp}/square.png: parsing map is 32x32, another shape than the 32x24 images", _parsing_of_another_shape),
    # casd import-checkpoint
    row("import-text-file", "import-checkpoint {tmp}/notes.txt {tmp}/out.pt",
        "{tmp}/notes.txt: not a PyTorch checkpoint", _text_file),
    row("import-malicious-pickle", "import-checkpoint {tmp}/evil.pth {tmp}/out.pt",
        "{tmp}/evil.pth: refused: it holds a Python object (builtins.print)", _malicious(2)),
    row("import-empty-file", "import-checkpoint {tmp}/empty.pt {tmp}/out.pt",
        "{tmp}/empty.pt: the checkpoint file is empty", _empty_file),
    row("import-upstream-key-missing", "import-checkpoint {tmp}/latest_net_netG.pth {tmp}/out.pt",
        "{tmp}/latest_net_netG.pth: does not match the CASD generator", _upstream_missing_key),
    row("import-source-is-destination", "import-checkpoint {upstream} {upstream}",
        "{upstream}: the destination is the generator file being imported"),
    row("import-image-size-not-divisible-by-4", "import-checkpoint {upstream} {tmp}/out.pt --image-size 63 45",
        "--image-size 63 45: must be [H, W] divisible by 4"),
    row("import-existing-destination", "import-checkpoint {upstream} {tmp}/upstream.pt",
        "{tmp}/upstream.pt: already exists; pass --force to overwrite it", _existing_destination),
    # casd test
    row("test-batch-size-0", "test --batch-size 0", "--batch-size must be >= 1, got 0"),
    row("test-device-banana", "test --device banana", "device 'banana': expected auto, cpu, cuda or cuda:N"),
]


# --------------------------------------------------------------------------- the world the rows run in

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    data = root / "data"
    for sub in ("resized/test", "parsing/test", "pose"):
        (data / sub).mkdir(parents=True)
    for name in NAMES:
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(data / "resized/test" / name)
        ids = rng.integers(0, len(REGION_NAMES), SIZE, dtype=np.uint8)
        Image.fromarray(ids).save(data / "parsing/test" / name.replace(".jpg", ".png"))
    keypoints = np.stack([np.stack([rng.integers(0, SIZE[0], 18), rng.integers(0, SIZE[1], 18)], axis=1)
                          for _ in NAMES]).astype(np.int16)
    np.savez(data / "pose/test.npz", names=np.array(NAMES), keypoints=keypoints)
    generator = tiny_generator()
    state = load_checkpoint(save_tiny_generator(root / "generator.pt", generator, SIZE))
    torch.save(export_upstream_state_dict(generator), root / "latest_net_netG.pth")
    return SimpleNamespace(data=data, ckpt=root / "generator.pt", upstream=root / "latest_net_netG.pth", state=state)


@pytest.mark.parametrize("argv, expected, setup, code", CASES)
def test_bad_input_is_one_line(argv, expected, setup, code, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    if setup is not None:
        setup(tmp_path, world)
    names = dict(tmp=tmp_path, ckpt=world.ckpt, data=world.data, upstream=world.upstream)
    with pytest.raises(SystemExit) as stop:
        casd_main([arg.format(**names) for arg in argv])
    err = capsys.readouterr().err
    assert stop.value.code == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert expected.format(**names) in lines[0]
    assert not (tmp_path / "o").exists()  # nothing written
