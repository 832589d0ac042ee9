"""Checkpoint files: atomic save / safe load, and import of upstream CASD generators.

- :func:`save_checkpoint` / :func:`load_checkpoint`: any object of tensors,
  numbers, strings, lists and dicts; written atomically (temp file + rename),
  read with ``torch.load(weights_only=True)`` so that a checkpoint cannot run
  code. (Resume logic is built on these by the training module.)
- :func:`load_upstream_generator`: upstream ``latest_net_netG.pth`` ->
  :class:`casd.models.Generator`, through the explicit name table
  :func:`upstream_names` (own name -> upstream name). Every missing,
  unexpected or mis-shaped key is reported in one error.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch

from casd.errors import CasdError, DataError
from casd.fileio import atomic_path
from casd.models.generator import Generator, GeneratorConfig
from casd.models.vgg import VGG19_INDEX, _vgg19_layers


def save_checkpoint(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save ``obj`` to ``path`` atomically (temp file beside it, renamed on success)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``; a missing, corrupt or code-carrying file -> DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DataError(path, f"refused: not a plain tensor checkpoint (weights_only load failed: {first})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DataError(path, f"cannot read checkpoint: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# upstream names
# ---------------------------------------------------------------------------------------------------------------

# Style-encoder VGG convolutions the generator uses (conv1_1 .. conv4_1); upstream stores all 16.
_VGG_CONVS_USED = [i for name, i in VGG19_INDEX.items() if name.startswith("conv") and i <= VGG19_INDEX["conv4_1"]]
_VGG_CONVS_ALL = [i for name, i in VGG19_INDEX.items() if name.startswith("conv")]


def upstream_names(config: GeneratorConfig | None = None) -> dict[str, str]:
    """Own state-dict key -> upstream ``ADGen`` key, for every entry of ``Generator(config).state_dict()``.

    Written out block by block (no pattern guessing) so that it reads as the
    correspondence between the two designs; tests check it against
    ``netG_state_dict.tsv`` and against a built generator.
    """
    cfg = config or GeneratorConfig()
    names: dict[str, str] = {}

    def pair(own: str, up: str, fields=("weight", "bias")) -> None:
        for f in fields:
            names[f"{own}.{f}"] = f"{up}.{f}"

    # style encoder
    for i in _VGG_CONVS_USED:
        pair(f"style_encoder.vgg.layers.{i}", f"enc_style.vgg.{i}")
    pair("style_encoder.image_conv", "enc_style.conv1.conv")
    pair("style_encoder.down1", "enc_style.conv2.conv")
    pair("style_encoder.down2", "enc_style.conv3.conv")
    pair("style_encoder.down3", "enc_style.conv4.conv")
    pair("style_encoder.fuse", "enc_style.model0.0")
    # pose encoder (upstream blocks: norm, act, conv_down, norm, act, conv)
    for own, up in (("down1", "block0"), ("down2", "encoder0")):
        pair(f"pose_encoder.{own}.norm_in", f"enc_content.{up}.model.0")
        pair(f"pose_encoder.{own}.down", f"enc_content.{up}.model.2")
        pair(f"pose_encoder.{own}.norm_mid", f"enc_content.{up}.model.3")
        pair(f"pose_encoder.{own}.conv", f"enc_content.{up}.model.5")
    pair("pose_encoder.norm", "enc_content.model0.0")
    pair("pose_encoder.project", "enc_content.model0.2")
    # decoder: style fusion and AdaIN MLP
    pair("decoder.style_fusion", "dec.fc.fc")
    for own, up in ((0, 0), (2, 1), (4, 2)):
        pair(f"decoder.adain_mlp.{own}", f"dec.mlp.model.{up}.fc")
    # residual blocks: upstream model0_0 .. model0_{n-1}, AdaIN first, then attention-modulated
    for i in range(cfg.adain_blocks):
        pair(f"decoder.adain_blocks.{i}.conv1", f"dec.model0_{i}.0.model1.0.conv")
        pair(f"decoder.adain_blocks.{i}.conv2", f"dec.model0_{i}.0.model2.0.conv")
    for j in range(cfg.modulated_blocks):
        up = f"dec.model0_{cfg.adain_blocks + j}.0"
        pair(f"decoder.modulated_blocks.{j}.conv1", f"{up}.model1.0.conv")
        pair(f"decoder.modulated_blocks.{j}.conv2", f"{up}.model2.0.conv")
        for head in (1, 2):
            pair(f"decoder.modulated_blocks.{j}.modulation{head}.0", f"{up}.models{head}.0.conv")
            pair(f"decoder.modulated_blocks.{j}.modulation{head}.3", f"{up}.models{head}.1.conv")
    # style-distribution blocks: upstream suffixes 3, 4, ... (dec.gamma3_1, dec.LN_3_style, dec.FFN3_1, ...)
    for b in range(cfg.attention_blocks):
        own, n = f"decoder.style_distribution.{b}", b + 3
        names[f"{own}.gamma_cross"] = f"dec.gamma{n}_1"
        names[f"{own}.gamma_ffn"] = f"dec.gamma{n}_3"
        names[f"{own}.gamma_token_attention"] = f"dec.gamma{n}_style_sa"
        pair(f"{own}.token_value", f"dec.value{n}_conv_sa")
        pair(f"{own}.token_norm", f"dec.LN_{n}_style", ("rho", "gamma", "beta"))
        pair(f"{own}.feature_norm", f"dec.LN_{n}_pose", ("rho", "gamma", "beta"))
        pair(f"{own}.pose_norm", f"dec.LN_{n}_pose_0", ("rho", "gamma", "beta"))
        pair(f"{own}.query", f"dec.query{n}_conv")
        pair(f"{own}.key", f"dec.key{n}_conv")
        pair(f"{own}.value", f"dec.value{n}_conv")
        pair(f"{own}.pose_logits", f"dec.query{n}_conv_0")
        pair(f"{own}.ffn.fc1", f"dec.FFN{n}_1.fc1")
        pair(f"{own}.ffn.fc2", f"dec.FFN{n}_1.fc2")
    # up-sampling (upstream Sequential: Upsample, Conv2dBlock, Upsample, Conv2dBlock) and output conv
    for i, up in enumerate((1, 3)):
        pair(f"decoder.upsample.{i}.conv", f"dec.model1.{up}.conv")
        pair(f"decoder.upsample.{i}.norm", f"dec.model1.{up}.norm", ("gamma", "beta"))
    pair("decoder.to_image", "dec.model2.0.conv")
    return names


def upstream_unused(config: GeneratorConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Upstream keys that carry nothing the computation reads -> their expected shape (checked, then dropped).

    - ``...model{1,2}.0.norm.running_mean/var`` of the AdaIN blocks: dummy
      buffers (AdaIN always normalises with batch statistics);
    - ``dec.gamma{3,4}_2``: a parameter declared but never used;
    - ``enc_style.vgg.21 .. 34``: VGG19 layers past relu4_1, which the style
      encoder computes but never reads.
    """
    cfg = config or GeneratorConfig()
    unused: dict[str, tuple[int, ...]] = {}
    for i in range(cfg.adain_blocks):
        for conv in ("model1", "model2"):
            for buf in ("running_mean", "running_var"):
                unused[f"dec.model0_{i}.0.{conv}.0.norm.{buf}"] = (cfg.width,)
    for b in range(cfg.attention_blocks):
        unused[f"dec.gamma{b + 3}_2"] = (1,)
    with torch.device("meta"):
        vgg = _vgg19_layers(len(VGG19_INDEX))
    for i in _VGG_CONVS_ALL:
        if i not in _VGG_CONVS_USED:
            unused[f"enc_style.vgg.{i}.weight"] = tuple(vgg[i].weight.shape)
            unused[f"enc_style.vgg.{i}.bias"] = tuple(vgg[i].bias.shape)
    return unused


