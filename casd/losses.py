"""The CASD training losses, one small module per term; weights in params.yaml ``loss:``.

Term (weight key)   what (upstream default weight)
- ``l1``            L1 between generated and target image (1.0)
- ``perceptual``    L1 between VGG19 relu1_2 features of the ImageNet-normalised images (1.0)
- ``gan``           least-squares GAN: mean (D(x) - 1)^2 / D(x)^2 (5.0, averaged over D_PB and D_PP by the caller)
- ``cx``            contextual loss on VGG19 relu3_2 and relu4_2, sigma 0.5 (0.1)
- ``amce``          cross-entropy between each attention map, upsampled x4, and the target parsing (0.1)
- ``lpips``         LPIPS with the VGG16 trunk and the lpips package's linear layers (1.0)
- ``content``       L1 between VGG19 relu1_1 .. relu5_1 features (0.5)
- ``style``         L1 between Gram matrices of VGG19 relu2_2, relu3_4, relu4_4, relu5_2 (200)

Image inputs are [B,3,H,W] in [-1, 1]. The VGG19 terms share one frozen network
(:class:`VGGFeatureBank`): for a (generated, target) pair the layers every term
needs are computed in ONE pass per image (content, style and CX read the raw
[-1, 1] input, as upstream; the perceptual term its own ImageNet-normalised
shallow pass), and the target's pass runs without autograd.

The CX term reads upstream's own VGG19 (``vgg_conv.pth``) when
``loss.cx_vgg_weights`` names it, otherwise the shared torchvision VGG19
(:attr:`Objective.cx_backbone` says which, for the run's tags). The CX
distances are computed for the whole batch at once (one batched matrix product
instead of upstream's one conv per sample; same values).

:class:`Objective` weights and sums the terms for one training step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from casd.config import Checks
from casd.models.vgg import NO_WEIGHTS, VGG19_INDEX, VGG19Features, imagenet_normalize

TERMS = ("l1", "perceptual", "gan", "cx", "amce", "lpips", "content", "style")  # the generator's terms
DISCRIMINATOR_TERMS = ("d_pb", "d_pp")
CONTENT_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_LAYERS = ("relu2_2", "relu3_4", "relu4_4", "relu5_2")


@dataclass
class LossConfig:
    """The ``loss:`` section of params.yaml (defaults = upstream CASD). A zero weight switches a term off."""

    l1: float = 1.0
    perceptual: float = 1.0
    gan: float = 5.0
    cx: float = 0.1
    amce: float = 0.1
    lpips: float = 1.0
    content: float = 0.5
    style: float = 200.0
    perceptual_layer: str = "relu1_2"              # upstream perceptual_layers=3: VGG19 features[0..3]
    cx_layers: tuple[str, ...] = ("relu3_2", "relu4_2")
    cx_sigma: float = 0.5
    vgg_weights: str = "torchvision"               # VGG19 of perceptual/content/style/CX: path | torchvision | none
    cx_vgg_weights: str = "none"                   # upstream's vgg_conv.pth for CX only: path | none (= vgg_weights)
    lpips_weights: str = "torchvision"             # LPIPS VGG16 trunk + linear layers: folder | torchvision | none

    def __post_init__(self):
        checks = Checks("loss")
        for name in TERMS:
            checks.number(name, getattr(self, name), minimum=0)
        checks.number("cx_sigma", self.cx_sigma, above=0)
        self.cx_layers = tuple(self.cx_layers)
        for layer in (self.perceptual_layer, *self.cx_layers):
            checks.require(layer in VGG19_INDEX and str(layer).startswith("relu"),
                           f"unknown VGG19 ReLU layer {layer!r} (e.g. relu3_2)")
        for name in ("vgg_weights", "cx_vgg_weights", "lpips_weights"):
            checks.require(isinstance(getattr(self, name), str) and bool(getattr(self, name)),
                           f"{name} must be a path, 'torchvision' or 'none', got {getattr(self, name)!r}")
        checks.done()


# ---------------------------------------------------------------------------------------------------------------
# shared VGG19 features
# ---------------------------------------------------------------------------------------------------------------

class VGGFeatureBank(nn.Module):
    """One frozen VGG19 shared by the VGG-based terms, computing each image's needed layers once.

    Terms declare their layers with :meth:`require` (``normalized`` says
    whether the term reads ImageNet-normalised input, like upstream's perceptual
    term, or the raw [-1, 1] image). :meth:`pair` returns the features of a
    (generated, target) pair; the result is cached for as long as the same two
    tensors (same objects, unmodified, same grad mode) are passed again, so
    terms called one after another on one training step share the passes.
    """

    def __init__(self, weights: str = "torchvision", last_layer: str = "relu5_2", *, load: bool = True,
                 layout: str = "torchvision"):
        super().__init__()
        purpose = "loss.cx_vgg_weights" if layout == "upstream" else "loss.vgg_weights"
        self.vgg = VGG19Features(last_layer, weights, load=load, purpose=purpose, layout=layout)
        self._run = [self.vgg]  # what computes the features: the network, or its compiled form (not a submodule)
        self.layout, self.weights = layout, weights
        self.layers: dict[bool, set[str]] = {False: set(), True: set()}
        self._cache: tuple | None = None

    @property
    def pretrained(self) -> bool:
        return self.vgg.pretrained

    def require(self, layers, normalized: bool = False) -> None:
        self.layers[normalized].update(layers)

    def clear(self) -> None:
        self._cache = None

    def _key(self, fake: torch.Tensor, target: torch.Tensor) -> tuple:
        return (id(fake), fake._version, id(target), target._version, torch.is_grad_enabled(), fake.requires_grad)

    def pair(self, fake: torch.Tensor, target: torch.Tensor, normalized: bool = False):
        """-> (fake features, target features): dicts of every required layer for this input kind."""
        key = self._key(fake, target)
        if self._cache is None or self._cache[0] != key or self._cache[1] is not fake or self._cache[2] is not target:
            self._cache = (key, fake, target, {})
        computed = self._cache[3]
        if normalized not in computed:
            layers = tuple(sorted(self.layers[normalized] or {"relu1_1"}))
            prepare = imagenet_normalize if normalized else (lambda x: x)
            vgg = self._run[0]
            fake_features = vgg(prepare(fake), layers)
            with torch.no_grad():
                target_features = vgg(prepare(target), layers)
            computed[normalized] = (fake_features, target_features)
        return computed[normalized]


# ---------------------------------------------------------------------------------------------------------------
# terms
# ---------------------------------------------------------------------------------------------------------------

class L1Loss(nn.Module):
    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(fake, target)


class PerceptualL1Loss(nn.Module):
    """L1 between VGG19 features (default relu1_2) of the ImageNet-normalised images; target detached."""

    def __init__(self, bank: VGGFeatureBank, layer: str = "relu1_2"):
        super().__init__()
        self.bank, self.layer = bank, layer
        bank.require([layer], normalized=True)

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fake_f, target_f = self.bank.pair(fake, target, normalized=True)
        return F.l1_loss(fake_f[self.layer], target_f[self.layer])


class LSGANLoss(nn.Module):
    """Least-squares GAN: mean (prediction - 1)^2 for ``real``, mean prediction^2 otherwise."""

    def forward(self, prediction: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
        return F.mse_loss(prediction, target)


def contextual_loss(target: torch.Tensor, fake: torch.Tensor, sigma: float = 0.5, b: float = 1.0) -> torch.Tensor:
    """Contextual loss (Mechrez et al.) of features [B,C,H,W], as upstream's CXLoss, batched.

    Both are centred by the target's mean channel vector (over batch and space)
    and L2-normalised per position; d = (1 - cos) / 2 for each (target
    position j, generated position i); relative d / (min_j d + 1e-5);
    w = exp((b - relative) / sigma) normalised over j; CX_j = max_i w;
    loss = mean over batch of -log(mean_j CX_j).
    """
    with torch.autocast(target.device.type, enabled=False):  # relative distances need float32 under AMP
        target, fake = target.float(), fake.float()
        mean = target.mean(dim=(0, 2, 3), keepdim=True)
        t = F.normalize(target - mean, dim=1, eps=0.0).flatten(2)      # [B,C,Pt]
        f = F.normalize(fake - mean, dim=1, eps=0.0).flatten(2)        # [B,C,Pf]
        cosine = t.transpose(1, 2) @ f                                 # [B,Pt,Pf]
    distance = (1 - cosine) / 2
    relative = distance / (distance.min(dim=1, keepdim=True).values + 1e-5)
    weights = torch.exp((b - relative) / sigma)
    cx = weights / weights.sum(dim=1, keepdim=True)
    return -torch.log(cx.max(dim=2).values.mean(dim=1)).mean()


class ContextualLoss(nn.Module):
    """Sum over ``layers`` (default relu3_2, relu4_2) of :func:`contextual_loss`(target, generated)."""

    def __init__(self, bank: VGGFeatureBank, layers=("relu3_2", "relu4_2"), sigma: float = 0.5):
        super().__init__()
        self.bank, self.layers, self.sigma = bank, tuple(layers), sigma
        bank.require(self.layers)

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fake_f, target_f = self.bank.pair(fake, target)
        return sum(contextual_loss(target_f[n], fake_f[n], self.sigma) for n in self.layers)


class AttentionCrossEntropyLoss(nn.Module):
    """Sum over attention maps [B,K,H/4,W/4] of CE(bilinear x4 upsampled map, argmax of target parsing [B,K,H,W])."""

    def forward(self, attention: list[torch.Tensor], target_parsing: torch.Tensor) -> torch.Tensor:
        labels = target_parsing.argmax(dim=1)
        size = target_parsing.shape[-2:]
        return sum(F.cross_entropy(F.interpolate(a, size=size, mode="bilinear", align_corners=False), labels)
                   for a in attention)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,C] = F F^T / (C H W) (upstream's normalisation)."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):  # sums over H*W positions: float32 under AMP
        flat = features.float().reshape(b, c, h * w)
        return flat @ flat.transpose(1, 2) / (c * h * w)


class VGGContentLoss(nn.Module):
    """Sum over relu1_1 .. relu5_1 of the L1 distance between VGG19 features of the raw [-1, 1] images."""

    def __init__(self, bank: VGGFeatureBank, layers=CONTENT_LAYERS):
        super().__init__()
        self.bank, self.layers = bank, tuple(layers)
        bank.require(self.layers)

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fake_f, target_f = self.bank.pair(fake, target)
        return sum(F.l1_loss(fake_f[n], target_f[n]) for n in self.layers)


class VGGStyleLoss(nn.Module):
    """Sum over relu2_2, relu3_4, relu4_4, relu5_2 of the L1 distance between Gram matrices."""

    def __init__(self, bank: VGGFeatureBank, layers=STYLE_LAYERS):
        super().__init__()
        self.bank, self.layers = bank, tuple(layers)
        bank.require(self.layers)

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fake_f, target_f = self.bank.pair(fake, target)
        return sum(F.l1_loss(gram_matrix(fake_f[n]), gram_matrix(target_f[n])) for n in self.layers)


class LPIPSLoss(nn.Module):
    """LPIPS (VGG16 trunk, v0.1 linear layers), mean over the batch; images in [-1, 1].

    The network is the ``lpips`` package's ``LPIPS(net='vgg')``, built without
    any download; its weights come per the ``weights`` spec: ``torchvision``
    (vgg16-397923af.pth from the torch hub cache and the package's own vgg.pth,
    via :mod:`casd.weights`), a folder holding both files, or ``none`` (random
    frozen trunk, linear layers 1/C: an unweighted feature distance; warns).
    """

    def __init__(self, weights: str = "torchvision", *, load: bool = True):
        super().__init__()
        import lpips

        self.net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
        self.pretrained = False
        if load and weights.lower() in NO_WEIGHTS:
            warnings.warn("loss.lpips_weights: none -> LPIPS trunk RANDOM and linear layers uniform "
                          "(fine for demos and tests)", stacklevel=2)
        if load:
            self._load(weights)
        self.net.requires_grad_(False)
        self.net.eval()
        self._run = [self.net]  # the network, or its compiled form (not a submodule)

    def _load(self, spec: str) -> None:
        from casd import weights as registry

        if spec.lower() in NO_WEIGHTS:
            for lin in self.net.lins:
                conv = lin.model[-1]
                nn.init.constant_(conv.weight, 1.0 / conv.weight.shape[1])
            return
        explicit = None if spec == "torchvision" else spec
        trunk = registry.load_state_dict("vgg16", explicit)
        own = self.net.net.state_dict()  # slice{k}.{torchvision index}.weight
        self.net.net.load_state_dict({k: trunk[f"features.{k.split('.', 1)[1]}"] for k in own})
        self.net.load_state_dict(registry.load_state_dict("lpips-vgg-lin", explicit), strict=False)
        self.pretrained = True

    def train(self, mode: bool = True) -> "LPIPSLoss":
        return super().train(False)  # frozen metric network: dropout in its linear layers stays off

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._run[0](fake, target).float().mean()


# ---------------------------------------------------------------------------------------------------------------

def build_losses(config: LossConfig | None = None, *, load_weights: bool = True) -> dict[str, nn.Module]:
    """{term: module} for every term of non-zero weight (the VGG19 terms share one :class:`VGGFeatureBank`).

    Calling convention: ``l1 / perceptual / cx / lpips / content / style``:
    ``(fake, target)``; ``gan``: ``(prediction, real: bool)``; ``amce``:
    ``(attention maps list, target parsing [B,K,H,W])``. Values are unweighted;
    multiply by ``config.<term>``.
    """
    cfg = config or LossConfig()
    active = [t for t in TERMS if getattr(cfg, t) != 0]
    upstream_cx = "cx" in active and cfg.cx_vgg_weights.lower() not in NO_WEIGHTS
    vgg_terms = {"perceptual": [cfg.perceptual_layer], "content": list(CONTENT_LAYERS), "style": list(STYLE_LAYERS)}
    if not upstream_cx:
        vgg_terms["cx"] = list(cfg.cx_layers)
    needed = [layer for t in active if t in vgg_terms for layer in vgg_terms[t]]
    bank = None
    if needed:
        last = max(needed, key=VGG19_INDEX.__getitem__)
        bank = VGGFeatureBank(cfg.vgg_weights, last, load=load_weights)
    if upstream_cx:  # upstream's own VGG19 for CX alone, on the raw [-1, 1] image like upstream
        cx_bank = VGGFeatureBank(cfg.cx_vgg_weights, max(cfg.cx_layers, key=VGG19_INDEX.__getitem__),
                                 load=load_weights, layout="upstream")
    else:
        cx_bank = bank
    makers = {
        "l1": lambda: L1Loss(),
        "perceptual": lambda: PerceptualL1Loss(bank, cfg.perceptual_layer),
        "gan": lambda: LSGANLoss(),
        "cx": lambda: ContextualLoss(cx_bank, cfg.cx_layers, cfg.cx_sigma),
        "amce": lambda: AttentionCrossEntropyLoss(),
        "lpips": lambda: LPIPSLoss(cfg.lpips_weights, load=load_weights),
        "content": lambda: VGGContentLoss(bank),
        "style": lambda: VGGStyleLoss(bank),
    }
    return {t: makers[t]() for t in active}


def random_backbones(terms: dict[str, nn.Module]) -> list[str]:
    """Names of the terms whose frozen network holds random weights (to record as a run tag)."""
    out = []
    for name, module in terms.items():
        pretrained = getattr(module, "pretrained", None)
        if pretrained is None and hasattr(module, "bank"):
            pretrained = module.bank.pretrained
        if pretrained is False:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the objective of one training step
# ---------------------------------------------------------------------------------------------------------------

class Objective(nn.Module):
    """CASD's losses, weighted by params.yaml ``loss:``; a term of weight 0 is neither built nor computed.

    ``generator_terms`` and ``discriminator_terms`` return {term: weighted float32 scalar}; the generator
    minimises the sum of its terms, the discriminators the sum of theirs. ``batch`` is a
    :class:`casd.data.dataset.PairBatch` with ``target_pose`` rendered.
    """

    def __init__(self, loss_config: LossConfig, *, load_weights: bool = True):
        super().__init__()
        self.config = loss_config
        self.weights = {name: float(getattr(loss_config, name)) for name in TERMS}
        self.active = tuple(name for name in TERMS if self.weights[name] != 0)
        self.terms = build_losses(loss_config, load_weights=load_weights)  # {term: module}, non-zero weights only
        for name, module in self.terms.items():
            self.add_module(f"term_{name}", module)

    def compile_networks(self, wrap) -> None:
        """Replace each frozen loss network (the VGG19 feature banks, LPIPS) by ``wrap(network, name)``."""
        banks = {id(m): m for m in self.terms.values() if isinstance(getattr(m, "bank", None), VGGFeatureBank)
                 for m in [m.bank]}
        for bank in banks.values():
            bank._run[0] = wrap(bank.vgg, f"loss VGG19 ({bank.layout})")
        if "lpips" in self.terms:
            self.terms["lpips"]._run[0] = wrap(self.terms["lpips"].net, "LPIPS")

    @property
    def cx_backbone(self) -> str | None:
        """Which VGG19 the CX term reads (for the run's tags); None when CX is off."""
        if "cx" not in self.terms:
            return None
        bank = self.terms["cx"].bank
        if bank.layout == "upstream":
            kind = f"upstream vgg_conv.pth ({bank.weights})"
        else:
            kind = f"torchvision VGG19 (loss.vgg_weights: {bank.weights})"
        return kind if bank.pretrained else f"{kind}, random weights"

    def generator_terms(self, fake: torch.Tensor, attention: list[torch.Tensor], batch,
                        d_pb: nn.Module, d_pp: nn.Module) -> dict[str, torch.Tensor]:
        """fake [B,3,H,W], attention 2 x [B,8,H/4,W/4]; d_pb / d_pp frozen for this step."""
        terms = {}
        for name in self.active:
            if name == "gan":
                value = 0.5 * (self.terms["gan"](d_pb(torch.cat([fake, batch.target_pose], 1)), True)
                               + self.terms["gan"](d_pp(torch.cat([fake, batch.source], 1)), True))
            elif name == "amce":
                value = self.terms["amce"](attention, batch.target_parsing)
            else:
                value = self.terms[name](fake, batch.target)
            terms[name] = self.weights[name] * value.float()
        return terms

    def discriminator_terms(self, fake: torch.Tensor, batch, d_pb: nn.Module,
                            d_pp: nn.Module) -> dict[str, torch.Tensor]:
        """LSGAN on real (target) vs generated (detached), for D_PB (image, pose) and D_PP (image, source).

        Real and fake go through each discriminator as one batch (instance norm is per sample, so this
        equals two passes): one forward per DDP module and step.
        """
        if self.weights["gan"] == 0:
            return {}
        fake = fake.detach()
        n = fake.shape[0]
        gan = self.terms["gan"]
        terms = {}
        for name, net, condition in (("d_pb", d_pb, batch.target_pose), ("d_pp", d_pp, batch.source)):
            both = net(torch.cat([torch.cat([batch.target, condition], 1), torch.cat([fake, condition], 1)], 0))
            terms[name] = self.weights["gan"] * 0.5 * (gan(both[:n], True) + gan(both[n:], False)).float()
        return terms
