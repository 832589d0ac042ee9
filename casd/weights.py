"""The pretrained files the project can use: where each is looked for, and checked.

No file is ever downloaded implicitly. :func:`locate` searches an explicit
path (from params.yaml) and the standard place of each file (the torch hub
cache, or the installed ``lpips`` package for its linear layers), checks the
file's SHA-256 and otherwise fails with a message naming the file, every place
it looked and how to get it.

What is known of each checksum differs, and the listing says which:

- ``sha256_prefix`` only: the canonical file name carries the first hex digits
  of the SHA-256 (the torch.hub convention: ``vgg19-dcbb9e9d.pth`` starts with
  ``dcbb9e9d``); only those digits are checked.
- full ``sha256``: the whole digest is known (the ``lpips`` package's linear
  layers, as shipped in lpips 0.1.4).
- neither: no checksum is published (upstream's ``vgg_conv.pth``); the file is
  used as found and the listing says that it is unverified.

``casd weights`` lists them; ``casd weights fetch`` downloads the missing ones
where there is internet (checksum verified before the file is renamed into
place, so a failed or corrupt download leaves nothing behind).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from casd.errors import WeightsError
from casd.fileio import atomic_path


@dataclass(frozen=True)
class WeightFile:
    key: str
    filename: str
    url: str
    sha256_prefix: str  # first hex digits of the file's SHA-256 ("" where the canonical name carries none)
    used_by: str
    sha256: str = ""    # the whole digest, where it is known
    home: str = "torch-hub"  # standard place: "torch-hub" (cache of torchvision / pytorch-fid) or "lpips" (package)
    size_hint: str = ""  # approximate download size, for the listing
    fetch_by_default: bool = True  # False: only `casd weights fetch KEY` downloads it (not used by default)

    def expected(self) -> str:
        """How the file is checked, in words (for listings and messages)."""
        if self.sha256:
            return f"SHA-256 {self.sha256}" + (" (the copy shipped in lpips 0.1.4)" if self.home == "lpips" else "")
        if self.sha256_prefix:
            return f"SHA-256 starting {self.sha256_prefix} (only the prefix the canonical file name carries is known)"
        return "no published checksum: not verified"

    def matches(self, digest: str) -> bool:
        if self.sha256:
            return digest == self.sha256
        return digest.startswith(self.sha256_prefix)


REGISTRY: dict[str, WeightFile] = {w.key: w for w in [
    WeightFile("vgg19", "vgg19-dcbb9e9d.pth",
               "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "dcbb9e9d",
               "style encoder's frozen VGG19 (model.vgg_weights: torchvision) and the perceptual / content / "
               "style / contextual (CX) losses (loss.vgg_weights; CX unless loss.cx_vgg_weights names "
               "upstream's vgg_conv.pth)", size_hint="548 MB"),
    WeightFile("vgg-conv-cx", "vgg_conv.pth",
               "https://bethgelab.org/media/uploads/pytorch_models/vgg_conv.pth", "",
               "upstream's CX loss VGG (Caffe VGG19 converted by Gatys et al.; upstream ships it in its Google "
               "Drive folder). The CX loss reads it when loss.cx_vgg_weights names it; otherwise CX uses the "
               "torchvision VGG19 (vgg19 above)", size_hint="80 MB",
               fetch_by_default=False),
    WeightFile("inception-fid", "pt_inception-2015-12-05-6726825d.pth",
               "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth", "6726825d",
               "FID (pytorch-fid InceptionV3 pool3)", size_hint="92 MB"),
    WeightFile("alexnet", "alexnet-owt-7be5be79.pth",
               "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79",
               "LPIPS metric backbone (AlexNet, v0.1; casd.evaluation.metrics)", size_hint="233 MB"),
    WeightFile("lpips-alex-lin", "alex.pth",
               "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth",
               "df73285e", "LPIPS metric linear layers (AlexNet, v0.1; casd.evaluation.metrics), shipped inside the "
               "lpips package",
               sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", home="lpips",
               size_hint="6 KB"),
    WeightFile("vgg16", "vgg16-397923af.pth",
               "https://download.pytorch.org/models/vgg16-397923af.pth", "397923af",
               "LPIPS training loss trunk (loss.lpips, VGG16 as upstream's LPIPS(net_type='vgg'); "
               "loss.lpips_weights)", size_hint="528 MB"),
    WeightFile("lpips-vgg-lin", "vgg.pth",
               "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/vgg.pth",
               "a78928a0", "LPIPS training loss linear layers (loss.lpips, VGG v0.1), shipped inside the "
               "lpips package",
               sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", home="lpips",
               size_hint="7 KB"),
    # casd annotate (the optional [annotate] extra); none of the three has a published SHA-256
    WeightFile("yolox-person", "yolox_m_8xb8-300e_humanart-c2c7a14a.zip",
               "https://download.openmmlab.com/mmpose/v1/projects/rtmposev1/onnx_sdk/"
               "yolox_m_8xb8-300e_humanart-c2c7a14a.zip", "",
               "casd annotate: person detector (YOLOX-m, HumanArt; rtmlib's ONNX release, end2end.onnx inside)",
               size_hint="90 MB", fetch_by_default=False),
    WeightFile("rtmpose-body", "rtmpose-m_simcc-body7_pt-body7_420e-256x192-e48f03d0_20230504.zip",
               "https://download.openmmlab.com/mmpose/v1/projects/rtmposev1/onnx_sdk/"
               "rtmpose-m_simcc-body7_pt-body7_420e-256x192-e48f03d0_20230504.zip", "",
               "casd annotate: 17 COCO body keypoints (RTMPose-m, Body7; rtmlib's ONNX release, end2end.onnx "
               "inside)", size_hint="50 MB", fetch_by_default=False),
    WeightFile("schp-lip", "exp-schp-201908261155-lip.pth",
               "https://huggingface.co/zhengchong/CatVTON/resolve/main/SCHP/exp-schp-201908261155-lip.pth", "",
               "casd annotate: LIP-20 human parsing (SCHP ResNet-101, the authors' LIP checkpoint; their link: "
               "https://drive.google.com/file/d/1k4dllHpu0bdx38J7H28rVVLpU-kOHmnH)", size_hint="255 MB",
               fetch_by_default=False),
]}


def torch_hub_checkpoints() -> Path:
    """The standard cache torchvision and pytorch-fid download into (honours $TORCH_HOME)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_weights_dir() -> Path | None:
    """``<site-packages>/lpips/weights/v0.1``, where the lpips package keeps its linear layers; None if not installed."""
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "weights" / "v0.1"


