"""Generator files: atomic save / safe load, the upstream name table, and THE loader of any generator file.

- :func:`save_checkpoint` / :func:`load_checkpoint`: any object of tensors,
  numbers, strings, lists and dicts; written atomically, read with
  ``torch.load(weights_only=True)`` so that a file can never run code.
- :func:`save_generator` / :func:`load_generator`: THE writer and THE reader
  of a generator file. ``save_generator`` writes ``casd-generator`` files
  (``models/generator.pt``, ``casd import-checkpoint`` output); ``load_generator``
  reads those, a project ``models/generator.pt``, a training state
  ``checkpoints/*.pt`` or upstream's ``latest_net_netG.pth`` -> a
  :class:`LoadedGenerator` (the network, its config, the data settings stored
  with it). Everything that runs a generator from a file goes through it.
- :func:`import_upstream` (``casd import-checkpoint``): upstream weights ->
  a project ``casd-generator`` file, through the explicit name table
  :func:`upstream_names`; every missing, unexpected or mis-shaped key is
  reported in one error.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from casd.data.config import GENERATOR_SIZE_MULTIPLE, size_problem
from casd.errors import CasdError, ConfigError, DataError
from casd.fileio import atomic_path
from casd.models.discriminator import Discriminator
from casd.models.generator import Generator, GeneratorConfig
from casd.models.vgg import VGG19_INDEX, _vgg19_layers
from casd.weights import sha256

GENERATOR_FORMATS = ("casd-generator", "casd-train")  # models/generator.pt (and imported files), checkpoints/*.pt
UPSTREAM_IMAGE_SIZE = (256, 176)  # the DeepFashion benchmark frame upstream's released weights are used at
# Model fields that do not change the tensors a checkpoint holds (its VGG weights travel inside it; the norm's
# statistics are chosen at run time; init only set the weights training started from).
CONFIG_FIELDS_NOT_IN_WEIGHTS = ("vgg_weights", "modulated_norm", "init")
POSE_MODES = ("onehot", "gaussian")


def save_checkpoint(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save ``obj`` to ``path`` atomically (temp file beside it, renamed on success)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file with ``weights_only=True``; missing, empty, corrupt or code-carrying -> DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "the checkpoint file is empty")
    try:
        with warnings.catch_warnings():  # torch's note on a non-default pickle protocol: the refusal below says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        globals_ = [g for g in _pickled_globals(path) if not g.startswith(_TENSOR_GLOBALS)]
        if globals_:
            raise DataError(path, f"refused: it holds a Python object ({globals_[0]}), not only tensors; files are "
                                  f"loaded with weights_only=True and never run code (save the model's state_dict() "
                                  f"instead)") from None
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        reason = found.group(1).strip() if found else type(e).__name__
        raise DataError(path, f"refused: not a plain tensor file ({reason})") from None
    except (KeyError, EOFError) as e:  # the legacy unpickler on a file that is not a pickle (a text file, say)
        raise DataError(path, f"not a PyTorch checkpoint (unpickling failed: {type(e).__name__} {e})") from None
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(path, f"cannot read checkpoint: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
                        ) from None


# globals torch's weights-only unpickler allows by design (tensor rebuilding)
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.bytearray")


def _pickled_globals(path: Path) -> list[str]:
    """Names of the Python objects (GLOBAL / STACK_GLOBAL) a pickle refers to, read without unpickling."""
    try:
        data = path.read_bytes()
        if zipfile.is_zipfile(io.BytesIO(data)):  # torch's zip format: the pickle is <archive>/data.pkl
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        names, strings, memo, top = [], [], {}, None
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                names.append(f"{'builtins' if module == '__builtin__' else module}.{name}")  # protocol <= 2 spelling
            elif "UNICODE" in op.name or "STRING" in op.name:
                top = str(arg)
                strings.append(top)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = top
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = top
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                top = memo.get(arg)
                strings.append(top)
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            if op.name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET") \
                    and not ("UNICODE" in op.name or "STRING" in op.name):
                top = None
        return names
    except Exception:  # a damaged pickle: nothing more to say than torch did
        return []


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


def bare_state_dict(obj: Any, where: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A loaded state dict -> {key: tensor}, DataParallel's ``module.`` prefix removed; anything else -> DataError."""
    if not isinstance(obj, Mapping):
        raise DataError(where, f"expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise DataError(where, f"not a bare state dict: non-tensor entries {', '.join(not_tensors[:4])}"
                               f"{' ...' if len(not_tensors) > 4 else ''}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_upstream_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an upstream ``.pth`` (``weights_only=True``) -> {key: tensor}."""
    return bare_state_dict(load_checkpoint(path), path)


def convert_upstream_state_dict(state: Mapping[str, torch.Tensor], config: GeneratorConfig | None = None,
                                where: str | os.PathLike = "state dict") -> dict[str, torch.Tensor]:
    """Upstream ``ADGen`` state dict -> own state dict; one :class:`CheckpointMismatch` lists every problem."""
    cfg = config or GeneratorConfig()
    names = upstream_names(cfg)
    unused = upstream_unused(cfg)
    expected = {names[own]: tuple(t.shape) for own, t in _reference_shapes(cfg).items()}
    problem = _key_problems(state, expected, unused)
    if problem:
        raise CheckpointMismatch(f"{where}: does not match the CASD generator ({_config_text(cfg)}): {problem}")
    return {own: state[up] for own, up in names.items()}


def _key_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]],
                  ignored: Mapping[str, tuple[int, ...]] | None = None) -> str:
    """'' when ``state`` has exactly the ``expected`` keys and shapes (``ignored`` keys may be there, shape-checked);
    else every missing, unexpected and mis-shaped key in one line."""
    ignored = dict(ignored or {})
    problems = []
    missing = sorted(set(expected) - set(state))
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing)}")
    unexpected = sorted(set(state) - set(expected) - set(ignored))
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected)}")
    shapes = {**expected, **ignored}
    misshaped = sorted(f"{k} {tuple(state[k].shape)} != {shapes[k]}" for k in set(state) & set(shapes)
                       if tuple(state[k].shape) != shapes[k])
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: {', '.join(misshaped)}")
    return "; ".join(problems)


