"""The evaluate stage and its report: numbers, skipped metrics, the HTML's content."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from casd.errors import DataError
from casd.evaluation import evaluate, metrics
from helpers import fake_test_stage



@pytest.fixture
def stage(tiny_prepared, tmp_path):
    paths = evaluate.EvaluatePaths.under(tmp_path)
    paths.test_images = tiny_prepared / "resized" / "test"
    paths.train_images = tiny_prepared / "resized" / "train"
    paths.parsing = tiny_prepared / "parsing"
    rows = fake_test_stage(tiny_prepared, paths)
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
    return evaluate.MetricNetworks(lpips=lp, inception=inception, inception_id="random-test")


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


def _numbers_only(value):
    if isinstance(value, dict):
        return all(_numbers_only(v) for v in value.values())
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


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

    # aggregates: means of the CSV; FID finite; the noisier pairs score worse; numbers only
    stored = json.loads(paths.metrics.read_text())
    assert stored == json.loads(json.dumps(result.numbers)) and _numbers_only(stored)
    for name in ("ssim", "ssim_fixed_range", "psnr", "lpips"):
        assert stored[name] == pytest.approx(np.mean([r[name] for r in table]), rel=1e-12)
        assert stored["baseline"][name] == pytest.approx(np.mean([r[f"baseline_{name}"] for r in table]), rel=1e-12)
    assert stored["pairs"] == len(rows) and result.skipped == {}
    assert stored["fid"] > 0 and stored["baseline"]["fid"] > 0
    assert table[0]["ssim"] > table[-1]["ssim"]
    assert len(list(paths.fid_cache.glob("*.npz"))) == 1  # real-image statistics cached
    # predicted parsing: the truth except half of the first pair; the source's parsing scores lower
    assert 0.9 < stored["parsing_pixel_accuracy"] < 1 and table[0]["parsing_pixel_accuracy"] < 1
    assert [r["parsing_pixel_accuracy"] for r in table[1:]] == [1.0] * (len(table) - 1)
    assert stored["baseline"]["parsing_miou"] < stored["parsing_miou"] <= 1
    # colour: noisy copies of the ground truth keep their region colours, far from the training means
    assert stored["colour_error"] < stored["colour_error_training_mean"] / 3
    assert stored["colour_gap_closed"] > 0.7 and set(stored["colour_regions"]) <= set(evaluate.COLOUR_REGIONS)
    protocol = json.loads(paths.protocol.read_text())
    assert protocol["protocol"]["image_size"] == [64, 44] and "bicubic" in protocol["protocol"]["resize_filter"]

    # the report: every number of eval.json, exactly; the protocol; images; curves; sections
    page = _parse(paths.report)
    assert page.sections == ["metrics", "colour", "pattern", "parsing", "losses", "best", "worst", "samples"]
    shown = {(c["data-kind"], c["data-metric"]): c.get("data-value") for c in page.cells}
    for name in (*evaluate.IMAGE_METRICS, "parsing_pixel_accuracy", "parsing_miou"):
        assert float(shown[("model", name)]) == stored[name]
        assert float(shown[("baseline", name)]) == stored["baseline"][name]
    for name in ("colour_error", "colour_gap_closed", "pattern_error", "pattern_error_flat", "pattern_gap_closed"):
        assert float(shown[("model", name)]) == stored[name]
    # pattern: the tiny set's patterned garments are counted, the table names only garments
    assert stored["pattern_pairs"] > 0 and set(stored["pattern_regions"]) == set(evaluate.PATTERN_REGIONS)
    assert stored["pattern_error_source_pattern"] < stored["pattern_error_flat"]
    text = paths.report.read_text()
    assert 'id="protocol"' in text and "generated.max() - generated.min()" in text
    assert {s["data-series"] for s in page.svgs} == {"lr", "l1", "g_total", "d_pb", "samples_per_s"}
    by_lpips = sorted(table, key=lambda r: r["lpips"])
    assert page.rows["best"] == [r["file"] for r in by_lpips[:3]]
    assert page.rows["worst"] == [r["file"] for r in by_lpips[::-1][:3]]
    sections = [s for s, _ in page.images]
    assert sections.count("best") == 3 and sections.count("worst") == 3 and sections.count("samples") == 1
    assert sections.count("parsing") == 1
    assert all(a["src"].startswith("data:image/png;base64,") for _, a in page.images)


def test_missing_weights_skip_metrics_and_never_produce_numbers(stage, tmp_path, monkeypatch):
    paths, rows = stage
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    shutil.rmtree(paths.predicted_parsing)
    result = evaluate.evaluate(_config(), paths, track=False)  # networks from the (absent) weight files
    numbers = json.loads(paths.metrics.read_text())
    assert numbers["lpips"] is None and numbers["fid"] is None and _numbers_only(numbers)
    assert numbers["baseline"]["lpips"] is None and numbers["baseline"]["fid"] is None
    assert numbers["parsing_miou"] is None and numbers["baseline"]["parsing_miou"] > 0  # the source's parsing
    assert "alexnet-owt-7be5be79.pth" in result.skipped["lpips"] and "looked in" in result.skipped["lpips"]
    assert "pt_inception-2015-12-05-6726825d.pth" in result.skipped["fid"]
    assert "no predicted parsing" in result.skipped["parsing"]
    assert json.loads(paths.protocol.read_text())["skipped"] == result.skipped
    assert isinstance(numbers["ssim"], float) and isinstance(numbers["psnr"], float)
    with open(paths.pairs_csv, newline="") as f:
        raw = list(csv.DictReader(f))
    assert all("lpips" not in r and "parsing_pixel_accuracy" not in r for r in raw)
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
    numbers = result.numbers
    assert all(numbers[m] is None for m in ("ssim_fixed_range", "psnr", "lpips", "fid", "colour_error",
                                            "parsing_miou")) and "baseline" not in numbers
    assert result.skipped == {m: "not in evaluate.metrics" for m in evaluate.METRICS if m != "ssim"}


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
    with pytest.raises(ConfigError, match="resize_filter"):
        evaluate.EvaluateConfig(resize_filter="cubic")


def test_folder_scoring_equals_the_stage_on_the_same_images(stage, random_networks, tmp_path):
    from casd import cli
    from casd.data.tables import write_pairs

    paths, rows = stage
    stage_result = evaluate.evaluate(_config(), paths, networks=random_networks, track=False)
    write_pairs(tmp_path / "pairs.csv", [(s, t) for s, t, _ in rows])
    out = tmp_path / "folder.json"
    folder = evaluate.evaluate_folder(paths.generated, _config(), paths, out, pairs_csv=tmp_path / "pairs.csv",
                                      networks=random_networks, report=tmp_path / "folder.html")
    assert json.loads(out.read_text())["metrics"] == json.loads(paths.metrics.read_text())
    assert folder.numbers == stage_result.numbers and folder.protocol == stage_result.protocol
    assert _parse(tmp_path / "folder.html").sections[0] == "metrics"
    # the command line, SSIM only (no networks), without a pairs CSV: every picture in the folder
    argv = ["evaluate", "--generated", str(paths.generated), "--out", str(tmp_path / "cli.json"),
            "--ground-truth", str(paths.test_images), "--train-images", str(paths.train_images),
            "--parsing", str(paths.parsing), "--predicted-parsing", str(paths.predicted_parsing),
            "--params", str(tmp_path / "none.yaml")]
    params = tmp_path / "none.yaml"
    params.write_text("evaluate:\n  metrics: [ssim, psnr, colour, parsing]\n  device: cpu\n")
    cli.main(argv)
    numbers = json.loads((tmp_path / "cli.json").read_text())["metrics"]
    for name in ("ssim", "psnr", "colour_error", "colour_gap_closed", "parsing_miou"):
        assert numbers[name] == pytest.approx(stage_result.numbers[name], rel=1e-12)
    assert numbers["pattern_gap_closed"] is None   # not asked for: null, never a number
    # --phase train: the same pairs scored as training pairs read their parsing maps from <parsing>/train/
    train_only = tmp_path / "parsing_train_only"
    shutil.copytree(paths.parsing / "train", train_only / "train")
    for path in (paths.parsing / "test").iterdir():
        shutil.copy(path, train_only / "train" / path.name)
    argv[argv.index("--parsing") + 1] = str(train_only)
    argv[argv.index("--out") + 1] = str(tmp_path / "cli_train.json")
    cli.main(argv + ["--phase", "train"])
    as_train = json.loads((tmp_path / "cli_train.json").read_text())["metrics"]
    for name in ("colour_error", "colour_gap_closed", "parsing_miou"):
        assert as_train[name] == pytest.approx(stage_result.numbers[name], rel=1e-12)
    cli.main(argv)  # read as test pairs, the same folder has no test/ maps: colour and parsing are skipped
    as_test = json.loads((tmp_path / "cli_train.json").read_text())
    assert as_test["metrics"]["colour_error"] is None and as_test["metrics"]["parsing_miou"] is None
    assert "not found" in as_test["skipped"]["colour"]


def test_upstream_strips_are_cropped_and_other_names_follow_a_pattern(stage, tmp_path):
    """Upstream's test.py writes <from>.jpg___<to>_vis.jpg strips of 7 panels, the generated one last."""
    paths, rows = stage
    strips, plain, named = tmp_path / "strips", tmp_path / "plain", tmp_path / "named"
    for folder in (strips, plain, named):
        folder.mkdir()
    rng = np.random.default_rng(3)
    for source, target, name in rows:
        generated = np.asarray(Image.open(paths.generated / name))
        panels = [rng.integers(0, 256, generated.shape, dtype=np.uint8) for _ in range(6)] + [generated]
        strip = tmp_path / f"{source}___{Path(target).stem}_vis.jpg"
        Image.fromarray(np.concatenate(panels, axis=1)).save(strips / strip.name, quality=90)
        decoded = np.asarray(Image.open(strips / strip.name).convert("RGB"))
        assert decoded.shape[1] == 7 * generated.shape[1]
        panel = decoded[:, 6 * generated.shape[1]:]  # what the evaluator must score
        Image.fromarray(panel).save(plain / name)
        Image.fromarray(panel).save(named / f"{Path(source).stem}-to-{Path(target).stem}.png")
    config = _config(metrics=("ssim", "psnr"))
    scored = {}
    for folder, patterns in ((strips, evaluate.DEFAULT_PATTERNS), (plain, evaluate.DEFAULT_PATTERNS),
                             (named, ("{from}-to-{to}.png",))):
        result = evaluate.evaluate_folder(folder, config, paths, tmp_path / f"{folder.name}.json", patterns=patterns)
        assert len(result.pairs) == len(rows)
        scored[folder.name] = result.numbers
    assert scored["strips"] == scored["plain"] == scored["named"]
    assert all(p.panel == (6, 7) for p in evaluate.find_generated(strips, paths.test_images))
    with pytest.raises(DataError, match="7 equal panels"):
        evaluate.crop_panel(np.zeros((4, 20, 3), np.uint8), 6, 7, "x.jpg")