def standard_dir(key: str) -> Path | None:
    """The folder a file normally lives in (and ``fetch`` downloads into)."""
    return lpips_weights_dir() if REGISTRY[key].home == "lpips" else torch_hub_checkpoints()


def search_paths(key: str, explicit: str | os.PathLike | None = None) -> list[Path]:
    """Places looked at for ``key``, in order: the explicit path, then the file's standard folder."""
    w = REGISTRY[key]
    paths = []
    if explicit not in (None, "", "torchvision", "auto"):
        p = Path(explicit).expanduser()
        paths.append(p / w.filename if p.is_dir() else p)
    home = standard_dir(key)
    if home is not None:
        paths.append(home / w.filename)
    return paths


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _how_to_get(w: WeightFile) -> str:
    if w.home == "lpips":
        return f"it ships with the lpips package (pip install --force-reinstall lpips), or download {w.url}"
    return (f"get it with `casd weights fetch {w.key}` where there is internet, or download {w.url} "
            f"into {torch_hub_checkpoints()} (or point params.yaml at it)")


def locate(key: str, explicit: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of the pretrained file ``key``; :class:`WeightsError` naming the file, where, and how to get it."""
    if key not in REGISTRY:
        raise WeightsError(f"unknown pretrained file {key!r}; known: {', '.join(REGISTRY)}")
    w = REGISTRY[key]
    looked = search_paths(key, explicit)
    for path in looked:
        if path.is_file():
            if verify and (w.sha256 or w.sha256_prefix) and not w.matches(sha256(path)):
                raise WeightsError(f"{path}: checksum mismatch, expected {w.expected()}; the file is corrupt or "
                                   f"another file. {_how_to_get(w)}")
            return path
    where = ", ".join(str(p) for p in looked) or "(lpips package not installed)"
    raise WeightsError(f"{w.filename} ({w.key}) not found; looked in: {where}. {_how_to_get(w)}")


def load_state_dict(key: str, explicit: str | os.PathLike | None = None) -> dict:
    """Locate and load ``key`` as a state dict of tensors only (``weights_only=True``)."""
    import torch

    path = locate(key, explicit)
    return torch.load(path, map_location="cpu", weights_only=True)


def _open_url(url: str, timeout: float):
    """One place that touches the network (tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (URLs come from REGISTRY only)


def fetch(key: str, dest: str | os.PathLike | None = None, timeout: float = 30.0) -> Path:
    """Download ``key`` into ``dest`` (default: its standard folder); return the verified path.

    An existing file is checked, not downloaded again. The download goes to a
    temporary file beside the target, is hashed while it streams, and is renamed
    into place only when the checksum matches: an interrupted, failed or corrupt
    download leaves nothing behind. No internet -> :class:`WeightsError` saying so.
    """
    w = REGISTRY[key]
    folder = Path(dest) if dest is not None else standard_dir(key)
    if folder is None:
        raise WeightsError(f"{w.filename}: the lpips package is not installed; pip install lpips")
    target = folder / w.filename
    if target.is_file():
        return locate(key, target)
    h = hashlib.sha256()
    try:
        with atomic_path(target) as tmp:
            try:
                with _open_url(w.url, timeout) as response, open(tmp, "wb") as out:
                    while block := response.read(1 << 20):
                        h.update(block)
                        out.write(block)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise WeightsError(f"{w.filename}: cannot download {w.url}: {reason} "
                                   f"(no internet here? copy the file into {folder} by hand)") from e
            digest = h.hexdigest()
            if (w.sha256 or w.sha256_prefix) and not w.matches(digest):
                raise WeightsError(f"{w.filename}: downloaded file has SHA-256 {digest}, expected {w.expected()}; "
                                   f"discarded")
    except PermissionError as e:
        raise WeightsError(f"{w.filename}: cannot write into {folder}: {e}") from e
    return target


def status(key: str, explicit: str | os.PathLike | None = None) -> str:
    """``present at P`` (with how it was checked), ``MISSING`` or ``BAD (why)``."""
    w = REGISTRY[key]
    try:
        path = locate(key, explicit)
    except WeightsError as e:
        return "MISSING" if "not found" in str(e) else f"BAD ({e})"
    checked = "checksum verified" if (w.sha256 or w.sha256_prefix) else "unverified: no published checksum"
    return f"present at {path} ({checked})"
