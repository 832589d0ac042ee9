"""LIP human parsing with SCHP (self-correction human parsing, ResNet-101 + CE2P heads), inference only.

The network is written here because no maintained package runs it; the
authors' LIP checkpoint (``exp-schp-201908261155-lip.pth``) loads strictly
through :func:`upstream_parser_names`. Pre- and post-processing follow the authors'
``simple_extractor.py``: BGR input, ImageNet mean/std in BGR order, the whole
image affinely fitted (aspect kept, zero border) into 473x473, the fusion
branch's logits upsampled (bilinear, corners aligned), warped back to the image
and arg-maxed. No flip test (the authors' extractor has none).

Their batch norm is InPlace-ABN, whose kernel scales by ``|weight| + eps``
rather than ``weight``: :class:`ActivatedBatchNorm` keeps that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from casd.checkpoints import load_checkpoint
from casd.errors import CasdError, DataError

NUM_LIP_CLASSES = 20
INPUT_SIZE = (473, 473)  # (H, W) of the authors' LIP setting
MEAN_BGR = (0.406, 0.456, 0.485)
STD_BGR = (0.225, 0.224, 0.229)


@dataclass(frozen=True)
class ParserConfig:
    """Widths of the network; the defaults are the authors' ResNet-101 model."""

    width: int = 64            # ResNet base width (layer outputs 4w, 8w, 16w, 32w)
    blocks: tuple[int, int, int, int] = (3, 4, 23, 3)
    context: int = 512         # pyramid-pooling output channels
    head: int = 256            # decoder / edge / fusion channels
    skip: int = 48             # low-level skip channels in the decoder
    num_classes: int = NUM_LIP_CLASSES

    @classmethod
    def tiny(cls) -> "ParserConfig":
        """A few-thousand-parameter variant for tests."""
        return cls(width=4, blocks=(1, 1, 1, 1), context=8, head=8, skip=4)


class ActivatedBatchNorm(nn.Module):
    """InPlace-ABN at inference: ``(x - mean) / sqrt(var + eps) * (|weight| + eps) + bias``, then leaky ReLU (0.01).

    ``activation=False``: no activation (the authors' backbone norms, each followed by a ReLU).
    """

    def __init__(self, channels: int, activation: bool = True, eps: float = 1e-5):
        super().__init__()
        self.activation = activation
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = (self.weight.abs() + self.eps) * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        x = x * scale[:, None, None] + shift[:, None, None]
        return F.leaky_relu(x, 0.01) if self.activation else x


