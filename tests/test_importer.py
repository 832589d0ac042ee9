"""casd import-checkpoint and the one generator loader: upstream state dicts -> project checkpoint -> same outputs."""

from __future__ import annotations

import warnings

import pytest
import torch

from casd import checkpoints as importer
from casd.checkpoints import export_upstream_state_dict, load_checkpoint, load_generator
from casd.cli import main as casd_main
from casd.errors import CasdError, DataError
from casd.inference import Synthesizer
from casd.models.discriminator import Discriminator
from casd.models.generator import Generator, GeneratorConfig

SIZE = (32, 24)



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory):
    """A tiny generator of non-default widths and two discriminators, saved the way upstream saves them."""
    folder = tmp_path_factory.mktemp("upstream")
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generator = Generator(GeneratorConfig.tiny(width=12, pose_width=4, mlp_width=20, adain_blocks=1,
                                                   modulated_blocks=3)).eval()
    with torch.no_grad():  # non-zero attention gammas, so that every path of the decoder is exercised
        for name, param in generator.named_parameters():
            if "gamma_" in name:
                param.fill_(0.5)
    state = export_upstream_state_dict(generator)
    # upstream trained with nn.DataParallel, which prefixes every key
    torch.save({f"module.{k}": v for k, v in state.items()}, folder / "latest_net_netG.pth")
    d_pb, d_pp = Discriminator(33, width=8), Discriminator(6, width=8)
    torch.save(d_pb.state_dict(), folder / "latest_net_netD_PB.pth")
    torch.save(d_pp.state_dict(), folder / "latest_net_netD_PP.pth")
    return folder, generator, d_pb, d_pp


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    pose = torch.rand(1, 30, *SIZE, generator=g)
    image = torch.rand(1, 3, *SIZE, generator=g) * 2 - 1
    parsing = torch.nn.functional.one_hot(torch.randint(0, 8, (1, *SIZE), generator=g), 8).permute(0, 3, 1, 2)
    return pose, image, parsing.float()


def test_round_trip_same_outputs_and_config(upstream_files, tmp_path, capsys):
    folder, generator, d_pb, d_pp = upstream_files
    out = tmp_path / "imported.pt"
    casd_main(["import-checkpoint", str(folder / "latest_net_netG.pth"), str(out),
               "--netD-PB", str(folder / "latest_net_netD_PB.pth"),
               "--netD-PP", str(folder / "latest_net_netD_PP.pth"), "--image-size", *map(str, SIZE)])
    printed = capsys.readouterr().out
    total = sum(p.numel() for p in generator.parameters())
    assert f"{total:,} values" in printed and "width=12" in printed and "adain_blocks=1" in printed

    found = load_generator(out)
    loaded = found.generator
    for field in ("width", "pose_width", "mlp_width", "adain_blocks", "modulated_blocks", "style_width"):
        assert getattr(found.config, field) == getattr(generator.config, field)
    assert found.image_size == SIZE and found.pose_mode == "onehot" and found.format == "casd-generator"
    pose, image, parsing = _inputs()
    with torch.no_grad():
        expected, expected_attention = generator(pose, image, parsing)
        got, got_attention = loaded(pose, image, parsing)
    assert torch.equal(got, expected)
    assert all(torch.equal(a, b) for a, b in zip(got_attention, expected_attention))

    state = load_checkpoint(out)
    x = torch.rand(2, 33, *SIZE)
    restored = Discriminator(**state["discriminator_config"]["d_pb"])
    restored.load_state_dict(state["discriminators"]["d_pb"])
    assert torch.equal(restored(x), d_pb(x))
    assert set(state["discriminators"]) == {"d_pb", "d_pp"}

    # and the Synthesizer reads it (its frame comes from the checkpoint)
    synthesizer = Synthesizer.from_checkpoint(out)
    assert synthesizer.image_size == SIZE and synthesizer.generator.config.width == 12


def test_refuses_anything_but_tensors(tmp_path):
    evil = tmp_path / "latest_net_netG.pth"
    torch.save({"enc_style.model0.0.weight": torch.zeros(1), "hook": Generator}, evil)  # a class: needs unpickling
    with pytest.raises(DataError, match=r"refused: it holds a Python object \(casd.models.generator.Generator\)"):
        importer.import_upstream(evil, tmp_path / "out.pt")
    with pytest.raises(DataError, match="refused"):
        load_generator(evil)
    numbers = tmp_path / "numbers.pth"
    torch.save({"epoch": 3, "enc_style.model0.0.weight": torch.zeros(1)}, numbers)
    with pytest.raises(DataError, match="non-tensor entries epoch"):
        importer.import_upstream(numbers, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_wrong_files_are_clear_errors(upstream_files, tmp_path):
    folder, *_ = upstream_files
    with pytest.raises(DataError, match="is it a discriminator"):
        importer.import_upstream(folder / "latest_net_netD_PB.pth", tmp_path / "out.pt")
    with pytest.raises(DataError, match="swapped"):
        importer.import_upstream(folder / "latest_net_netG.pth", tmp_path / "out.pt",
                                 netd_pb=folder / "latest_net_netD_PP.pth")
    # a generator whose shapes disagree with each other (a truncated / edited file)
    state = importer.load_upstream_file(folder / "latest_net_netG.pth")
    state["dec.fc.fc.weight"] = state["dec.fc.fc.weight"][:, :-1]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CasdError, match="mis-shaped 1: dec.fc.fc.weight"):
        importer.import_upstream(tmp_path / "broken.pth", tmp_path / "out.pt")
    with pytest.raises(DataError, match="not found"):
        importer.import_upstream(tmp_path / "missing.pth", tmp_path / "out.pt")


def test_reference_upstream_shapes_infer_upstream_defaults():
    """The shapes of upstream's released netG (reference netG_state_dict.tsv) give the default configuration."""
    import re
    from pathlib import Path

    tsv = Path(__file__).parent / "fixtures" / "netG_state_dict.tsv"
    state = {}
    for line in tsv.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        state[key] = torch.empty([int(v) for v in re.findall(r"\d+", shape)], device="meta")
    config = importer.infer_generator_config(state)
    assert config == GeneratorConfig(vgg_weights=config.vgg_weights)
