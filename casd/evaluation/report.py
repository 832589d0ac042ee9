"""The static evaluation report ``reports/index.html``: one self-contained file (base64 PNGs, inline SVG).

Sections: ``#metrics`` (every number as in metrics/eval.json, in ``data-value``), ``#losses``,
``#best`` / ``#worst`` pairs, ``#samples`` (the test stage's strips). It is built from data the
evaluate stage hands over; it reads only pictures and the loss CSV.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from casd.evaluation.metrics import read_rgb
from casd.fileio import write_text

# Published CASD figures, DeepFashion 256x176 (reference README, section 5).
PAPER = {"fid": 11.37, "ssim": 0.725, "lpips": 0.194}
METRIC_INFO = {  # name -> (label, better)
    "ssim": ("SSIM (field: data range of each generated image)", "higher"),
    "ssim_fixed_range": ("SSIM, fixed data range 255", "higher"),
    "psnr": ("PSNR (dB)", "higher"),
    "lpips": ("LPIPS (AlexNet v0.1)", "lower"),
    "fid": ("FID (Inception pool3, vs training images)", "lower"),
}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td.name{text-align:left}td.skipped{color:#a00;font-style:italic}
.curves{display:flex;flex-wrap:wrap;gap:12px}.curves figure{margin:0}figcaption{font-size:.85em;text-align:center}
img{image-rendering:pixelated;max-width:100%}.note{color:#555;font-size:.9em}
"""


def _png_data_uri(image: np.ndarray) -> str:
    """uint8 [H, W, 3] -> ``data:image/png;base64,...``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(image: np.ndarray, alt: str, scale: int = 1) -> str:
    h, w = image.shape[:2]
    return (f'<img src="{_png_data_uri(image)}" alt="{html.escape(alt)}" width="{w * scale}" '
            f'height="{h * scale}">')


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"


def metrics_table(result: Mapping[str, Any]) -> str:
    """The ``#metrics`` table; each number cell has ``data-metric``, ``data-kind`` and ``data-value``."""
    skipped = result.get("skipped") or {}
    baseline = result.get("baseline")
    head = "<tr><th>metric</th><th>model</th>" + ("<th>baseline (source copied)</th>" if baseline else "") + \
           "<th>paper CASD (DeepFashion 256x176)</th><th>better</th></tr>"
    rows = [head]
    for name, (label, better) in METRIC_INFO.items():
        cells = [f'<td class="name">{label}</td>']
        for kind, values in (("model", result), ("baseline", baseline)):
            if values is None:
                continue
            value = values.get(name)
            if value is None:
                reason = skipped.get(name, "not computed")
                cells.append(f'<td class="skipped" data-metric="{name}" data-kind="{kind}" '
                             f'title="{html.escape(reason)}">skipped</td>')
            else:
                cells.append(f'<td data-metric="{name}" data-kind="{kind}" data-value="{value!r}">{_fmt(value)}</td>')
        paper = PAPER.get(name)
        cells.append(f"<td>{_fmt(paper) if paper is not None else '-'}</td><td>{better}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = f'<table id="metrics-table">{"".join(rows)}</table>'
    if skipped:
        items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in skipped.items())
        table += f'<p>Skipped metrics (no number is reported for them):</p><ul id="skipped">{items}</ul>'
    return table


def svg_curve(xs: Sequence[float], ys: Sequence[float], title: str, width: int = 300, height: int = 150) -> str:
    """A line chart as inline SVG (finite points only), min / max labelled."""
    points = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(float(x)) and math.isfinite(float(y))]
    if not points:
        return ""
    pad = 30
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    sx = (width - 2 * pad) / (x1 - x0 or 1.0)
    sy = (height - 2 * pad) / (y1 - y0 or 1.0)
    coords = " ".join(f"{pad + (x - x0) * sx:.1f},{height - pad - (y - y0) * sy:.1f}" for x, y in points)
    t = html.escape(title)
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="{t}" class="curve" data-series="{t}">'
            f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="#fafafa" '
            f'stroke="#ccc"/><polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{coords}"/>'
            f'<text x="2" y="{pad}" font-size="10">{y1:.4g}</text>'
            f'<text x="2" y="{height - pad}" font-size="10">{y0:.4g}</text>'
            f'<text x="{pad}" y="{height - 8}" font-size="10">{x0:g}</text>'
            f'<text x="{width - pad}" y="{height - 8}" font-size="10" text-anchor="end">{x1:g}</text>'
            f'</svg><figcaption>{t}</figcaption></figure>')