def _config_text(cfg: GeneratorConfig) -> str:
    return ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items() if k not in CONFIG_FIELDS_NOT_IN_WEIGHTS)


_SHAPES_CACHE: dict[str, dict[str, torch.Tensor]] = {}


def _reference_shapes(cfg: GeneratorConfig) -> dict[str, torch.Tensor]:
    """Own state dict of ``Generator(cfg)`` on the meta device (shapes only, no memory, no weight files)."""
    key = _config_text(cfg)
    if key not in _SHAPES_CACHE:
        with torch.device("meta"):
            _SHAPES_CACHE[key] = Generator(cfg, pretrained_vgg=False).state_dict()
    return _SHAPES_CACHE[key]


# Upstream key whose shape gives each GeneratorConfig field (dimension index in brackets).
_SHAPE_SOURCES: dict[str, tuple[str, int]] = {
    "pose_channels": ("enc_content.block0.model.2.weight", 1),
    "pose_width": ("enc_content.block0.model.2.weight", 0),
    "style_width": ("enc_style.conv1.conv.weight", 0),
    "width": ("enc_style.model0.0.weight", 0),
    "mlp_width": ("dec.mlp.model.0.fc.weight", 0),
    "regions": ("dec.query3_conv_0.weight", 0),
}


def infer_generator_config(state: Mapping[str, torch.Tensor], where: str | os.PathLike = "state dict",
                           **overrides) -> GeneratorConfig:
    """Upstream generator state dict -> :class:`GeneratorConfig` read off its shapes (``overrides`` win)."""
    values: dict[str, Any] = {}
    for field, (key, dim) in _SHAPE_SOURCES.items():
        if key not in state:
            raise DataError(where, f"not a CASD generator state dict: no {key} (needed for model.{field}); "
                                   f"is it a discriminator?")
        values[field] = int(state[key].shape[dim])
    blocks = sorted({int(k.split(".")[1][len("model0_"):]) for k in state if re.match(r"dec\.model0_\d+\.", k)})
    modulated = [i for i in blocks if f"dec.model0_{i}.0.models1.0.conv.weight" in state]
    values["adain_blocks"] = len(blocks) - len(modulated)
    values["modulated_blocks"] = len(modulated)
    values["attention_blocks"] = sum(1 for n in range(3, 3 + 16) if f"dec.query{n}_conv.weight" in state)
    # upstream's style encoder holds torchvision's VGG19; its weights travel inside the checkpoint (no file read)
    values["vgg_weights"] = "torchvision"
    values.update(overrides)
    try:
        return GeneratorConfig(**values)
    except ConfigError as e:
        raise DataError(where, f"inferred model configuration is invalid: {e}") from None


