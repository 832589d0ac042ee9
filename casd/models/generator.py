"""The CASD generator: style encoder, pose encoder, style-distribution decoder.

Computes exactly what upstream's ``ADGen`` (models/CASD.py) computes (tested to
1e-4 against upstream outputs, tests/test_generator.py), with readable names,
configurable widths and any input size divisible by 4.

Data flow (B batch, K = 8 regions, C = ``width``)::

    source image [B,3,H,W], parsing [B,K,H,W]
        -> StyleEncoder: frozen VGG19 taps (relu1_1..relu4_1) fused with own convs,
           features [B,C,H/8,W/8], one masked average per region -> tokens [B,K,C]
    pose [B,30,H,W] (18 keypoint maps + 12 limb maps)
        -> PoseEncoder -> pose features [B,C,H/4,W/4]
    Decoder(pose features, tokens):
        MLP(tokens) -> AdaIN parameters; AdaIN residual blocks on the pose features
        2 x StyleDistributionBlock: pose features query the tokens -> features,
            attention logits [B,K,H/4,W/4] (the predicted target parsing)
        attention-modulated residual blocks on the pose features, modulated by the
            last style-distribution output; 2 x (upsample x2, 5x5 conv, layer norm);
            7x7 conv, tanh -> image [B,3,H,W] in [-1, 1]

Upstream quirks kept on purpose (they define the released weights' behaviour):
AdaIN is ``batch_norm`` over a (1, B*C, H, W) view, in train and eval alike; the
attention-modulated norm uses batch-and-spatial statistics and divides by
``var + 1e-6`` (not the standard deviation); the layer norm uses the unbiased
std and divides by ``std + eps``; the key path of the cross attention is
detached; the MLP emits AdaIN parameters for all residual blocks although only
the AdaIN half uses them; reflect padding; conv/linear weights N(0, 0.02).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from casd.config import Checks
from casd.models.vgg import VGG19Features, device_constant

VGG_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
VGG_TAP_CHANNELS = (64, 128, 256, 512)
# the model fields that name one of a few modes (upstream's first)
MODEL_CHOICES = {"modulated_norm": ("batch", "sample"), "token_pooling": ("nearest", "area"),
                 "init": ("upstream", "fan_in")}


@dataclass
class GeneratorConfig:
    """The ``model:`` section of params.yaml (defaults = upstream CASD)."""

    pose_channels: int = 30        # 18 keypoint maps + 12 limb maps
    regions: int = 8               # merged parsing regions = style tokens
    pose_width: int = 64           # pose encoder: first block width (the second doubles it)
    style_width: int = 64          # style encoder: first conv width (doubles at each of 3 down-samplings)
    width: int = 256               # decoder feature width = style token width per region
    mlp_width: int = 256           # hidden width of the MLP that predicts AdaIN parameters
    adain_blocks: int = 4          # AdaIN residual blocks
    attention_blocks: int = 2      # cross-attention style-distribution blocks (one attention map each)
    modulated_blocks: int = 4      # attention-modulated residual blocks
    vgg_weights: str = "torchvision"  # path to vgg19-dcbb9e9d.pth | torchvision (hub cache) | none (random)
    modulated_norm: str = "batch"  # batch (upstream: statistics over the batch) | sample (per sample, see below)
    # not upstream (off by default): options for short trainings of small models, see StyleEncoder / reset_parameters
    region_colour: bool = False    # add a learned map of each region's full-resolution mean colour to its token
    style_vgg: bool = True         # the style encoder's frozen VGG19 taps; false: its own convs only
    token_pooling: str = "nearest"  # nearest (upstream: region masks nearest-downsampled to H/8) | area (coverage)
    init: str = "upstream"         # upstream: weights N(0, 0.02) | fan_in: N(0, 1 / fan_in) (any width)

    def __post_init__(self):
        checks = Checks("model")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in MODEL_CHOICES:
                checks.choice(f.name, value, MODEL_CHOICES[f.name])
            elif f.name in ("region_colour", "style_vgg"):
                checks.flag(f.name, value)
            elif f.name != "vgg_weights":
                checks.number(f.name, value, minimum=1, integer=True)
        checks.require(not isinstance(self.width, int) or self.width % 4 == 0,
                       f"width must be divisible by 4 (two halving up-samplings), got {self.width}")
        checks.require(isinstance(self.vgg_weights, str) and bool(self.vgg_weights),
                       f"vgg_weights must be a path, 'torchvision' or 'none', got {self.vgg_weights!r}")
        checks.done()

    @property
    def upstream_compatible(self) -> bool:
        """False when an option outside upstream's generator is on (its weights then have no upstream layout)."""
        return not self.region_colour and self.style_vgg and self.token_pooling == "nearest"

    @property
    def res_blocks(self) -> int:
        """Residual blocks the AdaIN MLP emits parameters for (upstream n_res = 8: 4 AdaIN + 4 modulated)."""
        return self.adain_blocks + self.modulated_blocks

    @classmethod
    def tiny(cls, **overrides) -> "GeneratorConfig":
        """A few-thousand-parameter configuration (plus the frozen VGG) for tests and CPU demos."""
        values = dict(pose_width=8, style_width=8, width=16, mlp_width=16, adain_blocks=2, modulated_blocks=2,
                      vgg_weights="none")
        values.update(overrides)
        return cls(**values)


