"""Generator, discriminator and VGG: shapes, the style tokens, and equivalence with upstream CASD."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from casd.checkpoints import load_checkpoint, load_upstream_generator
from casd.errors import ConfigError, WeightsError
from casd.models.discriminator import Discriminator
from casd.models.generator import GeneratorConfig
from casd.models.vgg import VGG19Features
from casd.models.generator import adaptive_instance_norm, attention_modulated_norm, upsample_conv5
from casd.checkpoints import upstream_names
from helpers import tiny_generator
from upstream_rules import (CASES, GRADIENT_CASE, GRADIENT_KEYS, gradient_objective, reference_shapes, rule_inputs,
                            rule_state_dict)

FIXTURE = Path(__file__).parent / "fixtures" / "upstream_equivalence.pt"




@pytest.mark.parametrize("height,width", [(32, 24), (64, 44), (48, 36)])
def test_shapes_at_several_sizes(height, width):
    g = tiny_generator()
    pose, image, parsing = rule_inputs(2, height, width, seed=3)
    out, attns = g(pose, image, parsing)
    assert out.shape == (2, 3, height, width)
    assert len(attns) == 2 and all(a.shape == (2, 8, height // 4, width // 4) for a in attns)
    assert out.abs().max() <= 1
    tokens = g.encode_style(image, parsing)
    assert tokens.shape == (2, 8, 16)
    out2, attns2 = g.decode(pose, tokens)
    torch.testing.assert_close(out2, out)


def test_backward_reaches_trainable_parameters_only():
    g = tiny_generator()
    pose, image, parsing = rule_inputs(2, 32, 24, seed=4)
    for block in g.decoder.style_distribution:  # gammas start at zero: make the attention paths matter
        torch.nn.init.constant_(block.gamma_cross, 0.5)
    out, attns = g(pose, image, parsing)
    (out.mean() + sum(a.mean() for a in attns)).backward()
    assert all(p.grad is None for p in g.style_encoder.vgg.parameters())
    assert not any(p.requires_grad for p in g.style_encoder.vgg.parameters())
    assert g.pose_encoder.down1.down.weight.grad.abs().sum() > 0
    assert g.style_encoder.fuse.weight.grad.abs().sum() > 0


def test_batch_statistics_couple_samples_unless_per_sample():
    pose, image, parsing = rule_inputs(3, 32, 24, seed=6)
    batch_model = tiny_generator()
    sample_model = tiny_generator(modulated_norm="sample")
    sample_model.load_state_dict(batch_model.state_dict())
    with torch.no_grad():
        alone = torch.cat([batch_model(pose[i:i + 1], image[i:i + 1], parsing[i:i + 1])[0] for i in range(3)])
        together_batch = batch_model(pose, image, parsing)[0]
        together_sample = sample_model(pose, image, parsing)[0]
    torch.testing.assert_close(together_sample, alone, atol=1e-5, rtol=1e-5)
    assert (together_batch - alone).abs().max() > 1e-3  # upstream's norm shares statistics across the batch
    with torch.no_grad():  # the same switch on a built generator: its config, nothing else
        switched = batch_model.set_modulated_norm("sample")(pose, image, parsing)[0]
    assert switched is not None and batch_model.config.modulated_norm == "sample"
    torch.testing.assert_close(switched, alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="modulated_norm"):
        GeneratorConfig(modulated_norm="instance")
    with pytest.raises(ConfigError, match="modulated_norm"):
        batch_model.set_modulated_norm("instance")


def test_size_not_divisible_by_4_is_refused():
    g = tiny_generator()
    pose, image, parsing = rule_inputs(1, 30, 24, seed=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        g(pose, image, parsing)


def test_style_tokens_are_region_means_with_global_fallback():
    g = tiny_generator()
    pose, image, parsing = rule_inputs(2, 64, 48, seed=5, empty_regions=((2, 7), ()))
    tokens = g.encode_style(image, parsing)
    features = g.style_encoder.features(image)                                 # [B,C,8,6]
    masks = F.interpolate(parsing, size=features.shape[2:], mode="nearest")
    for b in range(2):
        for k in range(8):
            inside = masks[b, k] > 0
            if inside.any():
                expected = features[b][:, inside].mean(dim=1)
            else:
                expected = features[b].mean(dim=(1, 2))
            torch.testing.assert_close(tokens[b, k], expected, atol=1e-6, rtol=1e-5)
    # sample 0 has regions 2 and 7 empty: both fall back to the same global average
    assert masks[0, 2].sum() == 0 and masks[0, 7].sum() == 0
    torch.testing.assert_close(tokens[0, 2], tokens[0, 7])


def test_norm_quirks():
    x = torch.randn(2, 3, 5, 4)
    params = torch.randn(2, 6)
    mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * params[:, :3, None, None] + params[:, 3:, None, None]
    torch.testing.assert_close(adaptive_instance_norm(x, params), expected, atol=1e-5, rtol=1e-5)
    modulation = torch.randn(2, 6, 5, 4)
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), keepdim=True)
    expected = (x - mean) / (var + 1e-6) * (1 + modulation[:, :3]) + modulation[:, 3:]
    torch.testing.assert_close(attention_modulated_norm(x, modulation), expected)


@pytest.mark.parametrize("shape", [(2, 6, 5, 3), (1, 4, 2, 2), (1, 3, 4, 7)])
def test_phase_decomposed_upsample_conv_equals_the_plain_one(shape):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(shape[1], 5, 5, padding=2, padding_mode="reflect")
    x = torch.randn(shape, requires_grad=True)
    plain = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    fast = upsample_conv5(x, conv)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(fast, [x, conv.weight, conv.bias], grad),
                    torch.autograd.grad(plain, [x, conv.weight, conv.bias], grad)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_upstream_init():
    g = tiny_generator()
    assert all(b.gamma_cross.item() == 0 and b.gamma_ffn.item() == 0 and b.gamma_token_attention.item() == 0
               for b in g.decoder.style_distribution)
    w = torch.cat([g.decoder.adain_mlp[2].weight.flatten(), g.decoder.style_fusion.weight.flatten()])
    assert abs(w.std().item() - 0.02) < 0.003 and abs(w.mean().item()) < 0.003


def test_config_validation_and_weights_rule(tmp_path):
    with pytest.raises(ConfigError, match="width"):
        GeneratorConfig(width=18)
    with pytest.raises(ConfigError, match="adain_blocks"):
        GeneratorConfig(adain_blocks=0)
    with pytest.warns(UserWarning, match="RANDOM"):
        vgg = VGG19Features("relu1_1", "none")
    assert not vgg.pretrained
    missing = tmp_path / "nowhere" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(WeightsError) as e:
        VGG19Features("relu1_1", str(missing))
    assert "vgg19-dcbb9e9d.pth" in str(e.value) and str(missing) in str(e.value)


def test_vgg_taps_stop_at_the_deepest_layer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vgg = VGG19Features("relu3_1", "none")
    out = vgg(torch.randn(1, 3, 32, 24), ["relu1_1", "relu3_1"])
    assert out["relu1_1"].shape == (1, 64, 32, 24) and out["relu3_1"].shape == (1, 256, 8, 6)
    assert (out["relu1_1"] >= 0).all()
    with pytest.raises(ValueError):
        vgg(torch.randn(1, 3, 32, 24), ["relu4_1"])


def test_discriminators():
    d_pb, d_pp = Discriminator(33), Discriminator(6)
    assert [tuple(p.shape) for p in d_pb.state_dict().values()] == [(64, 33, 7, 7), (64,), (128, 64, 3, 3), (128,),
                                                                    (256, 128, 3, 3), (256,)]
    assert list(d_pb.state_dict()) == ["model.1.weight", "model.1.bias", "model.4.weight", "model.4.bias",
                                       "model.7.weight", "model.7.bias"]
    assert d_pp.model[1].weight.shape == (64, 6, 7, 7)
    scores = d_pb(torch.randn(2, 33, 32, 24))
    assert scores.shape == (2, 256, 8, 6) and (scores >= 0).all()


# ------------------------------------------------------------------ equivalence with upstream ADGen


@pytest.fixture(scope="module")
def upstream_fixture():
    return load_checkpoint(FIXTURE)


@pytest.fixture(scope="module")
def rule_generator(upstream_fixture):
    shapes = reference_shapes()
    assert list(shapes) == upstream_fixture["keys"]  # the tsv and the upstream module list the same keys
    return load_upstream_generator(rule_state_dict(shapes))


@pytest.mark.parametrize("case,mode", [("256x176", "eval"), ("256x176", "train"), ("64x44", "eval"),
                                       ("64x44", "train")])
def test_equivalence_with_upstream(upstream_fixture, rule_generator, case, mode):
    """Same weights (upstream_rules rule) and inputs -> upstream's image and attention maps within 1e-4 (float32, CPU).

    Cases include empty regions (upstream_rules.CASES); see tests/upstream_rules.py for how the fixture was made.
    """
    fixture = upstream_fixture["cases"][case]
    batch, height, width, seed, empty = CASES[case]
    assert fixture["inputs"] == (batch, height, width, seed, empty)
    pose, image, parsing = rule_inputs(batch, height, width, seed, empty)
    checksums = torch.tensor([[t.double().sum().item(), t.double().square().sum().item()]
                              for t in (pose, image, parsing)])
    torch.testing.assert_close(checksums, fixture["input_checksums"], rtol=1e-9, atol=1e-6)
    assert any(parsing[b, k].sum() == 0 for b in range(batch) for k in range(8))  # empty regions are exercised

    rule_generator.train(mode == "train")
    with torch.no_grad():
        tokens = rule_generator.encode_style(image, parsing)
        out, attns = rule_generator.decode(pose, tokens)
    assert (tokens - fixture["tokens"]).abs().max() < 1e-4
    assert (out - fixture["image"]).abs().max() < 1e-4
    for mine, theirs in zip(attns, fixture["attention"], strict=True):
        assert (mine - theirs).abs().max() < 1e-4
    assert fixture["image"].std() > 0.1  # the comparison is not between near-constant images


def test_gradient_equivalence_with_upstream(upstream_fixture, rule_generator):
    """Backward too: gradients of the same scalar w.r.t. parameters on every path match upstream's."""
    expected = upstream_fixture["cases"][GRADIENT_CASE]["gradients"]
    assert sorted(expected) == sorted(GRADIENT_KEYS)
    own_name = {up: own for own, up in upstream_names(rule_generator.config).items()}
    params = dict(rule_generator.named_parameters())
    batch, height, width, seed, empty = CASES[GRADIENT_CASE]
    pose, image, parsing = rule_inputs(batch, height, width, seed, empty)
    rule_generator.train()
    rule_generator.zero_grad(set_to_none=True)
    try:
        gradient_objective(*rule_generator(pose, image, parsing)).backward()
        checked = 0
        for key, theirs in expected.items():
            if key not in own_name:  # declared-but-unused upstream parameter: no counterpart, no gradient
                assert theirs is None, key
                continue
            mine = params[own_name[key]].grad
            if theirs is None:  # e.g. the key path of the attention, detached upstream
                assert mine is None or not mine.any(), key
                continue
            # gradients are sums over every position: float32 rounding differs more than in the forward pass
            # (measured: <= 1.1e-5 absolute for gradients of magnitude 1e-3 .. 0.2)
            assert (mine - theirs).abs().max().item() <= 2e-5 + 1e-2 * theirs.abs().max().item(), key
            checked += 1
        assert checked >= 20
        mlp_bias = params[own_name["dec.mlp.model.2.fc.bias"]].grad
        assert not mlp_bias[mlp_bias.numel() // 2:].any()  # the modulated blocks' AdaIN slice is never read
    finally:
        rule_generator.zero_grad(set_to_none=True)
        rule_generator.eval()


def test_region_colour_adds_the_full_resolution_colour_of_a_region_lost_on_the_token_grid():
    # a one-pixel-wide column of region 6 (arms) at x = 5: the H/8 grid of a 32x24 input does not sample it,
    # so its token falls back to the global mean; region_colour adds a map of the column's own colour
    from casd.checkpoints import export_upstream_state_dict

    parsing = torch.zeros(1, 8, 32, 24)
    parsing[:, 0] = 1
    parsing[:, 0, :, 5], parsing[:, 6, :, 5] = 0, 1
    red, blue = torch.zeros(1, 3, 32, 24), torch.zeros(1, 3, 32, 24)
    red[:, 0, :, 5], blue[:, 2, :, 5] = 1, 1
    plain, coloured = tiny_generator(), tiny_generator(region_colour=True)
    missing, unexpected = coloured.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["style_encoder.colour.bias", "style_encoder.colour.weight"] and not unexpected
    with torch.no_grad():
        plain_diff = plain.encode_style(red, parsing)[0, 6] - plain.encode_style(blue, parsing)[0, 6]
        coloured_diff = coloured.encode_style(red, parsing)[0, 6] - coloured.encode_style(blue, parsing)[0, 6]
        colour_map = coloured.style_encoder.colour.weight @ torch.tensor([1.0, 0.0, -1.0])
    torch.testing.assert_close(coloured_diff - plain_diff, colour_map, atol=1e-6, rtol=1e-5)
    assert colour_map.abs().max() > 1e-3
    with pytest.raises(ConfigError, match="region_colour"):
        export_upstream_state_dict(coloured)
    with pytest.raises(ConfigError, match="region_colour"):
        GeneratorConfig(region_colour=1)


def test_area_token_pooling_keeps_a_region_thinner_than_the_token_grid():
    # region 6 covers a 2-pixel column (x = 9, 10) of a 32x24 input: nearest sampling of the 4x3 grid (x = 0, 8,
    # 16) misses it, so upstream's token is the global mean; area pooling weights each cell by its coverage
    parsing = torch.zeros(1, 8, 32, 24)
    parsing[:, 0] = 1
    parsing[:, 0, :, 9:11], parsing[:, 6, :, 9:11] = 0, 1
    image = torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    nearest, area = tiny_generator(), tiny_generator(token_pooling="area")
    area.load_state_dict(nearest.state_dict())
    with torch.no_grad():
        features = nearest.style_encoder.features(image)                       # [1,C,4,3]
        global_mean = features.mean(dim=(2, 3))[0]
        torch.testing.assert_close(nearest.encode_style(image, parsing)[0, 6], global_mean)
        # cells of column 1 (x 8..15) hold 2 of 8 columns of region 6: weight 0.25 each, so the token is
        # the mean of that grid column's features
        torch.testing.assert_close(area.encode_style(image, parsing)[0, 6], features[0, :, :, 1].mean(dim=1))
        background = area.encode_style(image, parsing)[0, 0]
        weights = 1 - F.adaptive_avg_pool2d(parsing[:, 6:7], (4, 3))[0, 0]
        torch.testing.assert_close(background, (features[0] * weights).sum(dim=(1, 2)) / weights.sum())
    with pytest.raises(ConfigError, match="token_pooling"):
        GeneratorConfig(token_pooling="bilinear")


def test_a_style_encoder_without_vgg_has_no_frozen_features_and_is_not_exported_upstream():
    from casd.checkpoints import export_upstream_state_dict

    generator = tiny_generator(style_vgg=False)
    assert generator.style_encoder.vgg is None
    assert not any("vgg" in name for name, _ in generator.named_parameters())
    assert generator.vgg_pretrained  # nothing random to warn about
    assert generator.style_encoder.down1.in_channels == 8  # own convs only (tiny style_width 8)
    image, parsing = torch.rand(2, 3, 32, 24) * 2 - 1, F.one_hot(torch.randint(0, 8, (2, 32, 24)), 8)
    tokens = generator.encode_style(image, parsing.permute(0, 3, 1, 2).float())
    assert tokens.shape == (2, 8, 16) and torch.isfinite(tokens).all()
    with pytest.raises(ConfigError, match="style_vgg"):
        export_upstream_state_dict(generator)
    with pytest.raises(ConfigError, match="style_vgg"):
        GeneratorConfig(style_vgg="no")


@pytest.mark.parametrize("init", ["upstream", "fan_in"])
def test_init_scales_weights_as_named(init):
    generator = tiny_generator(init=init)
    conv = generator.decoder.adain_blocks[0].conv1                               # 3x3 on width 16: fan_in 144
    fc = generator.decoder.adain_mlp[2]                                          # mlp_width 16 -> 16
    expected = {"upstream": (0.02, 0.02), "fan_in": (144 ** -0.5, 16 ** -0.5)}[init]
    assert conv.weight.std().item() == pytest.approx(expected[0], rel=0.1)
    assert fc.weight.std().item() == pytest.approx(expected[1], rel=0.25)
    vgg = generator.style_encoder.vgg.layers[0].weight
    assert vgg.std().item() != pytest.approx(expected[0], rel=0.1)  # the frozen VGG keeps its own init
    with pytest.raises(ConfigError, match=r"\[model\]: init must be one of upstream, fan_in"):
        GeneratorConfig(init="xavier")