def _built(config: GeneratorConfig, state: Mapping[str, torch.Tensor], vgg_pretrained: bool) -> Generator:
    """A Generator of ``config`` holding ``state`` (keys and shapes already checked), in eval mode.

    Built on the meta device and given the tensors: no throw-away random init (seconds for VGG19).
    """
    with torch.device("meta"):
        generator = Generator(config, pretrained_vgg=False)
    generator.load_state_dict(state, strict=True, assign=True)
    generator.vgg_pretrained = vgg_pretrained
    return generator.eval()


def load_upstream_generator(source: str | os.PathLike | Mapping[str, Any], **overrides) -> Generator:
    """Upstream generator (path to ``latest_net_netG.pth`` or its state dict) -> Generator in eval mode.

    ``overrides``: :class:`GeneratorConfig` fields (defaults = upstream). The
    style encoder's VGG19 comes from the checkpoint (no VGG file is read).
    """
    where = "state dict" if isinstance(source, Mapping) else source
    state = bare_state_dict(source if isinstance(source, Mapping) else load_checkpoint(source), where)
    config = GeneratorConfig(**overrides)
    return _built(config, convert_upstream_state_dict(state, config, where), vgg_pretrained=True)


def export_upstream_state_dict(generator: Generator) -> dict[str, torch.Tensor]:
    """Own generator -> upstream-named state dict (unused upstream entries filled as upstream initialises them)."""
    if not generator.config.upstream_compatible:
        raise ConfigError("model: region_colour, style_vgg: false and token_pooling: area are not part of "
                          "upstream's generator; a generator built with them cannot be exported in upstream's format")
    names = upstream_names(generator.config)
    state = {names[k]: v for k, v in generator.state_dict().items()}
    for key, shape in upstream_unused(generator.config).items():
        state[key] = torch.ones(shape) if key.endswith("running_var") else torch.zeros(shape)
    return state


# ---------------------------------------------------------------------------------------------------------------
# the one loader
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LoadedGenerator:
    """A generator file, read: the network (eval mode) and the settings stored with it.

    ``image_size`` (H, W), ``pose_mode`` and ``pose_sigma`` are None where the
    file does not record them (upstream files): the caller's params decide then.
    """

    generator: Generator
    path: Path
    format: str                               # casd-generator | casd-train | upstream
    image_size: tuple[int, int] | None = None
    pose_mode: str | None = None
    pose_sigma: float | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # other entries: imported_from, epoch, ...

    @property
    def config(self) -> GeneratorConfig:
        return self.generator.config

    def check_settings(self, *, model: Mapping[str, Any] | None = None, image_size: Any = None,
                       pose_mode: str | None = None, pose_sigma: float | None = None, hint: str = "") -> None:
        """ConfigError naming every given setting (params ``model:``, ``data.image_size``, ``pose.*``) that
        differs from what this file was made with; settings the file does not record are not compared."""
        stored = dataclasses.asdict(self.config)
        differ = [(f"model.{k}", stored[k], v) for k, v in sorted(dict(model or {}).items())
                  if k in stored and k not in CONFIG_FIELDS_NOT_IN_WEIGHTS and _plain(stored[k]) != _plain(v)]
        differ += [(name, mine, theirs) for name, mine, theirs in (
            ("data.image_size", self.image_size, image_size), ("pose.mode", self.pose_mode, pose_mode),
            ("pose.sigma", self.pose_sigma if self.pose_mode == "gaussian" else None, pose_sigma))
            if mine is not None and theirs is not None and _plain(mine) != _plain(theirs)]
        if differ:
            text = "; ".join(f"{name}: checkpoint {_plain(a)!r}, params {_plain(b)!r}" for name, a, b in differ)
            raise ConfigError(f"{self.path}: checkpoint made for other settings ({text}); use the params it was "
                              f"trained with{hint}")


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def load_generator(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                   modulated_norm: str | None = None) -> LoadedGenerator:
    """Any generator file the project accepts -> :class:`LoadedGenerator`, one read, ``weights_only=True``.

    Accepted: ``casd-generator`` files (``models/generator.pt``, ``casd
    import-checkpoint`` output), ``casd-train`` training states
    (``checkpoints/*.pt``), and upstream's bare ``latest_net_netG.pth`` (model
    configuration read off its shapes). ``modulated_norm`` replaces the
    config's (``"sample"``: batched calls give batch-of-one pictures). A file
    that is none of these, or whose tensors do not fit, is a DataError naming
    it and the first thing wrong.
    """
    path = Path(path)
    state = load_checkpoint(path)
    if isinstance(state, Mapping) and not state:
        raise DataError(path, "the checkpoint holds nothing (an empty mapping)")
    if isinstance(state, Mapping) and "generator" in state and "model_config" in state:
        loaded = _project_generator(path, state)
    elif isinstance(state, Mapping) and all(isinstance(v, torch.Tensor) for v in state.values()):
        loaded = _upstream_generator(path, bare_state_dict(state, path))
    elif isinstance(state, Mapping):
        found = state.get("format", "no format entry")
        raise DataError(path, f"not a generator file ({found!r}; expected {', '.join(GENERATOR_FORMATS)} or an "
                              f"upstream latest_net_netG.pth state dict)")
    else:
        raise DataError(path, f"not a generator file: it holds a {type(state).__name__}, expected a mapping")
    if modulated_norm is not None:
        loaded.generator.set_modulated_norm(modulated_norm)
    loaded.generator.to(device)
    return loaded


