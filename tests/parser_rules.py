"""The rule behind tests/fixtures/annotate/parser_equivalence.pt (shared by the test and tools/make_parser_fixtures.py).

Weights are drawn per name of the authors' state dict, in sorted order, from
one seeded generator, so the test redraws exactly what the authors' network
ran with. The image is drawn from the same kind of generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SEED = 1155
IMAGE_SIZE = (30, 22)     # (H, W) of the test photo (portrait, like a person crop)
INPUT_SIZE = (41, 41)     # the authors' 473x473, reduced: same code path, small fixture, fast test


def rule_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, torch.Tensor]:
    """Deterministic float32 weights for the authors' names -> shapes (both networks then run in float64).

    Convolutions He-scaled; norms with weights of both signs (their kernel uses
    ``|weight|``) and the last norm of each residual block damped, so that 101
    layers of random weights keep finite, varied logits.
    """
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        field = name.rsplit(".", 1)[-1]
        if field == "weight" and len(shape) == 4:
            value = torch.randn(shape, generator=g, dtype=torch.float32) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif field == "weight":
            sign = torch.where(torch.rand(shape, generator=g, dtype=torch.float32) < 0.2, -1.0, 1.0)
            value = sign * (0.5 + torch.rand(shape, generator=g, dtype=torch.float32))
            if name.endswith("bn3.weight") or name.endswith("downsample.1.weight"):
                value = value * 0.3
        elif field == "running_var":
            value = 0.75 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float32)
        else:  # biases and running means
            value = 0.1 * torch.randn(shape, generator=g, dtype=torch.float32)
        state[name] = value
    return state


def rule_image(seed: int = SEED) -> np.ndarray:
    """uint8 RGB [H, W, 3]: a bright background with a darker smooth blob (not a constant image)."""
    g = torch.Generator().manual_seed(seed + 1)
    h, w = IMAGE_SIZE
    noise = torch.rand((h, w, 3), generator=g) * 60
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    blob = torch.exp(-(((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2))[..., None]
    return (200 - 150 * blob + noise - 30).clamp(0, 255).to(torch.uint8).numpy()