class ConvNorm(nn.Sequential):
    """Bias-free convolution + :class:`ActivatedBatchNorm` (leaky ReLU)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False)
        self.norm = ActivatedBatchNorm(cout)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 strided / dilated, 1x1 x4) with a projection shortcut where shapes change."""

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = ActivatedBatchNorm(planes, activation=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = ActivatedBatchNorm(planes, activation=False)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = ActivatedBatchNorm(planes * 4, activation=False)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                            ActivatedBatchNorm(planes * 4, activation=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _layer(cin: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(Bottleneck(cin, planes, stride, dilation),
                         *[Bottleneck(planes * 4, planes, 1, dilation) for _ in range(blocks - 1)])


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class PyramidPooling(nn.Module):
    """PSP context: average pools to 1, 2, 3, 6 cells, each reduced and upsampled, concatenated with the input."""

    def __init__(self, cin: int, cout: int, sizes=(1, 2, 3, 6)):
        super().__init__()
        self.sizes = sizes
        self.stages = nn.ModuleList([ConvNorm(cin, cout) for _ in sizes])
        self.fuse = ConvNorm(cin + len(sizes) * cout, cout, kernel=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(stage(F.adaptive_avg_pool2d(x, size)), x) for size, stage in zip(self.sizes, self.stages)]
        return self.fuse(torch.cat(pooled + [x], 1))


class ParsingDecoder(nn.Module):
    """Context features (1/8) + layer1 features (1/4) -> parsing logits and the 1/4-resolution features."""

    def __init__(self, context: int, low: int, head: int, skip: int, num_classes: int):
        super().__init__()
        self.reduce_context = ConvNorm(context, head)
        self.reduce_skip = ConvNorm(low, skip)
        self.fuse1 = ConvNorm(head + skip, head)
        self.fuse2 = ConvNorm(head, head)
        self.classifier = nn.Conv2d(head, num_classes, 1)

    def forward(self, context: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([_resize(self.reduce_context(context), low), self.reduce_skip(low)], 1)
        x = self.fuse2(self.fuse1(x))
        return self.classifier(x), x


class EdgeBranch(nn.Module):
    """Edge logits (2 classes) and features from layers 1-3, at layer 1's resolution."""

    def __init__(self, channels: tuple[int, int, int], head: int):
        super().__init__()
        self.reduce = nn.ModuleList([ConvNorm(c, head) for c in channels])
        self.classifier = nn.Conv2d(head, 2, 3, padding=1)  # shared by the three levels
        self.fuse = nn.Conv2d(3 * 2, 2, 1)

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reduced = [reduce(f) for reduce, f in zip(self.reduce, features)]
        edges = [self.classifier(r) for r in reduced]
        like = features[0]
        edge = self.fuse(torch.cat([edges[0]] + [_resize(e, like) for e in edges[1:]], 1))
        return edge, torch.cat([reduced[0]] + [_resize(r, like) for r in reduced[1:]], 1)


class SCHPParser(nn.Module):
    """SCHP's AugmentCE2P network.

    ``forward(x [B, 3, H, W])`` -> ``(parsing, fusion, edge)`` logits, each at
    ``ceil(H/4) x ceil(W/4)``: [B, 20, ...], [B, 20, ...], [B, 2, ...]. The
    authors' extractor uses ``fusion``.
    """

    def __init__(self, config: ParserConfig | None = None):
        super().__init__()
        cfg = self.config = config or ParserConfig()
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w, 3, 2, padding=1, bias=False)
        self.bn1 = ActivatedBatchNorm(w, activation=False)
        self.conv2 = nn.Conv2d(w, w, 3, padding=1, bias=False)
        self.bn2 = ActivatedBatchNorm(w, activation=False)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn3 = ActivatedBatchNorm(2 * w, activation=False)
        self.layer1 = _layer(2 * w, w, cfg.blocks[0])
        self.layer2 = _layer(4 * w, 2 * w, cfg.blocks[1], stride=2)
        self.layer3 = _layer(8 * w, 4 * w, cfg.blocks[2], stride=2)
        self.layer4 = _layer(16 * w, 8 * w, cfg.blocks[3], dilation=2)
        self.context = PyramidPooling(32 * w, cfg.context)
        self.decoder = ParsingDecoder(cfg.context, 4 * w, cfg.head, cfg.skip, cfg.num_classes)
        self.edge = EdgeBranch((4 * w, 8 * w, 16 * w), cfg.head)
        self.fusion = nn.Sequential(ConvNorm(4 * cfg.head, cfg.head), nn.Conv2d(cfg.head, cfg.num_classes, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(x, 3, 2, padding=1)
        x2 = self.layer1(x)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        context = self.context(self.layer4(x4))
        parsing, parsing_features = self.decoder(context, x2)
        edge, edge_features = self.edge(x2, x3, x4)
        fusion = self.fusion(torch.cat([parsing_features, edge_features], 1))
        return parsing, fusion, edge


# --------------------------------------------------------------------------- the authors' names

_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var")


def upstream_parser_names(config: ParserConfig | None = None) -> dict[str, str]:
    """Own state-dict key -> key in the authors' checkpoint (without DataParallel's ``module.``), for every entry."""
    cfg = config or ParserConfig()
    names: dict[str, str] = {}

    def conv(own: str, up: str, bias: bool = False) -> None:
        names[f"{own}.weight"] = f"{up}.weight"
        if bias:
            names[f"{own}.bias"] = f"{up}.bias"

    def norm(own: str, up: str) -> None:
        names.update({f"{own}.{f}": f"{up}.{f}" for f in _NORM_FIELDS})

    def conv_norm(own: str, up_conv: str, up_norm: str) -> None:
        conv(f"{own}.conv", up_conv)
        norm(f"{own}.norm", up_norm)

    for i in (1, 2, 3):  # deep stem; ResNet blocks keep the authors' (torchvision's) names
        conv(f"conv{i}", f"conv{i}")
        norm(f"bn{i}", f"bn{i}")
    cin = 2 * cfg.width
    for layer, (blocks, planes, stride) in enumerate(zip(cfg.blocks, (1, 2, 4, 8), (1, 2, 2, 1)), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            for i in (1, 2, 3):
                conv(f"{p}.conv{i}", f"{p}.conv{i}")
                norm(f"{p}.bn{i}", f"{p}.bn{i}")
            if b == 0 and (stride != 1 or cin != planes * cfg.width * 4):
                conv(f"{p}.downsample.0", f"{p}.downsample.0")
                norm(f"{p}.downsample.1", f"{p}.downsample.1")
            cin = planes * cfg.width * 4
    for s in range(4):  # context_encoding.stages.<s> = (pool, conv, norm)
        conv_norm(f"context.stages.{s}", f"context_encoding.stages.{s}.1", f"context_encoding.stages.{s}.2")
    conv_norm("context.fuse", "context_encoding.bottleneck.0", "context_encoding.bottleneck.1")
    conv_norm("decoder.reduce_context", "decoder.conv1.0", "decoder.conv1.1")
    conv_norm("decoder.reduce_skip", "decoder.conv2.0", "decoder.conv2.1")
    conv_norm("decoder.fuse1", "decoder.conv3.0", "decoder.conv3.1")
    conv_norm("decoder.fuse2", "decoder.conv3.2", "decoder.conv3.3")
    conv("decoder.classifier", "decoder.conv4", bias=True)
    for i in range(3):
        conv_norm(f"edge.reduce.{i}", f"edge.conv{i + 1}.0", f"edge.conv{i + 1}.1")
    conv("edge.classifier", "edge.conv4", bias=True)
    conv("edge.fuse", "edge.conv5", bias=True)
    conv_norm("fusion.0", "fushion.0", "fushion.1")  # (sic): the authors spell it "fushion"; fushion.2 is dropout
    conv("fusion.1", "fushion.3", bias=True)
    return names


class ParserCheckpointMismatch(DataError):
    """The checkpoint's names or shapes differ from the network's (all differences in one line)."""


def convert_upstream_state_dict(state: Mapping[str, torch.Tensor], config: ParserConfig | None = None,
                                source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The authors' state dict (``module.`` prefixes allowed) -> own state dict; every mismatch in one error."""
    cfg = config or ParserConfig()
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    names = upstream_parser_names(cfg)
    with torch.device("meta"):  # shapes only
        reference = SCHPParser(cfg).state_dict()
    missing = sorted(up for up in names.values() if up not in state)
    unexpected = sorted(set(state) - set(names.values()))
    shapes = [f"{up} {tuple(state[up].shape)} (expected {tuple(reference[own].shape)})"
              for own, up in names.items() if up in state and state[up].shape != reference[own].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing: {', '.join(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {', '.join(unexpected)}" if unexpected else "",
                 f"{len(shapes)} of another shape: {', '.join(shapes)}" if shapes else ""]
        raise ParserCheckpointMismatch(source, "not an SCHP LIP parser checkpoint of this configuration; "
                                       + "; ".join(p for p in parts if p))
    return {own: state[up].float() for own, up in names.items()}


def load_parser(path: str | os.PathLike, config: ParserConfig | None = None,
                device: str | torch.device = "cpu") -> SCHPParser:
    """The authors' checkpoint (``{"state_dict": ...}`` or a bare state dict) -> :class:`SCHPParser` in eval mode."""
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise DataError(path, "not a parser checkpoint: expected a state dict")
    cfg = config or ParserConfig()
    with torch.device("meta"):  # no random initialisation of 66M values that are overwritten at once
        model = SCHPParser(cfg)
    model.load_state_dict(convert_upstream_state_dict(state, cfg, str(path)), assign=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------- the authors' pre- and post-processing

def _cv2():
    try:
        import cv2
    except ImportError:  # pragma: no cover - installed with the annotate extra (rtmlib needs it)
        raise CasdError("casd annotate needs OpenCV: pip install 'casd[annotate]'") from None
    return cv2


def fit_transform(height: int, width: int, input_size: tuple[int, int] = INPUT_SIZE,
                  inverse: bool = False) -> np.ndarray:
    """2x3 affine (image -> network input; ``inverse``: back) of the authors' extractor: whole image, aspect kept.

    As their ``_xywh2cs`` + ``get_affine_transform``: box ``[0, 0, W-1, H-1]``,
    widened or heightened to the input's aspect; scale ``(input_W - 1) / box_W``.
    """
    cv2 = _cv2()
    box_w, box_h = float(width - 1), float(height - 1)
    center = np.array([box_w * 0.5, box_h * 0.5], np.float32)  # x + w/2 with x = 0
    aspect = input_size[1] / input_size[0]
    if box_w > aspect * box_h:
        box_h = box_w / aspect
    elif box_w < aspect * box_h:
        box_w = box_h * aspect
    dst_w, dst_h = input_size[1], input_size[0]
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([0, box_w * -0.5], np.float32)
    dst[0] = [(dst_w - 1) * 0.5, (dst_h - 1) * 0.5]
    dst[1] = dst[0] + np.array([0, (dst_w - 1) * -0.5], np.float32)
    for pts in (src, dst):  # third point: the first two's difference turned by 90 degrees
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
    # the inverse is solved from the same points, as theirs (not inverted numerically)
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


def preprocess(image_rgb: np.ndarray, input_size: tuple[int, int] = INPUT_SIZE) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> network input [1, 3, *input_size]."""
    cv2 = _cv2()
    h, w = image_rgb.shape[:2]
    trans = fit_transform(h, w, input_size)
    bgr = np.ascontiguousarray(image_rgb[..., ::-1])
    warped = cv2.warpAffine(bgr, trans, (int(input_size[1]), int(input_size[0])), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    x = torch.from_numpy(warped).permute(2, 0, 1).float() / 255.0
    x = (x - torch.tensor(MEAN_BGR)[:, None, None]) / torch.tensor(STD_BGR)[:, None, None]
    return x[None]


def postprocess(logits: torch.Tensor, height: int, width: int,
                input_size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """Fusion logits [1, C, h, w] -> uint8 label map [height, width] (the authors' upsample, inverse warp, argmax)."""
    cv2 = _cv2()
    up = F.interpolate(logits.float(), size=tuple(input_size), mode="bilinear", align_corners=True)[0]
    up = up.permute(1, 2, 0).cpu().numpy()
    inverse = fit_transform(height, width, input_size, inverse=True)
    channels = [cv2.warpAffine(np.ascontiguousarray(up[:, :, c]), inverse, (int(width), int(height)),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                for c in range(up.shape[2])]
    return np.argmax(np.stack(channels, axis=2), axis=2).astype(np.uint8)


@torch.no_grad()
def parse(model: SCHPParser, image_rgb: np.ndarray, input_size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> LIP-20 label ids, uint8 [H, W]."""
    h, w = image_rgb.shape[:2]
    device = next(model.parameters()).device
    _, fusion, _ = model(preprocess(image_rgb, input_size).to(device))
    return postprocess(fusion, h, w, input_size)