class CheckpointMismatch(CasdError):
    """An upstream state dict that does not fit the generator (all problems listed at once)."""


def _as_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, Mapping):
        state, where = dict(source), "state dict"
    else:
        state, where = load_checkpoint(source), str(source)
        if not isinstance(state, Mapping):
            raise DataError(where, f"expected a state dict (mapping of tensors), got {type(state).__name__}")
        state = dict(state)
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise DataError(where, f"not a generator state dict: non-tensor entries {', '.join(not_tensors[:5])}")
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, where


def convert_upstream_state_dict(state: Mapping[str, torch.Tensor], config: GeneratorConfig | None = None,
                                where: str = "state dict") -> dict[str, torch.Tensor]:
    """Upstream ``ADGen`` state dict -> own state dict; one :class:`CheckpointMismatch` lists every problem."""
    cfg = config or GeneratorConfig()
    names = upstream_names(cfg)
    unused = upstream_unused(cfg)
    expected = {up: tuple(t.shape) for own, t in _reference_shapes(cfg).items() for up in [names[own]]}
    problems = []
    missing = sorted(set(expected) - set(state))
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing)}")
    unexpected = sorted(set(state) - set(expected) - set(unused))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected)}")
    shapes = {**expected, **unused}
    misshaped = sorted(f"{k} {tuple(state[k].shape)} != {shapes[k]}" for k in set(state) & set(shapes)
                       if tuple(state[k].shape) != shapes[k])
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: {', '.join(misshaped)}")
    if problems:
        raise CheckpointMismatch(f"{where}: does not match the CASD generator ({cfg}): " + "; ".join(problems))
    return {own: state[up] for own, up in names.items()}


_SHAPES_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _reference_shapes(cfg: GeneratorConfig) -> dict[str, torch.Tensor]:
    """Own state dict of ``Generator(cfg)`` on the meta device (shapes only, no memory, no weight files)."""
    key = repr(cfg)
    if key not in _SHAPES_CACHE:
        with torch.device("meta"):
            _SHAPES_CACHE[key] = Generator(cfg, pretrained_vgg=False).state_dict()
    return _SHAPES_CACHE[key]


def load_upstream_generator(source: str | os.PathLike | Mapping[str, Any], **overrides) -> Generator:
    """Upstream generator checkpoint (path to ``latest_net_netG.pth`` or loaded state dict) -> Generator in eval mode.

    ``overrides``: :class:`GeneratorConfig` fields (defaults = upstream). The
    state dict may carry DataParallel's ``module.`` prefix. The style encoder's
    VGG19 comes from the checkpoint (no VGG file is read).
    """
    config = GeneratorConfig(**overrides)
    state, where = _as_state_dict(source)
    own = convert_upstream_state_dict(state, config, where)
    generator = Generator(config, pretrained_vgg=False)
    generator.load_state_dict(own, strict=True)
    generator.vgg_pretrained = True
    return generator.eval()


def export_upstream_state_dict(generator: Generator) -> dict[str, torch.Tensor]:
    """Own generator -> upstream-named state dict (unused upstream entries filled as upstream initialises them)."""
    names = upstream_names(generator.config)
    state = {names[k]: v for k, v in generator.state_dict().items()}
    for key, shape in upstream_unused(generator.config).items():
        state[key] = torch.ones(shape) if key.endswith("running_var") else torch.zeros(shape)
    return state
