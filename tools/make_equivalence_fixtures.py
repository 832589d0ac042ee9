"""Write tests/fixtures/upstream_equivalence.pt: upstream CASD generator outputs under the fixture rule.

Usage (see tests/upstream_rules.py for the whole procedure and the rules)::

    python tools/make_equivalence_fixtures.py /tmp/upstream_casd [--out tests/fixtures/upstream_equivalence.pt]

UPSTREAM_DIR must hold upstream's ``models/CASD.py`` (github.com/xyzhouo/CASD),
patched as tests/upstream_rules.py says; it is imported from there at run time and
never copied into this repository. For each case of ``upstream_rules.CASES`` the
file stores a checksum of the inputs (the test regenerates them from the seed),
the style tokens, the image and both attention maps in float32, from upstream
in train mode, plus the largest train-vs-eval difference upstream shows, and
for ``upstream_rules.GRADIENT_CASE`` the gradients of ``gradient_objective`` with
respect to ``GRADIENT_KEYS`` (one small tensor on every path of the network).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from casd.checkpoints import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fixture rules live with the tests
from upstream_rules import CASES, GRADIENT_CASE, GRADIENT_KEYS, gradient_objective, rule_inputs, rule_state_dict  # noqa: E402


def input_checksums(*tensors: torch.Tensor) -> torch.Tensor:
    """[sum, sum of squares] per tensor, float64: detects a change of the input rule."""
    return torch.tensor([[t.double().sum().item(), t.double().square().sum().item()] for t in tensors])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/upstream_equivalence.pt"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.upstream_dir.resolve()))
    from models.CASD import ADGen  # noqa: E402  (upstream, from the folder given)

    torch.manual_seed(0)
    net = ADGen(3, 64, 2048, 2, 8, 256)  # upstream define_G for which_model_netG=CASD
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict(rule_state_dict(shapes))
    fixture = {"keys": list(shapes), "cases": {}}
    for name, (batch, height, width, seed, empty) in CASES.items():
        pose, image, parsing = rule_inputs(batch, height, width, seed, empty)
        outputs = {}
        for mode in ("train", "eval"):
            net.train(mode == "train")
            with torch.no_grad():
                tokens = net.enc_style(image, parsing).view(batch, 8, -1)
                out, attns = net(pose, image, parsing)
            outputs[mode] = (tokens, out, attns)
        tokens, out, attns = outputs["train"]
        train_vs_eval = max((a - b).abs().max().item() for a, b in zip(
            [outputs["train"][1], *outputs["train"][2]], [outputs["eval"][1], *outputs["eval"][2]]))
        fixture["cases"][name] = {
            "inputs": (batch, height, width, seed, empty),
            "input_checksums": input_checksums(pose, image, parsing),
            "tokens": tokens.clone(), "image": out.clone(), "attention": [a.clone() for a in attns],
            "upstream_train_vs_eval_max_abs": train_vs_eval,
        }
        if name == GRADIENT_CASE:
            net.train()
            net.zero_grad(set_to_none=True)
            gradient_objective(*net(pose, image, parsing)).backward()
            params = dict(net.named_parameters())
            fixture["cases"][name]["gradients"] = {
                k: None if params[k].grad is None else params[k].grad.clone() for k in GRADIENT_KEYS}
        print(f"{name}: image {tuple(out.shape)} |tanh|>0.99: {(out.abs() > 0.99).float().mean():.3f}, "
              f"attention range [{min(a.min() for a in attns):.2f}, {max(a.max() for a in attns):.2f}], "
              f"train vs eval {train_vs_eval:.2e}")
    save_checkpoint(args.out, fixture)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
