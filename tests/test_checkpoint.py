"""Checkpoint save / load, and the upstream generator import: name table, strict checks, refusals."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from casd.checkpoints import (CheckpointMismatch, convert_upstream_state_dict, export_upstream_state_dict,
                             load_checkpoint, load_upstream_generator, save_checkpoint, upstream_names,
                             upstream_unused)
from casd.errors import DataError
from casd.models.generator import Generator, GeneratorConfig
from upstream_rules import reference_shapes, rule_inputs



def meta_generator(config: GeneratorConfig) -> Generator:
    with torch.device("meta"):
        return Generator(config, pretrained_vgg=False)


@pytest.fixture(scope="module")
def tiny_upstream():
    """(tiny config, an upstream-named state dict for it, the generator it came from)."""
    torch.manual_seed(0)
    config = GeneratorConfig.tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = Generator(config).eval()
    for block in g.decoder.style_distribution:
        torch.nn.init.constant_(block.gamma_cross, 0.7)
    return config, export_upstream_state_dict(g), g


def test_name_table_covers_the_reference_key_list_exactly():
    """Own keys -> upstream names (+ the documented unused entries) = netG_state_dict.tsv, shape for shape."""
    config = GeneratorConfig()
    own = {k: tuple(v.shape) for k, v in meta_generator(config).state_dict().items()}
    names = upstream_names(config)
    assert set(names) == set(own)
    assert len(set(names.values())) == len(names)  # one-to-one
    mapped = {names[k]: shape for k, shape in own.items()}
    unused = upstream_unused(config)
    assert not set(mapped) & set(unused)
    reference = reference_shapes()
    assert len(reference) == 214
    assert {**mapped, **unused} == reference
    assert sum(torch.Size(s).numel() for s in reference.values()) == 58_514_071


def test_some_names_spelled_out():
    names = upstream_names(GeneratorConfig())
    assert names["style_encoder.vgg.layers.19.weight"] == "enc_style.vgg.19.weight"
    assert names["style_encoder.fuse.weight"] == "enc_style.model0.0.weight"
    assert names["pose_encoder.down1.norm_in.weight"] == "enc_content.block0.model.0.weight"
    assert names["decoder.adain_mlp.4.weight"] == "dec.mlp.model.2.fc.weight"
    assert names["decoder.modulated_blocks.0.modulation2.3.bias"] == "dec.model0_4.0.models2.1.conv.bias"
    assert names["decoder.style_distribution.1.gamma_token_attention"] == "dec.gamma4_style_sa"
    assert names["decoder.style_distribution.0.pose_logits.weight"] == "dec.query3_conv_0.weight"
    assert names["decoder.upsample.1.norm.gamma"] == "dec.model1.3.norm.gamma"


def test_import_round_trip_and_dataparallel_prefix(tiny_upstream, tmp_path):
    config, state, original = tiny_upstream
    pose, image, parsing = rule_inputs(2, 32, 24, seed=7, empty_regions=((), (2,)))
    with torch.no_grad():
        expected, _ = original(pose, image, parsing)
    overrides = {k: v for k, v in vars(config).items() if k != "vgg_weights"}
    path = save_checkpoint(tmp_path / "latest_net_netG.pth", {f"module.{k}": v for k, v in state.items()})
    for source in (path, state):
        g = load_upstream_generator(source, **overrides)
        assert not g.training and g.vgg_pretrained
        with torch.no_grad():
            out, attns = g(pose, image, parsing)
        torch.testing.assert_close(out, expected)


def test_strict_check_lists_every_problem_in_one_error(tiny_upstream):
    config, state, _ = tiny_upstream
    bad = dict(state)
    del bad["dec.FFN3_1.fc1.weight"]
    del bad["enc_style.conv1.conv.bias"]
    bad["dec.some_new_layer.weight"] = torch.zeros(3)
    bad["dec.model2.0.conv.weight"] = torch.zeros(3, 5, 7, 7)
    bad["dec.model0_0.0.model1.0.norm.running_mean"] = torch.zeros(7)  # unused entries are shape-checked too
    with pytest.raises(CheckpointMismatch) as e:
        convert_upstream_state_dict(bad, config, "latest_net_netG.pth")
    message = str(e.value)
    assert message.startswith("latest_net_netG.pth: ")
    for expected in ("missing 2", "dec.FFN3_1.fc1.weight", "enc_style.conv1.conv.bias", "unexpected 1",
                     "dec.some_new_layer.weight", "mis-shaped 2",
                     "dec.model2.0.conv.weight (3, 5, 7, 7) != (3, 4, 7, 7)",
                     "running_mean (7,) != (16,)"):
        assert expected in message
    assert "\n" not in message


def test_non_tensor_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": Payload()}, f)
    with pytest.raises(DataError, match="refused"):
        load_checkpoint(path)
    with pytest.raises(DataError, match="refused"):
        load_upstream_generator(path)
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    save_checkpoint(tmp_path / "list.pth", [torch.zeros(1)])
    with pytest.raises(DataError, match="expected a state dict"):
        load_upstream_generator(tmp_path / "list.pth")
    with pytest.raises(DataError, match="non-tensor"):
        load_upstream_generator({"enc_style.conv1.conv.weight": 3})


def test_save_is_atomic_and_loads_back(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    obj = {"step": 3, "weights": {"a": torch.arange(4.0)}, "names": ["x"]}
    save_checkpoint(path, obj)
    back = load_checkpoint(path)
    assert back["step"] == 3 and torch.equal(back["weights"]["a"], obj["weights"]["a"])
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary left behind

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"x": Unsaveable()})
    assert torch.equal(load_checkpoint(path)["weights"]["a"], obj["weights"]["a"])  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]
