"""Each loss term against a direct computation on tiny tensors; the shared VGG pass; LPIPS vs the lpips package."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from casd.config import from_dict
from casd.errors import ConfigError, WeightsError
from casd.losses import (CONTENT_LAYERS, STYLE_LAYERS, AttentionCrossEntropyLoss, LossConfig, LPIPSLoss,
                         LSGANLoss, VGGFeatureBank, build_losses, contextual_loss, gram_matrix, random_backbones)
from casd.models.vgg import imagenet_normalize


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def terms():
    torch.manual_seed(0)
    return quiet(build_losses, LossConfig(vgg_weights="none", lpips_weights="none"))


@pytest.fixture()
def images():
    g = torch.Generator().manual_seed(1)
    fake = (torch.rand(2, 3, 32, 24, generator=g) * 2 - 1).requires_grad_()
    target = torch.rand(2, 3, 32, 24, generator=g) * 2 - 1
    return fake, target


def test_gram_matrix_by_hand():
    f = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    expected = torch.zeros(2, 3, 3)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                expected[b, i, j] = (f[b, i] * f[b, j]).sum() / (3 * 2 * 2)
    torch.testing.assert_close(gram_matrix(f), expected)


def test_lsgan_targets():
    gan = LSGANLoss()
    p = torch.tensor([[0.0, 1.0], [2.0, 0.5]])
    assert gan(p, True).item() == pytest.approx(((0 - 1) ** 2 + 0 + 1 + 0.25) / 4)
    assert gan(p, False).item() == pytest.approx((0 + 1 + 4 + 0.25) / 4)


def _contextual_by_hand(target, fake, sigma=0.5, b=1.0):
    """Upstream's definition written with loops (one target position j, one generated position i at a time)."""
    mean = target.mean(dim=(0, 2, 3), keepdim=True)
    t, f = target - mean, fake - mean
    losses = []
    for n in range(target.shape[0]):
        tn = [t[n, :, y, x] / t[n, :, y, x].norm() for y in range(t.shape[2]) for x in range(t.shape[3])]
        fn = [f[n, :, y, x] / f[n, :, y, x].norm() for y in range(f.shape[2]) for x in range(f.shape[3])]
        d = [[(1 - float(tj @ fi)) / 2 for fi in fn] for tj in tn]                     # d[j][i]
        cx = [[0.0] * len(fn) for _ in tn]
        for i in range(len(fn)):
            dmin = min(d[j][i] for j in range(len(tn)))
            w = [math.exp((b - d[j][i] / (dmin + 1e-5)) / sigma) for j in range(len(tn))]
            for j in range(len(tn)):
                cx[j][i] = w[j] / sum(w)
        losses.append(-math.log(sum(max(row) for row in cx) / len(tn)))
    return sum(losses) / len(losses)


def test_contextual_loss_by_hand():
    g = torch.Generator().manual_seed(2)
    target, fake = torch.randn(2, 4, 3, 2, generator=g), torch.randn(2, 4, 3, 2, generator=g)
    assert contextual_loss(target, fake).item() == pytest.approx(_contextual_by_hand(target, fake), rel=1e-5)
    # a generated map holding the target's features in another order is a perfect match (CX ignores position)
    shuffled = target.flatten(2)[:, :, torch.randperm(6, generator=g)].view_as(target)
    same = contextual_loss(target, shuffled).item()
    assert same == pytest.approx(contextual_loss(target, target).item(), abs=1e-5)
    assert same < 0.2 < contextual_loss(target, fake).item()


def test_attention_cross_entropy_by_hand():
    g = torch.Generator().manual_seed(3)
    attention = [torch.randn(2, 8, 4, 3, generator=g) for _ in range(2)]
    labels = torch.randint(0, 8, (2, 16, 12), generator=g)
    parsing = F.one_hot(labels, 8).permute(0, 3, 1, 2).float()
    expected = 0.0
    for a in attention:
        up = F.interpolate(a, scale_factor=4, mode="bilinear", align_corners=False)   # upstream nn.Upsample(x4)
        logp = up.log_softmax(dim=1)
        expected += -logp.gather(1, labels.unsqueeze(1)).mean()
    torch.testing.assert_close(AttentionCrossEntropyLoss()(attention, parsing), expected)


def test_vgg_terms_by_direct_computation(terms, images):
    fake, target = images
    vgg = terms["content"].bank.vgg
    layers = set(CONTENT_LAYERS) | set(STYLE_LAYERS) | {"relu3_2", "relu4_2"}
    ff, tf = vgg(fake, layers), vgg(target, layers)
    content = sum(F.l1_loss(ff[n], tf[n]) for n in CONTENT_LAYERS)
    style = sum(F.l1_loss(gram_matrix(ff[n]), gram_matrix(tf[n])) for n in STYLE_LAYERS)
    cx = contextual_loss(tf["relu3_2"], ff["relu3_2"]) + contextual_loss(tf["relu4_2"], ff["relu4_2"])
    torch.testing.assert_close(terms["content"](fake, target), content)
    torch.testing.assert_close(terms["style"](fake, target), style)
    torch.testing.assert_close(terms["cx"](fake, target), cx)
    pf = vgg(imagenet_normalize(fake), ["relu1_2"])["relu1_2"]
    pt = vgg(imagenet_normalize(target), ["relu1_2"])["relu1_2"]
    torch.testing.assert_close(terms["perceptual"](fake, target), F.l1_loss(pf, pt))
    torch.testing.assert_close(terms["l1"](fake, target), (fake - target).abs().mean())


