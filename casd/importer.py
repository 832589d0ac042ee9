"""``casd import-checkpoint``: upstream CASD weights -> a project generator checkpoint.

Upstream saves ``latest_net_netG.pth`` (and ``latest_net_netD_PB.pth``,
``latest_net_netD_PP.pth``) as bare state dicts. This converts them into the
project's ``casd-generator`` checkpoint (what ``casd train`` writes to
``models/generator.pt`` and ``casd generate`` / ``casd test`` read): the
generator's weights under the project's parameter names, its model
configuration, the frame it works in (``image_size``, pose rendering) and,
when given, the two discriminators.

The model configuration is read off the weights' shapes (widths, number of
blocks, regions), so a re-trained upstream variant of other widths converts
too; the name table and the per-key shape check are
:func:`casd.checkpoints.convert_upstream_state_dict`'s. Files are loaded with
``torch.load(weights_only=True)``: a file that holds anything but tensors is
refused, never unpickled.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from casd.errors import DataError

# Upstream key whose shape gives each GeneratorConfig field (dimension index in brackets).
_SHAPE_SOURCES: dict[str, tuple[str, int]] = {
    "pose_channels": ("enc_content.block0.model.2.weight", 1),
    "pose_width": ("enc_content.block0.model.2.weight", 0),
    "style_width": ("enc_style.conv1.conv.weight", 0),
    "width": ("enc_style.model0.0.weight", 0),
    "mlp_width": ("dec.mlp.model.0.fc.weight", 0),
    "regions": ("dec.query3_conv_0.weight", 0),
}

UPSTREAM_IMAGE_SIZE = (256, 176)  # the DeepFashion benchmark frame upstream's released weights were trained at


def _tensor_state(obj: Any, where: str | Path) -> dict[str, torch.Tensor]:
    """A loaded upstream file -> {key: tensor}, DataParallel's ``module.`` prefix removed."""
    if not isinstance(obj, Mapping):
        raise DataError(where, f"expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise DataError(where, f"not a bare state dict: non-tensor entries {', '.join(not_tensors[:4])}"
                               f"{' ...' if len(not_tensors) > 4 else ''}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_tensors_only(path: str | Path) -> Any:
    """:func:`casd.checkpoints.load_checkpoint` (``weights_only=True``), naming the object a refused file holds."""
    from casd.checkpoints import load_checkpoint

    try:
        return load_checkpoint(path)
    except DataError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e.__cause__ or ""))
        if found is None:
            raise
        raise DataError(path, f"refused: it holds a Python object ({found.group(1)}), not only tensors; "
                              f"files are loaded with weights_only=True and never run code (save the "
                              f"model's state_dict() instead)") from None


