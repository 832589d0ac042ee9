"""Write tests/fixtures/annotate/parser_equivalence.pt: the authors' SCHP network and extractor on random weights.

Usage::

    python tools/make_parser_fixtures.py SCHP_DIR [--out tests/fixtures/annotate/parser_equivalence.pt]

SCHP_DIR is a checkout of github.com/GoGoDuck912/Self-Correction-Human-Parsing;
its ``networks/AugmentCE2P.py``, ``datasets/simple_extractor_dataset.py`` and
``utils/transforms.py`` are imported from there at run time, never copied here.

One replacement: their ``modules`` package (InPlace-ABN) compiles a C++/CUDA
extension on import. It is replaced by a pure-torch ``InPlaceABNSync`` that
computes what that extension's forward kernel computes at inference (their
``inplace_abn_cpu.cpp`` / ``inplace_abn_cuda.cu``, ``training=False``):
``(x - running_mean) * rsqrt(running_var + eps) * (|weight| + eps) + bias``,
then ``leaky_relu(slope)`` for ``activation="leaky_relu"`` or nothing for
``"none"``. Nothing else of theirs is changed.

Stored: the test image (uint8 RGB), their preprocessed input (float32, from
``SimpleFolderDataset`` reading the image from a PNG with OpenCV), their
network's three outputs on that input in float64 (weights from
``parser_rules.rule_state_dict``), and their final label map (their upsample,
``transform_logits`` and argmax applied to the float32 fusion logits), and the same post-processing
of seeded random logits (many classes competing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from casd.checkpoints import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fixture rules live with the tests
from parser_rules import INPUT_SIZE, SEED, rule_image, rule_state_dict  # noqa: E402


def inplace_abn_standin() -> types.ModuleType:
    """A ``modules`` package whose InPlaceABNSync is the extension's inference forward in plain torch."""

    class InPlaceABNSync(torch.nn.Module):
        def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, activation="leaky_relu", slope=0.01):
            super().__init__()
            self.eps, self.activation, self.slope = eps, activation, slope
            self.weight = torch.nn.Parameter(torch.ones(num_features))
            self.bias = torch.nn.Parameter(torch.zeros(num_features))
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

        def forward(self, x):
            assert not self.training, "the stand-in covers inference only"
            shape = (1, -1, 1, 1)
            x = (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var.view(shape) + self.eps)
            x = x * (self.weight.abs() + self.eps).view(shape) + self.bias.view(shape)
            if self.activation == "leaky_relu":
                return F.leaky_relu(x, self.slope)
            assert self.activation == "none", self.activation
            return x

    module = types.ModuleType("modules")
    module.InPlaceABNSync = InPlaceABNSync
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schp_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/annotate/parser_equivalence.pt"))
    args = parser.parse_args(argv)
    sys.modules["modules"] = inplace_abn_standin()
    sys.path.insert(0, str(args.schp_dir.resolve()))
    import torchvision.transforms as transforms
    from datasets.simple_extractor_dataset import SimpleFolderDataset
    from networks.AugmentCE2P import resnet101
    from utils.transforms import transform_logits

    model = resnet101(num_classes=20, pretrained=None).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(rule_state_dict(shapes))
    image = rule_image()
    with tempfile.TemporaryDirectory() as tmp:
        Image.fromarray(image).save(Path(tmp) / "person.png")
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize(mean=[0.406, 0.456, 0.485], std=[0.225, 0.224, 0.229])])
        x, meta = SimpleFolderDataset(root=tmp, input_size=list(INPUT_SIZE), transform=transform)[0]
    x = x[None]
    with torch.no_grad():
        model.double()
        (parsing, fusion), (edge,) = model(x.double())
        up = torch.nn.Upsample(size=INPUT_SIZE, mode="bilinear", align_corners=True)(fusion.float())
        logits = transform_logits(up[0].permute(1, 2, 0).numpy(), meta["center"], meta["scale"], meta["width"],
                                  meta["height"], input_size=list(INPUT_SIZE))
        labels = np.argmax(logits, axis=2).astype(np.uint8)
        # the same post-processing on logits with many competing classes (random weights give few)
        random_logits = torch.randn(fusion.shape, generator=torch.Generator().manual_seed(SEED + 2))
        up = torch.nn.Upsample(size=INPUT_SIZE, mode="bilinear", align_corners=True)(random_logits)
        random_labels = np.argmax(transform_logits(up[0].permute(1, 2, 0).numpy(), meta["center"], meta["scale"],
                                                   meta["width"], meta["height"], input_size=list(INPUT_SIZE)),
                                  axis=2).astype(np.uint8)
    save_checkpoint(args.out, {
        "seed": SEED, "input_size": INPUT_SIZE, "image": torch.from_numpy(image),
        "input": x.float(), "parsing": parsing, "fusion": fusion, "edge": edge,
        "labels": torch.from_numpy(labels),
        "random_logits": random_logits, "random_labels": torch.from_numpy(random_labels),
    })
    print(f"wrote {args.out}: fusion logits {tuple(fusion.shape)} range [{fusion.min():.3g}, {fusion.max():.3g}], "
          f"{len(np.unique(labels))} labels in the map, {len(np.unique(random_labels))} from random logits")


if __name__ == "__main__":
    main()
