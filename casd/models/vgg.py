"""Frozen VGG feature extractors: the style encoder's taps and the VGG-based losses.

The layers are torchvision's ``vgg19().features`` (so that torchvision's
``vgg19-dcbb9e9d.pth`` and upstream checkpoints load by index), truncated after
the deepest layer anybody asks for: nothing past it is built or run.

Weights come from a *spec* string, the value of ``model.vgg_weights`` /
``loss.vgg_weights`` in params.yaml:

- a path (file, or folder holding ``vgg19-dcbb9e9d.pth``),
- ``torchvision``: the standard torch hub cache, via :func:`casd.weights.locate`,
- ``none``: random frozen features (``warnings.warn``; for demos and tests:
  :attr:`VGG19Features.pretrained` is then False so training can record it).

``layout="upstream"`` reads upstream CASD's ``vgg_conv.pth`` instead (the CX
loss's VGG19, keys ``conv1_1.weight`` ... ``conv5_4.bias``; same topology as
torchvision's, other weights).

A missing file is a :class:`casd.errors.WeightsError` naming the file, where it
was looked for and how to get it (never a download).
"""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import nn

from casd.errors import ConfigError, WeightsError

# torchvision vgg19().features, index -> name ("conv3_2", "relu3_2", "pool3"...)
VGG19_LAYERS: tuple[str, ...] = (
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "conv3_4", "relu3_4", "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "conv4_4", "relu4_4", "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "conv5_4", "relu5_4", "pool5",
)
VGG19_INDEX: dict[str, int] = {name: i for i, name in enumerate(VGG19_LAYERS)}

# ImageNet statistics torchvision's VGG was trained with (inputs in [0, 1])
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NO_WEIGHTS = ("none", "random")


def _vgg19_layers(count: int) -> nn.Sequential:
    """The first ``count`` modules of torchvision's VGG19 ``features``, with torchvision's random init.

    Built from torchvision's layer table, not ``vgg19()``: that would also build
    (and initialise, ~3 s) the 120M-value classifier nobody here uses.
    """
    from torchvision.models.vgg import cfgs, make_layers

    layers = nn.Sequential(*list(make_layers(cfgs["E"], batch_norm=False).children())[:count])
    for module in layers:
        if isinstance(module, nn.Conv2d):  # torchvision VGG's init
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return layers


def load_vgg19_features(spec: str, purpose: str) -> dict[str, torch.Tensor] | None:
    """State dict of torchvision's VGG19 ``features`` (keys ``"0.weight"``...), or None for ``none``.

    ``spec``: a path, ``torchvision`` or ``none`` (see the module docstring);
    ``purpose`` names the user in the warning (e.g. ``"model.vgg_weights"``).
    """
    from casd import weights

    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{purpose}: expected a path, 'torchvision' or 'none', got {spec!r}")
    if spec.lower() in NO_WEIGHTS:
        warnings.warn(f"{purpose}: none -> VGG19 features are RANDOM (frozen); results are not comparable with "
                      f"pretrained runs (fine for demos and tests)", stacklevel=3)
        return None
    state = weights.load_state_dict("vgg19", None if spec == "torchvision" else spec)
    prefix = "features." if any(k.startswith("features.") for k in state) else ""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):][0].isdigit()}


def load_upstream_vgg_conv(spec: str, purpose: str) -> dict[str, torch.Tensor]:
    """Upstream's ``vgg_conv.pth`` (a file, or a folder holding it) -> torchvision-index state dict."""
    from casd import weights

    path = weights.locate("vgg-conv-cx", spec)
    return upstream_vgg_conv_state(weights.load_state_dict("vgg-conv-cx", path), f"{path} ({purpose})")


def upstream_vgg_conv_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """``{"conv3_2.weight": ...}`` (upstream's VGG class) -> ``{"12.weight": ...}`` (torchvision ``features``)."""
    convs = [name for name in VGG19_LAYERS if name.startswith("conv")]
    wanted = [f"{name}.{field}" for name in convs for field in ("weight", "bias")]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise WeightsError(f"{source}: not upstream's vgg_conv.pth layout (keys conv1_1.weight ... conv5_4.bias); "
                           f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
    return {f"{VGG19_INDEX[key.split('.')[0]]}.{key.split('.')[1]}": state[key] for key in wanted}


class VGG19Features(nn.Module):
    """Frozen VGG19 ``features`` up to ``last_layer``; ``forward(x, layers)`` taps named layers.

    The input goes in as given (upstream feeds images in [-1, 1] to the style
    encoder and the content/style losses); :func:`imagenet_normalize` is there
    for the terms that normalise first. Parameters never require grad and the
    module stays in eval mode (it has no train-time behaviour anyway).

    Attributes:
        pretrained: True when real weights were loaded (False for ``none`` or
            ``load=False``, until a checkpoint sets them and says so).
    """

    def __init__(self, last_layer: str = "relu5_4", weights: str = "torchvision", *, load: bool = True,
                 purpose: str = "vgg_weights", layout: str = "torchvision"):
        super().__init__()
        if last_layer not in VGG19_INDEX:
            raise ConfigError(f"unknown VGG19 layer {last_layer!r}; known: {', '.join(VGG19_LAYERS)}")
        self.last_index = VGG19_INDEX[last_layer]
        self.layers = _vgg19_layers(self.last_index + 1)
        self.pretrained = False
        if load:
            state = (load_upstream_vgg_conv(weights, purpose) if layout == "upstream"
                     else load_vgg19_features(weights, purpose))
            if state is not None:
                own = self.layers.state_dict()
                self.layers.load_state_dict({k: state[k] for k in own})
                self.pretrained = True
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        # frozen feature extractor: always eval (no dropout / batch norm inside, but keep the intent explicit)
        return super().train(False)

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """x [B,3,H,W] -> {name: features} for each requested layer name (e.g. ``relu3_2``)."""
        wanted = {VGG19_INDEX[name]: name for name in layers}
        if any(name.startswith("conv") for name in wanted.values()):
            # the ReLUs work in place (memory): a conv tap would be overwritten by the ReLU after it
            raise ValueError(f"tap ReLU or pool layers, not convolutions: {sorted(wanted.values())}")
        deepest = max(wanted)
        if deepest > self.last_index:
            raise ValueError(f"VGG19 built up to {VGG19_LAYERS[self.last_index]}, asked for {wanted[deepest]}")
        out = {}
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in wanted:
                out[wanted[index]] = x
            if index == deepest:
                break
        return out


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def device_constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``torch.tensor(values)`` on ``device``, made once per (values, device, dtype): a host-to-device copy
    inside every training step would make the host wait for the device each time."""
    key = (values, str(device), dtype)
    tensor = _CONSTANTS.get(key)
    if tensor is None:
        with torch.inference_mode(False):  # also usable by autograd when first made under inference_mode
            tensor = _CONSTANTS[key] = torch.tensor(values, dtype=dtype, device=device)
    return tensor


def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """Image in [-1, 1] [B,3,H,W] -> ImageNet-normalised input (as upstream's perceptual L1 term)."""
    mean = device_constant(IMAGENET_MEAN, image.device, image.dtype).view(1, 3, 1, 1)
    std = device_constant(IMAGENET_STD, image.device, image.dtype).view(1, 3, 1, 1)
    return ((image + 1) / 2 - mean) / std