def load_upstream_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an upstream ``.pth`` with ``weights_only=True``; anything but a mapping of tensors -> DataError."""
    return _tensor_state(load_tensors_only(path), path)


def infer_generator_config(state: Mapping[str, torch.Tensor], where: str | Path = "state dict", **overrides):
    """Upstream generator state dict -> :class:`GeneratorConfig` read off its shapes (``overrides`` win)."""
    from casd.models.generator import GeneratorConfig

    values: dict[str, Any] = {}
    for field, (key, dim) in _SHAPE_SOURCES.items():
        if key not in state:
            raise DataError(where, f"not a CASD generator state dict: no {key} (needed for model.{field}); "
                                   f"is it a discriminator?")
        values[field] = int(state[key].shape[dim])
    blocks = sorted({int(k.split(".")[1][len("model0_"):]) for k in state if k.startswith("dec.model0_")})
    modulated = [i for i in blocks if f"dec.model0_{i}.0.models1.0.conv.weight" in state]
    values["adain_blocks"] = len(blocks) - len(modulated)
    values["modulated_blocks"] = len(modulated)
    values["attention_blocks"] = sum(1 for n in range(3, 3 + 16) if f"dec.query{n}_conv.weight" in state)
    # upstream's style encoder holds torchvision's VGG19; its weights travel inside the checkpoint (no file read)
    values["vgg_weights"] = "torchvision"
    values.update(overrides)
    try:
        return GeneratorConfig(**values)
    except Exception as e:  # ConfigError from validation
        raise DataError(where, f"inferred model configuration is invalid: {e}") from None


def _discriminator(path: str | Path, expected_in: int, role: str):
    """Upstream ``ResnetDiscriminator`` state dict -> (Discriminator, its constructor arguments)."""
    from casd.models.discriminator import Discriminator

    state = load_upstream_file(path)
    convs = sorted((int(k.split(".")[1]) for k in state if k.startswith("model.") and k.endswith(".weight")
                    and state[k].dim() == 4))
    if not convs:
        raise DataError(path, f"not a discriminator state dict (no model.N.weight convolutions) for {role}")
    first = state[f"model.{convs[0]}.weight"]
    args = {"in_channels": int(first.shape[1]), "width": int(first.shape[0]), "downsamplings": len(convs) - 1}
    if args["in_channels"] != expected_in:
        raise DataError(path, f"{role} takes {args['in_channels']} input channels, expected {expected_in} "
                              f"(were --netD-PB and --netD-PP swapped?)")
    disc = Discriminator(**args)
    try:
        disc.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(path, f"does not fit the CASD discriminator {args}: "
                              f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
    return disc, args


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(all values, trainable values); the generator's frozen VGG counts only in the first."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


def import_upstream(source: str | Path, output: str | Path, *, netd_pb: str | Path | None = None,
                    netd_pp: str | Path | None = None, image_size: tuple[int, int] = UPSTREAM_IMAGE_SIZE,
                    pose_mode: str = "onehot", pose_sigma: float = 6.0, **overrides) -> dict[str, Any]:
    """Convert upstream checkpoint(s) into a ``casd-generator`` file at ``output``; returns a summary dict."""
    from casd.checkpoints import load_upstream_generator, save_checkpoint
    from casd.weights import sha256

    state = load_upstream_file(source)
    config = infer_generator_config(state, source, **overrides)
    generator = load_upstream_generator(state, **dataclasses.asdict(config))
    checkpoint: dict[str, Any] = {
        "format": "casd-generator",
        "generator": generator.state_dict(),
        "model_config": dataclasses.asdict(config),
        "vgg_pretrained": True,
        "image_size": [int(image_size[0]), int(image_size[1])],
        "pose_mode": pose_mode,
        "pose_sigma": float(pose_sigma),
        "imported_from": {"generator": str(source), "generator_sha256": sha256(source)},
    }
    total, trainable = count_parameters(generator)
    summary: dict[str, Any] = {"output": str(output), "generator_values": total, "trainable_values": trainable,
                               "model_config": checkpoint["model_config"], "image_size": checkpoint["image_size"],
                               "pose_mode": pose_mode}
    discriminators = {}
    for role, path, channels in (("d_pb", netd_pb, 3 + config.pose_channels), ("d_pp", netd_pp, 6)):
        if path is None:
            continue
        disc, args = _discriminator(path, channels, role)
        discriminators[role] = disc.state_dict()
        checkpoint.setdefault("discriminator_config", {})[role] = args
        checkpoint["imported_from"][role] = str(path)
        summary[f"{role}_values"] = count_parameters(disc)[0]
    if discriminators:
        checkpoint["discriminators"] = discriminators
    save_checkpoint(output, checkpoint)
    return summary


def import_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="casd import-checkpoint",
        description="Convert upstream CASD weights (latest_net_netG.pth, optionally the discriminators) into a "
                    "project checkpoint for casd generate / casd test. Loaded with weights_only=True.")
    parser.add_argument("source", metavar="SRC", help="upstream generator state dict (latest_net_netG.pth)")
    parser.add_argument("output", metavar="DST", help="project checkpoint to write (e.g. models/upstream.pt)")
    parser.add_argument("--netD-PB", dest="netd_pb", help="upstream latest_net_netD_PB.pth (image + pose critic)")
    parser.add_argument("--netD-PP", dest="netd_pp", help="upstream latest_net_netD_PP.pth (image pair critic)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=list(UPSTREAM_IMAGE_SIZE),
                        help="frame the weights were trained at (default: %(default)s, upstream's DeepFashion)")
    parser.add_argument("--pose-mode", choices=["onehot", "gaussian"], default="onehot",
                        help="pose maps the weights expect (upstream: onehot)")
    args = parser.parse_args(argv)
    summary = import_upstream(args.source, args.output, netd_pb=args.netd_pb, netd_pp=args.netd_pp,
                              image_size=tuple(args.image_size), pose_mode=args.pose_mode)
    config = ", ".join(f"{k}={v}" for k, v in summary["model_config"].items() if k != "vgg_weights")
    print(f"{args.source} -> {summary['output']}")
    print(f"  generator: {summary['generator_values']:,} values ({summary['trainable_values']:,} trainable, "
          f"the rest the frozen VGG19)")
    print(f"  model config: {config}")
    print(f"  frame: {summary['image_size'][0]}x{summary['image_size'][1]}, pose maps {summary['pose_mode']}")
    for role in ("d_pb", "d_pp"):
        if f"{role}_values" in summary:
            print(f"  {role}: {summary[f'{role}_values']:,} values")