def test_generated_pictures_are_resized_to_the_protocol_size(stage, tmp_path):
    paths, rows = stage
    big = tmp_path / "big"
    big.mkdir()
    for _, _, name in rows:  # 256x256-like: the pictures at another size, as upstream's frame
        Image.open(paths.generated / name).resize((64, 64), Image.Resampling.BICUBIC).save(big / name)
    config = _config(metrics=("ssim",), image_size=(64, 44), resize_filter="bilinear")
    result = evaluate.evaluate_folder(big, config, paths, tmp_path / "big.json")
    truth = np.asarray(Image.open(paths.test_images / rows[0][1]).convert("RGB"))
    resized = np.asarray(Image.open(big / rows[0][2]).resize((44, 64), Image.Resampling.BILINEAR))
    assert result.rows()[0]["ssim"] == pytest.approx(metrics.ssim(resized[None], truth[None]).item(), rel=1e-12)
    assert "bilinear" in result.protocol["resize_filter"] and result.protocol["image_size"] == [64, 44]


@pytest.mark.parametrize("name", ["params.yaml", "params-deepfashion.yaml", "params-upstream.yaml"])
def test_repository_params_build_the_evaluate_config(name):
    from casd.config import from_dict, load_params

    path = Path(__file__).resolve().parents[1] / name
    if not path.is_file():
        pytest.skip(f"{name} not in this checkout")
    config = from_dict(evaluate.EvaluateConfig, load_params(path)["evaluate"], "evaluate")
    assert set(config.metrics) == set(evaluate.METRICS)


