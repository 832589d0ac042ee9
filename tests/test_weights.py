"""casd.weights: listing, locating with checksums, atomic verified fetch, the offline message."""

from __future__ import annotations

import hashlib
import urllib.error

import pytest

from casd import weights
from casd.cli import main as casd_main
from casd.errors import WeightsError


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, so that nothing on this machine is found by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture()
def local_file(tmp_path, monkeypatch):
    """A registry entry served from a file:// URL with its true SHA-256 prefix in the name."""
    payload = b"not really weights" * 100
    digest = hashlib.sha256(payload).hexdigest()
    src = tmp_path / "server" / f"tiny-{digest[:8]}.pth"
    src.parent.mkdir()
    src.write_bytes(payload)
    entry = weights.WeightFile("tiny", src.name, src.as_uri(), digest[:8], "tests")
    monkeypatch.setitem(weights.REGISTRY, "tiny", entry)
    return entry, payload


def test_registry_lists_every_file_the_project_can_use():
    names = {w.filename for w in weights.REGISTRY.values()}
    assert {"vgg19-dcbb9e9d.pth", "vgg_conv.pth", "pt_inception-2015-12-05-6726825d.pth",
            "alexnet-owt-7be5be79.pth", "alex.pth"} <= names
    for w in weights.REGISTRY.values():
        # a prefix taken from the file name must really be the one in the name
        if w.home == "torch-hub" and w.sha256_prefix:
            assert w.sha256_prefix in w.filename
        if w.sha256:
            assert w.sha256.startswith(w.sha256_prefix) and len(w.sha256) == 64
    assert "no published checksum" in weights.REGISTRY["vgg-conv-cx"].expected()
    assert "prefix" in weights.REGISTRY["vgg19"].expected()


def test_lpips_linear_layers_found_inside_the_package():
    lpips = pytest.importorskip("lpips")
    path = weights.locate("lpips-alex-lin")
    assert path.parent.parent.parent == __import__("pathlib").Path(lpips.__file__).parent
    assert weights.sha256(path) == weights.REGISTRY["lpips-alex-lin"].sha256


def test_missing_file_message_names_file_place_and_remedy(hub):
    with pytest.raises(WeightsError) as e:
        weights.locate("vgg19")
    msg = str(e.value)
    assert "vgg19-dcbb9e9d.pth" in msg and str(hub) in msg and "casd weights fetch vgg19" in msg


def test_explicit_path_with_wrong_checksum_is_refused(tmp_path, hub):
    bad = tmp_path / "vgg19-dcbb9e9d.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        weights.locate("vgg19", bad)
    assert weights.locate("vgg19", bad, verify=False) == bad


def test_fetch_verifies_and_places_file(hub, local_file):
    entry, payload = local_file
    path = weights.fetch("tiny")
    assert path == hub / entry.filename and path.read_bytes() == payload
    assert weights.locate("tiny") == path
    assert weights.fetch("tiny") == path  # present: checked, not downloaded again


def test_fetch_with_wrong_checksum_leaves_nothing(hub, local_file, monkeypatch):
    entry, _ = local_file
    monkeypatch.setitem(weights.REGISTRY, "tiny", weights.WeightFile(
        "tiny", entry.filename, entry.url, "00000000", "tests"))
    with pytest.raises(WeightsError, match="discarded"):
        weights.fetch("tiny")
    assert not hub.exists() or not any(hub.iterdir())


def test_offline_fetch_one_line_per_file_and_nonzero_exit(hub, monkeypatch, capsys):
    def no_network(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights, "_open_url", no_network)
    keys = ["vgg19", "inception-fid", "alexnet"]
    with pytest.raises(SystemExit) as e:
        casd_main(["weights", "fetch", *keys])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    failures = [line for line in err if line.startswith("FAILED")]
    assert len(failures) == len(keys)
    for key, line in zip(keys, failures):
        assert weights.REGISTRY[key].filename in line and "no internet" in line
    assert "3 of 3" in err[-1]
    assert not hub.exists() or not any(hub.iterdir())


def test_listing_shows_each_file_with_checksum_place_and_status(hub, capsys):
    casd_main(["weights"])
    out = capsys.readouterr().out
    for key, w in weights.REGISTRY.items():
        assert f"{w.filename}  [{key}]" in out
    assert out.count("status:") == len(weights.REGISTRY)
    assert "MISSING" in out and str(hub) in out
    assert "dcbb9e9d" in out and "no published checksum" in out


def test_unknown_key_is_an_error(capsys):
    with pytest.raises(SystemExit):
        casd_main(["weights", "fetch", "resnet"])
    assert "unknown pretrained file" in capsys.readouterr().err


def test_fetch_all_skips_files_not_used_by_default(hub, monkeypatch, capsys):
    tried = []

    def no_network(url, timeout):
        tried.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(weights, "_open_url", no_network)
    with pytest.raises(SystemExit):
        casd_main(["weights", "fetch"])
    out = capsys.readouterr()
    assert "skipped  vgg_conv.pth" in out.out
    assert weights.REGISTRY["vgg-conv-cx"].url not in tried and weights.REGISTRY["vgg19"].url in tried
    # the lpips linear layers are inside the installed package: found, not downloaded
    assert not any(url.endswith("/v0.1/alex.pth") for url in tried)