def save_generator(path: str | os.PathLike, generator: Generator, *, image_size: Any, pose_mode: str = "onehot",
                   pose_sigma: float = 6.0, **extra: Any) -> Path:
    """Write ``generator`` as a ``casd-generator`` file at ``path`` (atomically); returns ``path``.

    The file holds the weights, the model configuration, whether the style
    VGG is pretrained, and the data settings it was made for: ``image_size``
    (H, W) and the pose rendering (``pose_mode``, ``pose_sigma``). ``extra``
    entries (``fingerprint``, ``epochs``, ``imported_from``, ``discriminators``,
    ...) are stored beside them; :func:`load_generator` returns them in
    :attr:`LoadedGenerator.extra`.
    """
    if pose_mode not in POSE_MODES:
        raise ValueError(f"pose_mode {pose_mode!r}, expected one of {', '.join(POSE_MODES)}")
    reserved = {"format", "generator", "model_config", "vgg_pretrained", "image_size", "pose_mode", "pose_sigma"}
    if reserved & set(extra):
        raise ValueError(f"save_generator: {', '.join(sorted(reserved & set(extra)))} are written from the arguments")
    return save_checkpoint(path, {
        "format": GENERATOR_FORMATS[0],
        "generator": generator.state_dict(),
        "model_config": dataclasses.asdict(generator.config),
        "vgg_pretrained": bool(generator.vgg_pretrained),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "pose_mode": pose_mode,
        "pose_sigma": float(pose_sigma),
        **extra,
    })


def _project_generator(path: Path, state: Mapping[str, Any]) -> LoadedGenerator:
    file_format = state.get("format", GENERATOR_FORMATS[0])
    if file_format not in GENERATOR_FORMATS:
        raise DataError(path, f"checkpoint format {file_format!r}, expected one of {', '.join(GENERATOR_FORMATS)}")
    try:
        config = GeneratorConfig(**dict(state["model_config"]))
    except (TypeError, ConfigError) as e:
        raise DataError(path, f"model configuration not understood ({e})") from None
    weights = state["generator"]
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise DataError(path, "the generator entry is not a state dict of tensors")
    expected = {k: tuple(v.shape) for k, v in _reference_shapes(config).items()}
    problem = _key_problems(weights, expected)
    if problem:
        raise DataError(path, f"generator weights do not fit the file's own model configuration: {problem}")
    image_size = state.get("image_size")
    if image_size is not None:
        problem = size_problem(image_size, GENERATOR_SIZE_MULTIPLE)
        if problem:
            raise DataError(path, f"image_size must be {problem}, got {image_size!r}")
        image_size = (int(image_size[0]), int(image_size[1]))
    pose_mode = state.get("pose_mode")
    if pose_mode is not None and pose_mode not in POSE_MODES:
        raise DataError(path, f"pose_mode {pose_mode!r}, expected one of {', '.join(POSE_MODES)}")
    sigma = state.get("pose_sigma")
    extra = {k: v for k, v in state.items() if k not in ("generator", "discriminators", "optimizers", "schedulers",
                                                           "scaler", "model_config")}
    return LoadedGenerator(_built(config, weights, bool(state.get("vgg_pretrained", True))), path, file_format,
                           image_size, pose_mode, None if sigma is None else float(sigma), extra)