def test_pairs_csv_format_and_round_trip(tmp_path):
    pairs = [evaluate.Pair("a,1.jpg", "b.jpg", "0.png"), evaluate.Pair("b.jpg", 'a"2.jpg', "1.png"),
             evaluate.Pair("c.jpg", "b.jpg", "2.png")]
    per_pair = {"psnr": np.array([30.5, np.inf, 0.1 + 0.2]), "ssim": np.array([0.5, np.nan, 1e-20]),
                "lpips": np.array([0.25, 0.5, 0.75], dtype=np.float32), "baseline_ssim": np.full(3, np.nan)}
    evaluation = evaluate.Evaluation(pairs, {}, per_pair, {}, {}, reader=None)
    path = tmp_path / "eval_pairs.csv"
    evaluate.write_pairs_csv(path, evaluation)
    # PER_PAIR's order, repr of each float64 (float32 widened), empty cells where skipped, CRLF as csv.writer
    assert path.read_bytes() == (
        b"from,to,file,ssim,psnr,lpips,baseline_ssim\r\n"
        b'"a,1.jpg",b.jpg,0.png,0.5,30.5,0.25,\r\n'
        b'b.jpg,"a""2.jpg",1.png,,inf,0.5,\r\n'
        b"c.jpg,b.jpg,2.png,1e-20,0.30000000000000004,0.75,\r\n")
    rows = evaluation.rows()
    assert rows[1] == {"from": "b.jpg", "to": 'a"2.jpg', "file": "1.png", "psnr": float("inf"), "ssim": None,
                       "lpips": 0.5, "baseline_ssim": None}
    assert all(type(r[k]) is float for r in rows for k in ("psnr", "lpips"))
    back = evaluate.read_pairs_csv(path)
    assert back == [{k: r[k] for k in ("from", "to", "file", "ssim", "psnr", "lpips", "baseline_ssim")} for r in rows]
    assert back[2]["psnr"] == 0.1 + 0.2   # floats read back exactly


