"""The evaluate stage and its report: numbers, skipped metrics, the HTML's content."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from casd import inference
from casd.evaluation import evaluate, metrics


def _fake_test_stage(root, paths, count=6, strips=2):
    """What the test stage leaves behind: pictures (noisy ground truth), strips, a finished manifest."""
    from casd.data.layout import read_pairs

    pairs = read_pairs(root / "split" / "pairs-test.csv")[:count]
    rng = np.random.default_rng(0)
    rows = []
    for i, (source, target) in enumerate(pairs):
        name = inference.output_name(source, target)
        truth = np.asarray(Image.open(paths.test_images / target).convert("RGB")).astype(float)
        noisy = np.clip(truth + rng.normal(0, 8 + 6 * i, truth.shape), 0, 255).astype(np.uint8)
        paths.generated.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(paths.generated / name)
        rows.append([source, target, name])
    paths.strips.mkdir(parents=True, exist_ok=True)
    for _, _, name in rows[:strips]:
        Image.fromarray(rng.integers(0, 255, (64, 4 * 44, 3), dtype=np.uint8)).save(paths.strips / name)
    (paths.generated / "manifest.json").write_text(json.dumps(
        {"complete": True, "pairs": rows, "strips": [r[2] for r in rows[:strips]], "image_size": [64, 44],
         "checkpoint_source": "casd"}))
    return rows


@pytest.fixture
def stage(tiny_prepared, tmp_path):
    paths = evaluate.EvaluatePaths.under(tmp_path)
    paths.test_images = tiny_prepared / "resized" / "test"
    paths.train_images = tiny_prepared / "resized" / "train"
    rows = _fake_test_stage(tiny_prepared, paths)
    paths.loss_csv.parent.mkdir(parents=True, exist_ok=True)
    paths.loss_csv.write_text("epoch,step,lr,l1,g_total,d_pb,samples_per_s\n"
                              "1,10,0.001,0.9,3.0,0.5,4.1\n2,20,0.001,0.7,2.5,0.45,4.2\n3,30,0.0005,0.6,2.2,0.4,4.0\n")
    return paths, rows


@pytest.fixture(scope="module")
def random_networks():
    import lpips

    torch.manual_seed(0)
    with metrics._quiet_torchvision():
        lp = lpips.LPIPS(pretrained=False, pnet_rand=True, net="alex", verbose=False).eval()
    inception = metrics.build_inception(None)
    for m in inception.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return evaluate.Networks(lpips=lp, inception=inception, inception_id="random-test")


def _config(**kw):
    return evaluate.EvaluateConfig(device="cpu", batch_size=4, **kw)


class _Cells(HTMLParser):
    """Collects the metric cells, images, SVG curves and section ids of the report."""

    def __init__(self):
        super().__init__()
        self.cells, self.images, self.svgs, self.sections, self.rows = [], [], [], [], {}
        self._section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.sections.append(self._section)
        if tag == "td" and "data-metric" in a:
            self.cells.append(a)
        if tag == "img":
            self.images.append((self._section, a))
        if tag == "svg":
            self.svgs.append(a)
        if tag == "tr" and "data-file" in a:
            self.rows.setdefault(self._section, []).append(a["data-file"])


def _parse(path):
    parser = _Cells()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_scores_equal_the_packages_and_the_report_shows_them(stage, random_networks):
    import lpips as lpips_package
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    paths, rows = stage
    result = evaluate.evaluate(_config(), paths, networks=random_networks, track=False)
    table = evaluate.read_pairs_csv(paths.pairs_csv)
    assert [(r["from"], r["to"], r["file"]) for r in table] == [tuple(r) for r in rows]

    # per pair: the packages' own functions on the files
    for row in table[:2]:
        gen = np.asarray(Image.open(paths.generated / row["file"]).convert("RGB"))
        truth = np.asarray(Image.open(paths.test_images / row["to"]).convert("RGB"))
        source = np.asarray(Image.open(paths.test_images / row["from"]).convert("RGB"))
        ssim = structural_similarity(gen.astype(float), truth.astype(float), gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=float(gen.max()) - gen.min(),
                                     channel_axis=-1)
        assert row["ssim"] == pytest.approx(ssim, rel=1e-9)
        fixed = structural_similarity(gen.astype(float), truth.astype(float), gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=255, channel_axis=-1)
        assert row["ssim_fixed_range"] == pytest.approx(fixed, rel=1e-9)
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(truth, gen, data_range=255), rel=1e-9)
        with torch.no_grad():
            ref = random_networks.lpips(lpips_package.im2tensor(gen), lpips_package.im2tensor(truth)).item()
        assert row["lpips"] == pytest.approx(ref, rel=1e-4)
        base = structural_similarity(source.astype(float), truth.astype(float), gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=float(source.max()) - source.min(),
                                     channel_axis=-1)
        assert row["baseline_ssim"] == pytest.approx(base, rel=1e-9)

    # aggregates: means of the CSV; FID finite; the noisier pairs score worse
    stored = json.loads(paths.metrics.read_text())
    assert stored == json.loads(json.dumps(result))
    for name in ("ssim", "psnr", "lpips"):
        assert stored[name] == pytest.approx(np.mean([r[name] for r in table]), rel=1e-12)
        assert stored["baseline"][name] == pytest.approx(np.mean([r[f"baseline_{name}"] for r in table]), rel=1e-12)
    assert stored["pairs"] == len(rows) and "skipped" not in stored
    assert stored["fid"] > 0 and stored["baseline"]["fid"] > 0
    assert table[0]["ssim"] > table[-1]["ssim"]
    assert len(list(paths.fid_cache.glob("*.npz"))) == 1  # real-image statistics cached

    # the report: every number of eval.json, exactly; images; curves; sections
    page = _parse(paths.report)
    assert page.sections == ["metrics", "losses", "best", "worst", "samples"]
    shown = {(c["data-kind"], c["data-metric"]): c.get("data-value") for c in page.cells}
    for name in evaluate.METRICS:
        assert float(shown[("model", name)]) == stored[name]
        assert float(shown[("baseline", name)]) == stored["baseline"][name]
    assert {s["data-series"] for s in page.svgs} == {"lr", "l1", "g_total", "d_pb", "samples_per_s"}
    by_lpips = sorted(table, key=lambda r: r["lpips"])
    assert page.rows["best"] == [r["file"] for r in by_lpips[:3]]
    assert page.rows["worst"] == [r["file"] for r in by_lpips[::-1][:3]]
    sections = [s for s, _ in page.images]
    assert sections.count("best") == 3 and sections.count("worst") == 3 and sections.count("samples") == 1
    assert all(a["src"].startswith("data:image/png;base64,") for _, a in page.images)


def test_missing_weights_skip_metrics_and_never_produce_numbers(stage, tmp_path, monkeypatch):
    paths, rows = stage
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    result = evaluate.evaluate(_config(), paths, track=False)  # networks from the (absent) weight files
    assert result["lpips"] is None and result["fid"] is None
    assert result["baseline"]["lpips"] is None and result["baseline"]["fid"] is None
    assert "alexnet-owt-7be5be79.pth" in result["skipped"]["lpips"] and "looked in" in result["skipped"]["lpips"]
    assert "pt_inception-2015-12-05-6726825d.pth" in result["skipped"]["fid"]
    assert isinstance(result["ssim"], float) and isinstance(result["psnr"], float)
    with open(paths.pairs_csv, newline="") as f:
        raw = list(csv.DictReader(f))
    assert all(r["lpips"] == "" and r["baseline_lpips"] == "" for r in raw)
    assert all(r["ssim"] != "" for r in raw)

    page = _parse(paths.report)
    cells = {(c["data-kind"], c["data-metric"]): c for c in page.cells}
    for kind in ("model", "baseline"):
        for name in ("lpips", "fid"):
            assert "data-value" not in cells[(kind, name)] and "not found" in cells[(kind, name)]["title"]
    text = paths.report.read_text()
    assert "pt_inception-2015-12-05-6726825d.pth" in text and 'id="skipped"' in text
    # best / worst fall back to SSIM
    by_ssim = sorted(evaluate.read_pairs_csv(paths.pairs_csv), key=lambda r: -r["ssim"])
    assert page.rows["best"][0] == by_ssim[0]["file"]


def test_metrics_left_out_by_config_are_skipped(stage):
    paths, _ = stage
    result = evaluate.evaluate(_config(metrics=("ssim",), baseline=False), paths, track=False)
    assert result["ssim_fixed_range"] is None and result["psnr"] is None and result["lpips"] is None and result["fid"] is None and "baseline" not in result
    assert result["skipped"] == {"ssim_fixed_range": "not in evaluate.metrics", "psnr": "not in evaluate.metrics", "lpips": "not in evaluate.metrics",
                                 "fid": "not in evaluate.metrics"}


def test_unfinished_test_stage_is_an_error(stage):
    from casd.errors import ConfigError, DataError

    paths, rows = stage
    (paths.generated / rows[1][2]).unlink()
    with pytest.raises(DataError, match="missing"):
        evaluate.evaluate(_config(metrics=("ssim",)), paths, track=False)
    manifest = json.loads((paths.generated / "manifest.json").read_text())
    (paths.generated / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(DataError, match="did not finish"):
        evaluate.evaluate(_config(metrics=("ssim",)), paths, track=False)
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate.EvaluateConfig(metrics=("ssim", "is"))


def test_repository_params_build_the_evaluate_config():
    from pathlib import Path

    from casd.config import from_dict, load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    config = from_dict(evaluate.EvaluateConfig, params["evaluate"], "evaluate")
    assert set(config.metrics) == set(evaluate.METRICS)
