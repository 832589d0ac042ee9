"""The pretrained files the project can use: where each is looked for, and checked.

No file is ever downloaded implicitly. :func:`locate` searches an explicit
path (from params.yaml) and the standard caches, checks the SHA-256 prefix
that the canonical file name carries (the torch.hub convention:
``vgg19-dcbb9e9d.pth`` starts with SHA-256 ``dcbb9e9d``) and otherwise fails
with a message naming the file, every place it looked and how to get it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from casd.errors import WeightsError


@dataclass(frozen=True)
class WeightFile:
    key: str
    filename: str
    url: str
    sha256_prefix: str  # first hex digits of the file's SHA-256 ("" where the canonical name carries none)
    used_by: str


REGISTRY: dict[str, WeightFile] = {w.key: w for w in [
    WeightFile("vgg19", "vgg19-dcbb9e9d.pth",
               "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "dcbb9e9d",
               "style encoder, perceptual / content / style / CX losses (model.vgg_weights)"),
    WeightFile("inception-fid", "pt_inception-2015-12-05-6726825d.pth",
               "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth", "6726825d",
               "FID (pytorch-fid InceptionV3 pool3)"),
    WeightFile("alexnet", "alexnet-owt-7be5be79.pth",
               "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79",
               "LPIPS metric backbone (AlexNet, v0.1)"),
]}


def torch_hub_checkpoints() -> Path:
    """The standard cache torchvision and pytorch-fid download into (honours $TORCH_HOME)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def search_paths(key: str, explicit: str | os.PathLike | None = None) -> list[Path]:
    """Places looked at for ``key``, in order: the explicit path, then the torch hub cache."""
    w = REGISTRY[key]
    paths = []
    if explicit not in (None, "", "torchvision", "auto"):
        p = Path(explicit).expanduser()
        paths.append(p / w.filename if p.is_dir() else p)
    paths.append(torch_hub_checkpoints() / w.filename)
    return paths


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def locate(key: str, explicit: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of the pretrained file ``key``; :class:`WeightsError` naming the file, where, and how to get it."""
    w = REGISTRY[key]
    looked = search_paths(key, explicit)
    for path in looked:
        if path.is_file():
            if verify and w.sha256_prefix and not sha256(path).startswith(w.sha256_prefix):
                raise WeightsError(f"{path}: SHA-256 does not start with {w.sha256_prefix} as {w.filename} must; "
                                   f"the file is corrupt or another file. Download it again from {w.url}")
            return path
    where = ", ".join(str(p) for p in looked)
    raise WeightsError(f"{w.filename} ({w.used_by}) not found; looked in: {where}. "
                       f"Get it with `casd weights fetch` where there is internet, or download {w.url} "
                       f"into {torch_hub_checkpoints()} (or point params.yaml at it)")


def load_state_dict(key: str, explicit: str | os.PathLike | None = None) -> dict:
    """Locate and load ``key`` as a state dict of tensors only (``weights_only=True``)."""
    import torch

    path = locate(key, explicit)
    return torch.load(path, map_location="cpu", weights_only=True)


def fetch(key: str, dest: Path | None = None) -> Path:
    """Download ``key`` into the torch hub cache (checksum verified, written atomically)."""
    import torch.hub

    w = REGISTRY[key]
    dest = Path(dest or torch_hub_checkpoints()) / w.filename
    if dest.is_file():
        return locate(key, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        # download_url_to_file writes to a temp file and renames; hash_prefix verifies the SHA-256 prefix.
        torch.hub.download_url_to_file(w.url, str(dest), hash_prefix=w.sha256_prefix or None, progress=True)
    except OSError as e:
        raise WeightsError(f"could not download {w.filename} from {w.url}: {e} (no internet?)") from e
    return dest


def cli_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="casd weights", description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    args = parser.parse_args(argv)
    for key, w in REGISTRY.items():
        if args.action == "fetch":
            print(f"{w.filename}: {fetch(key)}")
            continue
        try:
            status = f"present at {locate(key)}"
        except WeightsError as e:
            status = "MISSING" if "not found" in str(e) else f"BAD ({e})"
        print(f"{w.filename}\n  used by: {w.used_by}\n  sha256 starts: {w.sha256_prefix}\n"
              f"  looked in: {', '.join(map(str, search_paths(key)))}\n  status: {status}")