def test_loss_csv_keeps_its_format_and_the_report_charts_it(tmp_path):
    from casd.evaluation.report import loss_curves
    from casd.train.loop import write_loss_csv

    history = [{"epoch": 1, "step": 10, "lr": 0.001, "l1": 0.123456789, "g_total": 3.0, "samples_per_s": 4.25},
               {"epoch": 2, "step": 20, "lr": 0, "g_total": float("nan"), "samples_per_s": 1234567.0},
               {"epoch": 3, "step": 30, "lr": 5e-4, "l1": float("inf"), "g_total": -0.0, "samples_per_s": 4.0}]
    path = tmp_path / "train_loss.csv"
    write_loss_csv(path, history)
    assert path.read_text() == ("epoch,step,lr,l1,g_total,samples_per_s\n"
                                "1,10,0.001,0.123457,3,4.25\n"
                                "2,20,0,nan,nan,1.23457e+06\n"
                                "3,30,0.0005,inf,-0,4\n")
    charts = loss_curves(path)
    assert [s.split('"')[0] for s in charts.split('data-series="')[1:]] == ["lr", "l1", "g_total", "samples_per_s"]
    path.write_text("epoch,step,l1\n")
    assert "has no rows" in loss_curves(path)
    path.write_text("")
    assert "has no rows" in loss_curves(path)