def _upstream_generator(path: Path, state: dict[str, torch.Tensor]) -> LoadedGenerator:
    own_names = set(_reference_shapes(GeneratorConfig.tiny()))
    if own_names & set(state):
        raise DataError(path, "a bare state dict of this project's generator, without its model configuration; "
                              "load the casd-generator file it came from (models/generator.pt) instead")
    config = infer_generator_config(state, path)
    return LoadedGenerator(_built(config, convert_upstream_state_dict(state, config, path), True), path, "upstream")


# ---------------------------------------------------------------------------------------------------------------
# casd import-checkpoint
# ---------------------------------------------------------------------------------------------------------------

def _discriminator(path: str | os.PathLike, expected_in: int, role: str) -> tuple[Discriminator, dict]:
    """Upstream ``ResnetDiscriminator`` state dict -> (Discriminator, its constructor arguments)."""
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
    problem = _key_problems(state, {k: tuple(v.shape) for k, v in disc.state_dict().items()})
    if problem:
        raise DataError(path, f"does not fit the CASD discriminator {args}: {problem}")
    disc.load_state_dict(state, strict=True)
    return disc, args


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(all values, trainable values); the generator's frozen VGG counts only in the first."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


def import_upstream(source: str | os.PathLike, output: str | os.PathLike, *, netd_pb: str | os.PathLike | None = None,
                    netd_pp: str | os.PathLike | None = None, image_size: tuple[int, int] = UPSTREAM_IMAGE_SIZE,
                    pose_mode: str = "onehot", pose_sigma: float = 6.0, overwrite: bool = False) -> dict[str, Any]:
    """Convert upstream checkpoint(s) into a ``casd-generator`` file at ``output``; returns a summary dict.

    The model configuration is read off the weights' shapes, so re-trained
    upstream variants of other widths convert too. ``output`` may be neither
    an input file nor (unless ``overwrite``) an existing file.
    """
    output = Path(output)
    for role, given in (("generator", source), ("--netD-PB", netd_pb), ("--netD-PP", netd_pp)):
        if given is not None and Path(given).exists() and output.exists() and output.samefile(given):
            raise CasdError(f"{output}: the destination is the {role} file being imported; give another path")
    if output.exists() and not overwrite:
        raise CasdError(f"{output}: already exists; pass --force to overwrite it")
    problem = size_problem(tuple(image_size), GENERATOR_SIZE_MULTIPLE)
    if problem:
        raise CasdError(f"--image-size {' '.join(map(str, image_size))}: must be {problem}")
    loaded = _upstream_generator(Path(source), load_upstream_file(source))
    generator, config = loaded.generator, loaded.config
    imported_from: dict[str, Any] = {"generator": str(source), "generator_sha256": sha256(source)}
    total, trainable = count_parameters(generator)
    summary: dict[str, Any] = {"output": str(output), "generator_values": total, "trainable_values": trainable,
                               "model_config": dataclasses.asdict(config),
                               "image_size": [int(image_size[0]), int(image_size[1])], "pose_mode": pose_mode}
    extra: dict[str, Any] = {"imported_from": imported_from}
    for role, path, channels in (("d_pb", netd_pb, 3 + config.pose_channels), ("d_pp", netd_pp, 6)):
        if path is None:
            continue
        disc, args = _discriminator(path, channels, role)
        extra.setdefault("discriminators", {})[role] = disc.state_dict()
        extra.setdefault("discriminator_config", {})[role] = args
        imported_from[role] = str(path)
        summary[f"{role}_values"] = count_parameters(disc)[0]
    save_generator(output, generator, image_size=image_size, pose_mode=pose_mode, pose_sigma=pose_sigma, **extra)
    return summary