def test_vgg_terms_share_one_pass_per_image(terms, images):
    fake, target = images
    bank: VGGFeatureBank = terms["content"].bank
    assert all(terms[t].bank is bank for t in ("perceptual", "cx", "content", "style"))
    calls = []
    hook = bank.vgg.register_forward_pre_hook(lambda module, args: calls.append(args[0].requires_grad))
    try:
        total = sum(terms[t](fake, target) for t in ("content", "style", "cx", "perceptual"))
    finally:
        hook.remove()
    assert calls == [True, False, True, False]  # raw pass, then normalised pass; the target without autograd
    total.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in bank.parameters())
    # a new generated image (a new step) is computed afresh
    fake2 = fake.detach().clone().requires_grad_()
    assert not torch.equal(terms["content"](fake2 * 0.5, target), terms["content"](fake, target))


def test_lpips_matches_the_lpips_package(terms, images):
    import lpips

    fake, target = images
    ours = terms["lpips"]
    reference = quiet(lpips.LPIPS, pretrained=False, net="vgg", pnet_rand=True, verbose=False).eval()
    reference.load_state_dict(ours.net.state_dict())
    expected = reference(fake, target).mean()
    torch.testing.assert_close(ours(fake, target), expected)
    assert ours(target, target).item() == pytest.approx(0.0, abs=1e-7)
    assert not ours.pretrained and sorted(random_backbones(terms)) == ["content", "cx", "lpips", "perceptual",
                                                                         "style"]


def test_zero_weight_switches_a_term_off_and_config_is_checked():
    cfg = from_dict(LossConfig, {"cx": 0, "lpips": 0, "perceptual": 0, "content": 0, "style": 0}, "loss")
    assert sorted(build_losses(cfg)) == ["amce", "gan", "l1"]
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(LossConfig, {"lambda_cx": 1}, "loss")
    with pytest.raises(ConfigError, match=r"\[loss\]: gan must be a number >= 0"):
        LossConfig(gan=-1)
    with pytest.raises(ConfigError, match="relu"):
        LossConfig(cx_layers=("conv3_2",))


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(WeightsError, match="vgg19-dcbb9e9d.pth"):
        build_losses(LossConfig(vgg_weights=str(tmp_path / "vgg19-dcbb9e9d.pth"), lpips=0))
    with pytest.raises(WeightsError, match="vgg16-397923af.pth"):
        quiet(LPIPSLoss, str(tmp_path))


def _upstream_vgg_conv(seed: int = 5) -> dict[str, torch.Tensor]:
    """A random state dict in upstream's vgg_conv.pth layout (its VGG class: conv1_1.weight ... conv5_4.bias)."""
    g = torch.Generator().manual_seed(seed)
    widths = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    counts = {1: 2, 2: 2, 3: 4, 4: 4, 5: 4}
    state, cin = {}, 3
    for block in range(1, 6):
        for i in range(1, counts[block] + 1):
            cout = widths[block]
            state[f"conv{block}_{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
            state[f"conv{block}_{i}.bias"] = torch.randn(cout, generator=g) * 0.05
            cin = cout
    return state


def _upstream_relu(state: dict, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Upstream VGG.forward (max pools) up to ``layer`` (e.g. "relu4_2"), written out from its key names."""
    order = [(b, i) for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for i in range(1, n + 1)]
    for b, i in order:
        if i == 1 and b > 1:
            x = F.max_pool2d(x, 2, 2)
        x = F.relu(F.conv2d(x, state[f"conv{b}_{i}.weight"], state[f"conv{b}_{i}.bias"], padding=1))
        if layer == f"relu{b}_{i}":
            return x
    raise ValueError(layer)


def test_cx_reads_upstreams_vgg_conv_layout(tmp_path, images):
    """loss.cx_vgg_weights: CX gets its own VGG19 from upstream's key layout, on the raw [-1, 1] image."""
    from casd.losses import Objective

    upstream = _upstream_vgg_conv()
    path = tmp_path / "vgg_conv.pth"
    torch.save(upstream, path)
    cfg = LossConfig(cx_vgg_weights=str(path), vgg_weights="none", lpips=0)
    terms = quiet(build_losses, cfg)
    cx_bank = terms["cx"].bank
    assert cx_bank is not terms["content"].bank and cx_bank.pretrained and cx_bank.layout == "upstream"
    fake, target = images
    expected = sum(contextual_loss(_upstream_relu(upstream, target, n), _upstream_relu(upstream, fake, n))
                   for n in ("relu3_2", "relu4_2"))
    torch.testing.assert_close(terms["cx"](fake, target), expected, rtol=1e-4, atol=1e-5)
    objective = quiet(Objective, cfg)
    assert objective.cx_backbone.startswith("upstream vgg_conv.pth") and "cx" not in random_backbones(terms)
    default = quiet(Objective, LossConfig(vgg_weights="none", lpips=0))
    assert default.cx_backbone == "torchvision VGG19 (loss.vgg_weights: none), random weights"


def test_cx_vgg_weights_of_another_layout_are_refused(tmp_path):
    path = tmp_path / "vgg_conv.pth"
    torch.save({k.replace("conv", "layer"): v for k, v in _upstream_vgg_conv().items()}, path)
    with pytest.raises(WeightsError, match=r"vgg_conv.pth.*layout.*conv1_1.weight"):
        quiet(build_losses, LossConfig(cx_vgg_weights=str(path), vgg_weights="none", lpips=0))
    with pytest.raises(WeightsError, match="vgg_conv.pth"):
        quiet(build_losses, LossConfig(cx_vgg_weights=str(tmp_path / "missing"), vgg_weights="none", lpips=0))