def reflect_conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Conv with reflect padding (kernel // 2, or 1 for the 4x4 stride-2 down-samplings)."""
    padding = 1 if kernel == 4 else kernel // 2
    return nn.Conv2d(cin, cout, kernel, stride, padding, padding_mode="reflect")


def adaptive_instance_norm(x: torch.Tensor, params: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x [B,C,H,W], params [B,2C] (scale then shift) -> instance-normalised x with per-sample affine.

    As upstream: batch_norm over the (1, B*C, H, W) view, always with batch
    statistics (biased variance), in train and eval mode alike.
    """
    b, c, h, w = x.shape
    x, params = x.float(), params.float()  # statistics in float32 also under bf16/fp16 autocast
    scale, shift = params.chunk(2, dim=1)
    out = F.batch_norm(x.reshape(1, b * c, h, w), None, None, scale.reshape(-1), shift.reshape(-1),
                       training=True, eps=eps)
    return out.view(b, c, h, w)


def attention_modulated_norm(x: torch.Tensor, modulation: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """x [B,C,H,W], modulation [B,2C,H,W] (gamma then beta) -> modulated x.

    Statistics over batch and space (upstream; ``per_sample``: over space
    only), unbiased variance, divided by var + 1e-6 (upstream's SPADE-like
    norm; not the standard deviation).
    """
    x, modulation = x.float(), modulation.float()  # float32 statistics also under autocast
    dims = (2, 3) if per_sample else (0, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True)
    gamma, beta = modulation.chunk(2, dim=1)
    return (x - mean) / (var + 1e-6) * (1 + gamma) + beta


class LayerNorm(nn.Module):
    """Per-sample norm over (C,H,W) with the unbiased std, (x - mean) / (std + eps), per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(channels).uniform_())
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # float32 statistics also under autocast
        flat = x.flatten(1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = (x - flat.mean(1).view(shape)) / (flat.std(1).view(shape) + self.eps)
        affine = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.gamma.view(affine) + self.beta.view(affine)


class InstanceLayerNorm(nn.Module):
    """Learned mix (rho) of instance norm (over the trailing axes) and layer norm (over channels).

    Input [B,C,*S] with ``spatial_dims`` = len(S): 2 for feature maps [B,C,H,W],
    1 for token sets [B,C,K]. Unbiased variances, eps inside the square root.
    """

    def __init__(self, channels: int, spatial_dims: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.instance_dims = tuple(range(2, 2 + spatial_dims))
        shape = (1, channels) + (1,) * spatial_dims
        self.rho = nn.Parameter(torch.zeros(shape))
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # float32 statistics also under autocast

        def normalise(dims):
            return (x - x.mean(dim=dims, keepdim=True)) / torch.sqrt(x.var(dim=dims, keepdim=True) + self.eps)

        mixed = self.rho * normalise(self.instance_dims) + (1 - self.rho) * normalise((1,))
        return mixed * self.gamma + self.beta


class StyleEncoder(nn.Module):
    """Source image + parsing -> one style token per region [B,K,C].

    Own convs (7x7, then three 4x4 stride-2) interleaved with the frozen VGG19
    taps relu1_1, relu2_1, relu3_1, relu4_1 (concatenated; ``style_vgg: false``
    leaves them out), fused by a 1x1 conv into ``width`` channels at H/8; each
    region's token is the mean of the features under its mask, the global mean
    where the region is empty. Upstream downsamples the masks by nearest
    sampling (nonzero = inside), so a region thinner than 8 pixels can vanish
    from the H/8 grid; ``token_pooling: area`` weights each cell by the share
    of it the region covers instead. ``region_colour`` adds a learned map of
    each region's mean colour at full resolution to its token.
    """

    def __init__(self, config: GeneratorConfig, *, pretrained_vgg: bool = True):
        super().__init__()
        w = config.style_width
        taps = VGG_TAP_CHANNELS if config.style_vgg else (0, 0, 0, 0)
        self.vgg = (VGG19Features("relu4_1", config.vgg_weights, load=pretrained_vgg, purpose="model.vgg_weights")
                    if config.style_vgg else None)
        self.image_conv = reflect_conv(3, w, 7)
        self.down1 = reflect_conv(w + taps[0], 2 * w, 4, 2)
        self.down2 = reflect_conv(2 * w + taps[1], 4 * w, 4, 2)
        self.down3 = reflect_conv(4 * w + taps[2], 8 * w, 4, 2)
        self.fuse = nn.Conv2d(8 * w + taps[3], config.width, 1)
        self.colour = nn.Linear(3, config.width) if config.region_colour else None
        self.area_pooling = config.token_pooling == "area"

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] in [-1, 1] -> style features [B,C,H/8,W/8] (floor)."""
        taps = {}
        if self.vgg is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and image.requires_grad):  # frozen weights
                taps = self.vgg(image, VGG_TAPS)

        def with_tap(x: torch.Tensor, name: str) -> torch.Tensor:
            return torch.cat([x, taps[name]], 1) if taps else x

        x = with_tap(F.relu(self.image_conv(image)), "relu1_1")
        x = with_tap(F.relu(self.down1(x)), "relu2_1")
        x = with_tap(F.relu(self.down2(x)), "relu3_1")
        x = with_tap(F.relu(self.down3(x)), "relu4_1")
        return self.fuse(x)

    def forward(self, image: torch.Tensor, parsing: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W], parsing [B,K,H,W] (one-hot; nonzero = in region) -> tokens [B,K,C]."""
        features = self.features(image)
        inside = (parsing != 0).to(features.dtype)
        if self.area_pooling:
            masks = F.adaptive_avg_pool2d(inside, features.shape[2:])
        else:
            masks = F.interpolate(inside, size=features.shape[2:], mode="nearest")
        tokens = region_means(features, masks)
        if self.colour is not None:
            tokens = tokens + self.colour(region_means(image, inside))
        return tokens


def region_means(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """values [B,C,H,W], masks [B,K,H,W] (weights >= 0) -> weighted mean of each region [B,K,C]; the mean over
    the whole map where a region has no weight."""
    area = masks.sum(dim=(2, 3)).unsqueeze(2)                                    # [B,K,1]
    sums = torch.einsum("bchw,bkhw->bkc", values, masks)                         # [B,K,C]
    overall = values.mean(dim=(2, 3)).unsqueeze(1)                               # [B,1,C]
    return torch.where(area > 0, sums / area.clamp(min=1e-6), overall)


class EncoderBlock(nn.Module):
    """Instance norm, LeakyReLU(0.1), 4x4 stride-2 conv, instance norm, LeakyReLU, 3x3 conv (zero padding)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm_in = nn.InstanceNorm2d(cin, affine=True)
        self.down = nn.Conv2d(cin, cout, 4, 2, 1)
        self.norm_mid = nn.InstanceNorm2d(cout, affine=True)
        self.conv = nn.Conv2d(cout, cout, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(F.leaky_relu(self.norm_in(x), 0.1))
        return self.conv(F.leaky_relu(self.norm_mid(x), 0.1))


class PoseEncoder(nn.Module):
    """pose [B,30,H,W] -> pose features [B,C,H/4,W/4]."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        w = config.pose_width
        self.down1 = EncoderBlock(config.pose_channels, w)
        self.down2 = EncoderBlock(w, 2 * w)
        self.norm = nn.InstanceNorm2d(2 * w, affine=True)
        self.project = nn.Conv2d(2 * w, config.width, 1)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        x = self.down2(self.down1(pose))
        return self.project(F.leaky_relu(self.norm(x), 0.1))


class AdaINResBlock(nn.Module):
    """x + AdaIN(conv(relu(AdaIN(conv(x))))) with per-sample AdaIN parameters [B,4C]."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = reflect_conv(width, width, 3)
        self.conv2 = reflect_conv(width, width, 3)

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        params1, params2 = params.chunk(2, dim=1)
        out = F.relu(adaptive_instance_norm(self.conv1(x), params1))
        return x + adaptive_instance_norm(self.conv2(out), params2)


def _token_conv(conv: nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """Apply a 1x1 conv to tokens [B,K,Cin] -> [B,K,Cout] (upstream runs it on a [B,C,K,1] view)."""
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)


class FeedForward(nn.Module):
    """1x1 conv, GELU, 1x1 conv."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Conv2d(width, width, 1)
        self.fc2 = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class StyleDistributionBlock(nn.Module):
    """Cross attention: pose features query the region style tokens.

    1. Tokens are normalised and mixed by self-attention among themselves
       (weight ``gamma_token_attention``).
    2. Each position's logits over the K regions = key(token) . query(features)
       (key detached, as upstream) + a per-region linear read-out of the
       normalised pose features; softmax over positions, renormalised over
       regions.
    3. Features + gamma_cross * (values distributed by the attention), then +
       gamma_ffn * feed-forward. All gammas start at zero.

    Returns (features [B,C,H,W], logits [B,K,H,W]).
    """

    def __init__(self, width: int, regions: int):
        super().__init__()
        self.gamma_token_attention = nn.Parameter(torch.zeros(1))
        self.gamma_cross = nn.Parameter(torch.zeros(1))
        self.gamma_ffn = nn.Parameter(torch.zeros(1))
        self.token_value = nn.Conv2d(width, width, 1)
        self.token_norm = InstanceLayerNorm(width, spatial_dims=1)
        self.feature_norm = InstanceLayerNorm(width, spatial_dims=2)
        self.pose_norm = InstanceLayerNorm(width, spatial_dims=2)
        self.query = nn.Conv2d(width, width, 1)
        self.key = nn.Conv2d(width, width, 1)
        self.value = nn.Conv2d(width, width, 1)
        self.pose_logits = nn.Conv2d(width, regions, 1)
        self.ffn = FeedForward(width)

    def forward(self, x: torch.Tensor, pose_features: torch.Tensor, tokens: torch.Tensor):
        b, c, h, w = x.shape
        x = self.feature_norm(x)
        tokens = self.token_norm(tokens.transpose(1, 2)).transpose(1, 2)      # [B,K,C]

        similarity = tokens @ tokens.transpose(1, 2)                           # [B,K,K]
        token_attention = torch.softmax(similarity, dim=1) + 1e-8              # upstream: softmax over dim 1,
        token_attention = token_attention / token_attention.sum(dim=2, keepdim=True)  # renormalised over dim 2
        tokens = tokens + self.gamma_token_attention * (token_attention @ _token_conv(self.token_value, tokens))

        key = _token_conv(self.key, tokens)                                    # [B,K,C]
        value = _token_conv(self.value, tokens)                                # [B,K,C]
        query = self.query(x).flatten(2)                                       # [B,C,HW]
        logits = self.pose_logits(self.pose_norm(pose_features)).flatten(2) + key.detach() @ query  # [B,K,HW]
        attention = torch.softmax(logits, dim=2) + 1e-8                        # over positions,
        attention = attention / attention.sum(dim=1, keepdim=True)             # then shared among regions

        out = x + self.gamma_cross * (value.transpose(1, 2) @ attention).view(b, c, h, w)
        out = out + self.gamma_ffn * self.ffn(out)
        return out, logits.view(b, -1, h, w)


class ModulatedResBlock(nn.Module):
    """x + norm(conv(relu(norm(conv(x), m1))), m2), m1, m2 predicted from the attention output."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = reflect_conv(width, width, 3)
        self.conv2 = reflect_conv(width, width, 3)
        self.modulation1 = self._modulation_head(width)
        self.modulation2 = self._modulation_head(width)

    @staticmethod
    def _modulation_head(width: int) -> nn.Sequential:
        """attention output [B,C,H,W] -> (gamma, beta) [B,2C,H,W]."""
        return nn.Sequential(reflect_conv(width, width, 3), nn.InstanceNorm2d(width), nn.ReLU(inplace=True),
                             reflect_conv(width, 2 * width, 3))

    def forward(self, x: torch.Tensor, attended: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
        out = F.relu(attention_modulated_norm(self.conv1(x), self.modulation1(attended), per_sample))
        return x + attention_modulated_norm(self.conv2(out), self.modulation2(attended), per_sample)


# _PHASE_TAPS[a][i, s]: after a nearest x2 upsampling, output rows of phase a (even / odd) read low-resolution
# row offset i - 1 through the 5x5 kernel rows s - 2 marked 1 (away from the borders)
_PHASE_TAPS = ((((1, 1, 0, 0, 0), (0, 0, 1, 1, 0), (0, 0, 0, 0, 1)),
                ((1, 0, 0, 0, 0), (0, 1, 1, 0, 0), (0, 0, 0, 1, 1))))


def upsample_conv5(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(reflect_pad(upsample_nearest_x2(x)))`` for a 5x5 ``conv``, at 36% of the multiply-adds.

    x [B,C,h,w] -> [B,O,2h,2w]. A 5x5 kernel on a nearest-upsampled map reads
    only 3x3 distinct low-resolution pixels per output phase, so the four
    phases are one 3x3 conv on x (replicate-padded) with 4*O summed kernels,
    interleaved by pixel_shuffle. Reflect padding of the upsampled map differs
    from that on the outermost output rows and columns only; those four lines
    are recomputed directly (equal to the plain computation up to float rounding).
    """
    weight, bias = conv.weight, conv.bias
    taps = device_constant(_PHASE_TAPS, weight.device, weight.dtype)
    phases = torch.einsum("ais,ocst,bjt->oabcij", taps, weight, taps).flatten(0, 2)   # [O*4, C, 3, 3]
    out = F.pixel_shuffle(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), phases, bias.repeat_interleave(4)), 2)

    def border_line(strip: torch.Tensor, pad: tuple[int, int, int, int], dim: int, last: bool) -> torch.Tensor:
        padded = F.pad(F.interpolate(strip, scale_factor=2, mode="nearest"), pad, mode="reflect")
        return F.conv2d(padded.narrow(dim, padded.shape[dim] - 5 if last else 0, 5), weight, bias)

    out = out.clone()
    out[:, :, :1] = border_line(x[:, :, :2], (2, 2, 2, 0), 2, False)
    out[:, :, -1:] = border_line(x[:, :, -2:], (2, 2, 0, 2), 2, True)
    out[:, :, :, :1] = border_line(x[:, :, :, :2], (2, 0, 2, 2), 3, False)
    out[:, :, :, -1:] = border_line(x[:, :, :, -2:], (0, 2, 2, 2), 3, True)
    return out


class UpBlock(nn.Module):
    """Nearest x2 upsampling, 5x5 conv (reflect padding) halving the width, layer norm, ReLU."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = reflect_conv(width, width // 2, 5)
        self.norm = LayerNorm(width // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the phase form wins on large maps (1.5-1.8x fwd+bwd at full width, 64x44 and 128x88 inputs, CPU);
        # on small ones its extra launches cost more than they save (measured 0.4-0.8x at the demo size)
        if x.shape[1] >= 128 and x.shape[2] * x.shape[3] >= 1024:
            x = upsample_conv5(x, self.conv)
        else:
            x = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return F.relu(self.norm(x))


class Decoder(nn.Module):
    """(pose features [B,C,h,w], tokens [B,K,C]) -> (image [B,3,4h,4w], [logits [B,K,h,w]] * attention_blocks)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        c, k = config.width, config.regions
        self.style_fusion = nn.Linear(k * c, k * c)
        # upstream sizes the MLP for every residual block (n_res) but only the AdaIN blocks read their slice
        self.adain_mlp = nn.Sequential(nn.Linear(k * c, config.mlp_width), nn.ReLU(inplace=True),
                                       nn.Linear(config.mlp_width, config.mlp_width), nn.ReLU(inplace=True),
                                       nn.Linear(config.mlp_width, config.res_blocks * 4 * c))
        self.adain_blocks = nn.ModuleList(AdaINResBlock(c) for _ in range(config.adain_blocks))
        self.style_distribution = nn.ModuleList(StyleDistributionBlock(c, k) for _ in range(config.attention_blocks))
        self.modulated_blocks = nn.ModuleList(ModulatedResBlock(c) for _ in range(config.modulated_blocks))
        self.upsample = nn.Sequential(UpBlock(c), UpBlock(c // 2))
        self.to_image = reflect_conv(c // 4, 3, 7)

    def forward(self, pose_features: torch.Tensor, tokens: torch.Tensor, per_sample: bool = False):
        width = pose_features.shape[1]
        style = F.relu(self.style_fusion(tokens.flatten(1)))
        adain_params = self.adain_mlp(style).split(4 * width, dim=1)

        x = pose_features
        for block, params in zip(self.adain_blocks, adain_params):
            x = block(x, params)
        attention_logits = []
        for block in self.style_distribution:  # each block sees the original tokens and pose features
            x, logits = block(x, pose_features, tokens)
            attention_logits.append(logits)

        attended, x = x, pose_features  # the modulated blocks restart from the pose features
        for block in self.modulated_blocks:
            x = block(x, attended, per_sample)
        image = torch.tanh(self.to_image(self.upsample(x)))
        return image, attention_logits


class Generator(nn.Module):
    """CASD generator (upstream ``ADGen``).

    ``forward(pose [B,30,H,W], source_image [B,3,H,W] in [-1,1], source_parsing [B,8,H,W])``
    -> ``(image [B,3,H,W] in [-1,1], [attn_a, attn_b] each [B,8,H/4,W/4])``; H, W divisible by 4.

    As upstream, the attention-modulated norm takes its statistics over the
    whole batch, so a generated image depends on the other samples of its
    batch; ``GeneratorConfig(modulated_norm="sample")`` makes samples
    independent: a batch of N then gives what upstream gives for N batches of
    one (upstream's test setting), e.g. for batched generation. The config is
    the only switch: :meth:`set_modulated_norm` changes it on a built or loaded
    generator (the weights are the same for both).

    ``pretrained_vgg=False`` skips loading the style encoder's VGG19 weights
    (use it when a checkpoint that carries them is loaded next).
    :attr:`vgg_pretrained` says whether the frozen VGG holds real weights.
    """

    def __init__(self, config: GeneratorConfig | None = None, *, pretrained_vgg: bool = True):
        super().__init__()
        self.config = config = config or GeneratorConfig()
        self.style_encoder = StyleEncoder(config, pretrained_vgg=pretrained_vgg)
        self.pose_encoder = PoseEncoder(config)
        self.decoder = Decoder(config)
        self.reset_parameters()

    @property
    def vgg_pretrained(self) -> bool:
        """True also without a style VGG (``style_vgg: false``): then no frozen features are random."""
        vgg = self.style_encoder.vgg
        return True if vgg is None else vgg.pretrained

    @vgg_pretrained.setter
    def vgg_pretrained(self, value: bool) -> None:
        if self.style_encoder.vgg is not None:
            self.style_encoder.vgg.pretrained = bool(value)

    def set_modulated_norm(self, mode: str) -> "Generator":
        """Statistics of the attention-modulated norm from now on: ``"batch"`` | ``"sample"``; returns self."""
        self.config = dataclasses.replace(self.config, modulated_norm=mode)  # validated by GeneratorConfig
        return self

    def reset_parameters(self) -> None:
        """Conv / linear weights N(0, 0.02) (upstream) or N(0, 1 / fan_in) (``init: fan_in``), biases as
        PyTorch's default; the frozen VGG untouched.

        0.02 is about 1 / sqrt(fan_in) at upstream's width 256 (3x3 convs: fan_in 2304); at a width of 32 the
        same std makes each layer shrink its input ~3x, and the style path (five layers deep) starts ~100x
        weaker than upstream's. ``fan_in`` keeps each layer's gain near 1 at any width.
        """
        for name, module in self.named_modules():
            if name.startswith("style_encoder.vgg"):
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                std = 0.02 if self.config.init == "upstream" else fan_in ** -0.5
                nn.init.normal_(module.weight, 0.0, std)

    def encode_style(self, source_image: torch.Tensor, source_parsing: torch.Tensor) -> torch.Tensor:
        """source_image [B,3,H,W], source_parsing [B,K,H,W] -> style tokens [B,K,C]."""
        return self.style_encoder(source_image, source_parsing)

    def decode(self, pose: torch.Tensor, style_tokens: torch.Tensor):
        """pose [B,30,H,W], style_tokens [B,K,C] -> (image [B,3,H,W], [attention logits [B,K,H/4,W/4]] * 2)."""
        if pose.shape[-2] % 4 or pose.shape[-1] % 4:
            raise ValueError(f"generator input height and width must be divisible by 4, got {tuple(pose.shape[-2:])}")
        return self.decoder(self.pose_encoder(pose), style_tokens, self.config.modulated_norm == "sample")

    def forward(self, pose: torch.Tensor, source_image: torch.Tensor, source_parsing: torch.Tensor):
        return self.decode(pose, self.encode_style(source_image, source_parsing))


def predicted_parsing(attention_logits: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """The style-distribution blocks' logits, each [B, K, h, w] -> predicted target parsing [B, H, W] uint8.

    Argmax over regions of the blocks' averaged region probabilities, upsampled
    bilinearly to ``size`` (how the AMCE loss reads these maps).
    """
    probabilities = torch.stack([a.float().softmax(dim=1) for a in attention_logits]).mean(dim=0)
    probabilities = F.interpolate(probabilities, size=tuple(size), mode="bilinear", align_corners=False)
    return probabilities.argmax(dim=1).to(torch.uint8)
