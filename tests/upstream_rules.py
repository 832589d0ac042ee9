"""Deterministic weights and inputs for the upstream-equivalence fixtures (tests/fixtures/upstream_*.pt).

The same rule runs in two places: in the fixture script (outside the repo,
against upstream's own ``ADGen``) and in tests/test_generator.py (against
:class:`casd.models.Generator`, through :func:`casd.checkpoints.load_upstream_generator`).
Nothing here is upstream code; only key names and shapes are shared.

Weight rule (:func:`rule_state_dict`), for each (key, shape) of an upstream-named
state dict, with a CPU ``torch.Generator`` seeded by the first 8 bytes of
SHA-256(key) (so a value depends only on its key):

- ``running_mean`` -> 0, ``running_var`` -> 1 (AdaIN's dummy buffers);
- decoder attention gammas ``dec.gamma*`` -> 0.25 + 0.5 * U(0, 1) (non-zero, so
  the attention paths contribute);
- mixing ratios ``rho`` -> U(0, 1); norm scales (``gamma``, and 1-D ``weight``
  of affine instance norms) -> 1 + 0.1 N(0, 1); shifts (``beta``) -> 0.1 N(0, 1);
- conv / linear ``weight`` (>= 2 dims) -> N(0, 1) / sqrt(fan_in) (keeps
  activations O(1) through the 16 VGG convs and the decoder, unlike a flat
  0.05 which saturates tanh), a further x 1/4 for the attention query and key
  (``dec.query{n}_conv``, ``dec.key{n}_conv``: otherwise the logits reach +-130
  and float32 rounding alone nears 1e-4); ``bias`` -> 0.05 N(0, 1).

Input rule (:func:`rule_inputs`): seeded torch.Generator; pose = 18 one-hot
keypoint maps (one random pixel each, some missing) + 12 limb maps in (0, 1];
source image U(-1, 1); parsing = one-hot of a blocky random label map (labels
drawn per 8x8 cell), with ``empty_regions[b]`` labels removed from sample b.

How the fixtures were made (to regenerate, e.g. after a deliberate change):

1. ``mkdir -p /tmp/upstream_casd/models && git -C <CASD mirror> show HEAD:models/CASD.py
   > /tmp/upstream_casd/models/CASD.py`` (upstream github.com/xyzhouo/CASD), touch
   ``models/__init__.py``.
2. Patch two lines, as the reference README says: delete the
   ``vgg19.load_state_dict(torch.load('/home/haihuam/...'))`` line (weights
   come from the rule), and in ``AdaptiveInstanceNorm2d.forward`` pass
   ``self.weight.reshape(-1), self.bias.reshape(-1)`` to ``F.batch_norm``.
3. ``python tools/make_equivalence_fixtures.py /tmp/upstream_casd`` (this repo;
   the script imports upstream from that folder at run time, builds
   ``ADGen(3, 64, 2048, 2, 8, 256)``, loads :func:`rule_state_dict` of its own key
   list, runs :data:`CASES` in train and eval mode, and writes the fixture file).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

# name -> (batch, height, width, input seed, regions emptied per sample)
CASES: dict[str, tuple[int, int, int, int, tuple[tuple[int, ...], ...]]] = {
    "256x176": (1, 256, 176, 1, ((3, 4, 6),)),
    "64x44": (3, 64, 44, 2, ((), (1, 2, 3), (3, 5))),
}


_QUERY_KEY = re.compile(r"dec\.(query|key)\d+_conv\.weight$")

# Backward equivalence: gradients of gradient_objective w.r.t. these upstream-named parameters, at this case.
# Small tensors on every path: each encoder, the AdaIN MLP (whose second half is never read: zero gradient),
# both attention blocks (gammas, norms, the detached key path: no gradient at all), modulated blocks, output.
GRADIENT_CASE = "64x44"
GRADIENT_KEYS = (
    "enc_style.conv1.conv.bias", "enc_style.model0.0.bias", "enc_content.block0.model.0.weight",
    "enc_content.model0.2.bias", "dec.fc.fc.bias", "dec.mlp.model.2.fc.bias", "dec.model2.0.conv.weight",
    "dec.gamma3_1", "dec.gamma3_3", "dec.gamma3_style_sa", "dec.gamma4_1", "dec.gamma4_3", "dec.gamma4_style_sa",
    "dec.LN_3_style.rho", "dec.LN_3_pose.gamma", "dec.LN_4_pose_0.beta", "dec.value3_conv_sa.bias",
    "dec.key3_conv.bias", "dec.value4_conv.bias", "dec.query4_conv_0.weight", "dec.FFN4_1.fc1.bias",
    "dec.model0_5.0.models1.1.conv.bias", "dec.model0_7.0.models2.1.conv.bias", "dec.model1.3.norm.gamma",
    "dec.model2.0.conv.bias",
)


def gradient_objective(image: torch.Tensor, attention: list[torch.Tensor]) -> torch.Tensor:
    """A scalar that depends on every output value: mean square of the image and of each attention map."""
    return image.square().mean() + sum(a.square().mean() for a in attention)


def key_generator(key: str) -> torch.Generator:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.Generator().manual_seed(seed)


def rule_tensor(key: str, shape: Iterable[int]) -> torch.Tensor:
    """The value of upstream-named entry ``key`` of ``shape`` under the weight rule."""
    shape = tuple(shape)
    g = key_generator(key)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        return torch.zeros(shape)
    if leaf == "running_var":
        return torch.ones(shape)
    if key.startswith("dec.gamma"):
        return 0.25 + 0.5 * torch.rand(shape, generator=g)
    if leaf == "rho":
        return torch.rand(shape, generator=g)
    if leaf == "gamma" or (leaf == "weight" and len(shape) == 1):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    if leaf == "beta":
        return 0.1 * torch.randn(shape, generator=g)
    if leaf == "weight":
        fan_in = math.prod(shape[1:])
        # query and key at 1/4: their 256-term dot product then stays O(1), like the other logit term
        scale = 0.25 if _QUERY_KEY.match(key) else 1.0
        return scale * torch.randn(shape, generator=g) / math.sqrt(fan_in)
    if leaf == "bias":
        return 0.05 * torch.randn(shape, generator=g)
    raise ValueError(f"no weight rule for {key!r}")


def rule_state_dict(shapes: dict[str, Iterable[int]]) -> dict[str, torch.Tensor]:
    """{upstream key: shape} -> {upstream key: tensor} under the weight rule."""
    return {key: rule_tensor(key, shape) for key, shape in shapes.items()}


def rule_inputs(batch: int, height: int, width: int, seed: int,
                empty_regions: tuple[tuple[int, ...], ...] = (), regions: int = 8):
    """-> (pose [B,30,H,W], source image [B,3,H,W], parsing [B,regions,H,W]), deterministic in the arguments."""
    g = torch.Generator().manual_seed(seed)
    keypoints = torch.zeros(batch, 18, height * width)
    index = torch.randint(0, height * width, (batch, 18), generator=g)
    present = torch.rand(batch, 18, generator=g) > 0.15
    keypoints.scatter_(2, index.unsqueeze(2), present.unsqueeze(2).float())
    limbs = torch.exp(-0.1 * 20 * torch.rand(batch, 12, height, width, generator=g))
    pose = torch.cat([keypoints.view(batch, 18, height, width), limbs], 1)
    image = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
    cells = torch.randint(0, regions, (batch, 1, math.ceil(height / 8), math.ceil(width / 8)), generator=g)
    labels = F.interpolate(cells.float(), scale_factor=8, mode="nearest")[:, 0, :height, :width].long()
    for b, empty in enumerate(empty_regions):
        for region in empty:  # relabel as background (0 is never emptied in CASES)
            labels[b][labels[b] == region] = 0
    parsing = F.one_hot(labels, regions).permute(0, 3, 1, 2).float()
    return pose, image, parsing


REFERENCE_TSV = Path(__file__).parent / "fixtures" / "netG_state_dict.tsv"  # upstream netG: key, shape, count


def reference_shapes() -> dict[str, tuple[int, ...]]:
    """{upstream key: shape} of upstream's released generator (``fixtures/netG_state_dict.tsv``)."""
    rows = [line.split("\t") for line in REFERENCE_TSV.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return {key: tuple(int(n) for n in shape.strip("()").split(",") if n.strip()) for key, shape, *_ in rows}