def loss_curves(loss_csv: Path) -> str:
    """One small chart per loss column of the train stage's CSV (x: step)."""
    if not loss_csv.is_file():
        return f'<p class="note">No training curves: {html.escape(str(loss_csv))} not found ' \
               '(e.g. an upstream release checkpoint was evaluated).</p>'
    with open(loss_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return f'<p class="note">{html.escape(str(loss_csv))} has no rows.</p>'
    x_name = "step" if "step" in rows[0] else next(iter(rows[0]))

    def column(name: str) -> list[float]:
        out = []
        for row in rows:
            try:
                out.append(float(row[name]))
            except (TypeError, ValueError):
                out.append(float("nan"))
        return out

    xs = column(x_name)
    charts = [svg_curve(xs, column(name), name) for name in rows[0] if name not in (x_name, "epoch")]
    return '<div class="curves">' + "".join(c for c in charts if c) + "</div>"


def _pair_picture(paths, source: str, target: str, file: str) -> np.ndarray:
    panels = [read_rgb(paths.test_images / source), read_rgb(paths.generated / file), read_rgb(paths.test_images / target)]
    return np.concatenate(panels, axis=1)


def ranked_pairs(rows: Sequence[Mapping[str, Any]], count: int) -> tuple[str, list, list]:
    """(metric used, best rows, worst rows) by LPIPS, or by SSIM where LPIPS was skipped."""
    metric = "lpips" if rows and rows[0].get("lpips") is not None else "ssim"
    scored = [r for r in rows if r.get(metric) is not None and math.isfinite(r[metric])]
    order = sorted(scored, key=lambda r: r[metric], reverse=metric == "ssim")  # best first
    count = min(count, len(order) // 2) if len(order) > 1 else len(order)
    return metric, order[:count], order[::-1][:count]


def pairs_section(paths, rows: Sequence[Mapping[str, Any]], which: str, metric: str) -> str:
    if not rows:
        return '<p class="note">no scored pairs</p>'
    lines = ["<table><tr><th>source | generated | ground truth</th><th>pair</th><th>LPIPS</th><th>SSIM</th>"
             "<th>PSNR</th></tr>"]
    for row in rows:
        picture = _pair_picture(paths, row["from"], row["to"], row["file"])
        lines.append(f'<tr data-file="{html.escape(row["file"])}"><td>{_img(picture, row["file"], 2)}</td>'
                     f'<td class="name">{html.escape(row["from"])}<br>&rarr; {html.escape(row["to"])}</td>'
                     + "".join(f'<td>{_fmt(row.get(m))}</td>' for m in ("lpips", "ssim", "psnr")) + "</tr>")
    return f'<p class="note">{which} by {metric.upper()}.</p>' + "".join(lines) + "</table>"


def sample_grid(strips_dir: Path, names: Sequence[str], count: int) -> tuple[str, int]:
    """The test stage's strips stacked into one picture; (HTML, number of strips used)."""
    files = [strips_dir / n for n in names if (strips_dir / n).is_file()][:count]
    if not files:
        return f'<p class="note">no strips in {html.escape(str(strips_dir))} (test.strips: 0?)</p>', 0
    strips = [read_rgb(f) for f in files]
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 2), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    grid = np.concatenate(strips, axis=0)
    return (f'<p class="note">source | target pose | generated | ground truth</p>'
            f'<div id="sample-grid" data-strips="{len(files)}">{_img(grid, "sample grid", 2)}</div>'), len(files)


def build_report(paths, result: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], config=None,
                 manifest: Mapping[str, Any] | None = None) -> Path:
    """Write ``paths.report``.

    paths: an ``EvaluatePaths`` (pictures, strips, loss CSV, report); result: the content of
    metrics/eval.json; rows: one mapping per pair (``from``, ``to``, ``file`` and its scores);
    config: an ``EvaluateConfig`` (how many pairs / strips to show).
    """
    show_pairs = getattr(config, "report_pairs", 5)
    show_strips = getattr(config, "report_strips", 8)
    metric, best, worst = ranked_pairs(rows, show_pairs)
    manifest = manifest or {}
    strip_names = manifest.get("strips") or sorted(p.name for p in Path(paths.strips).glob("*.png"))
    grid, _ = sample_grid(Path(paths.strips), strip_names, show_strips)
    facts = [f"{result.get('pairs')} test pairs"]
    if manifest.get("image_size"):
        facts.append("{}x{}".format(*manifest["image_size"]))
    if manifest.get("checkpoint_source"):
        facts.append(f"{manifest['checkpoint_source']} checkpoint")
    train = {}
    if Path(paths.train_metrics).is_file():
        train = json.loads(Path(paths.train_metrics).read_text(encoding="utf-8"))
        facts.append(f"trained {train.get('epochs', '?')} epochs / {train.get('steps', '?')} steps")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CASD evaluation report</title>
<style>{_STYLE}</style></head><body>
<h1>CASD evaluation report</h1>
<p class="note" id="facts">{html.escape(" · ".join(facts))}</p>
<section id="metrics"><h2>Metrics</h2>{metrics_table(result)}
<p class="note">Baseline: the source image returned unchanged. Paper: published CASD figures on DeepFashion
256x176 (8,570 pairs); numbers of the synthetic demo are not comparable with them.</p></section>
<section id="losses"><h2>Training curves</h2>{loss_curves(Path(paths.loss_csv))}</section>
<section id="best"><h2>Best pairs</h2>{pairs_section(paths, best, "Lowest error", metric)}</section>
<section id="worst"><h2>Worst pairs</h2>{pairs_section(paths, worst, "Highest error", metric)}</section>
<section id="samples"><h2>Sample grid</h2>{grid}</section>
</body></html>
"""
    write_text(paths.report, page)
    return Path(paths.report)
