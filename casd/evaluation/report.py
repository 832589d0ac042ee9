"""The static evaluation report: one self-contained HTML file (base64 PNGs, inline SVG).

Sections: ``#metrics`` (every number as in metrics/eval.json, in ``data-value``, the protocol
beside it), ``#colour``, ``#pattern``, ``#parsing``, ``#losses``, ``#best`` / ``#worst`` pairs, ``#samples``.
Built from :class:`ReportInputs`: data and picture callables handed over by the evaluation.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from casd.data.images import read_image
from casd.fileio import write_text

# Published CASD figures, DeepFashion 256x176 (reference README, section 5).
PAPER = {"fid": 11.37, "ssim": 0.725, "lpips": 0.194}
METRIC_INFO = {  # name -> (label, better)
    "ssim": ("SSIM", "higher"),
    "ssim_fixed_range": ("SSIM, fixed data range 255", "higher"),
    "psnr": ("PSNR (dB)", "higher"),
    "lpips": ("LPIPS", "lower"),
    "fid": ("FID", "lower"),
    "parsing_pixel_accuracy": ("predicted target parsing: pixel accuracy", "higher"),
    "parsing_miou": ("predicted target parsing: mean IoU", "higher"),
}
PROTOCOL_OF = {"ssim": "ssim", "ssim_fixed_range": "ssim_fixed_range", "lpips": "lpips", "fid": "fid_reference",
               "parsing_pixel_accuracy": "parsing", "parsing_miou": "parsing"}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td.name,td.protocol{text-align:left}td.protocol{font-size:.8em;color:#555}
td.skipped{color:#a00;font-style:italic}
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


@dataclass
class ReportInputs:
    """What the report shows; pictures come from callables so that the report reads no data layout."""

    numbers: Mapping[str, Any]                      # metrics/eval.json
    rows: Sequence[Mapping[str, Any]]               # per pair: from, to, file and its scores
    protocol: Mapping[str, Any]
    skipped: Mapping[str, str]
    pair_picture: Callable[[int], np.ndarray]       # row index -> source | generated | ground truth
    parsing_picture: Callable[[int], np.ndarray] | None = None  # row index -> parsing panel
    facts: list[str] = field(default_factory=list)
    loss_csv: Path | None = None
    strips: Sequence[Path] = ()
    show_pairs: int = 5
    show_strips: int = 8


def _cell(name: str, kind: str, value: Any, skipped: Mapping[str, str]) -> str:
    if value is None:
        group = name.split("_", 1)[0] if name.startswith(("parsing_", "colour_", "pattern_")) else name
        reason = skipped.get(group, "not computed")
        return (f'<td class="skipped" data-metric="{name}" data-kind="{kind}" '
                f'title="{html.escape(reason)}">skipped</td>')
    return f'<td data-metric="{name}" data-kind="{kind}" data-value="{value!r}">{_fmt(value)}</td>'


def metrics_table(numbers: Mapping[str, Any], protocol: Mapping[str, Any], skipped: Mapping[str, str]) -> str:
    """The ``#metrics`` table: model, baseline, paper, protocol; number cells carry ``data-value``."""
    baseline = numbers.get("baseline")
    head = "<tr><th>metric</th><th>model</th>" + ("<th>baseline (source copied)</th>" if baseline else "") + \
           "<th>paper CASD (DeepFashion 256x176)</th><th>better</th><th>protocol</th></tr>"
    rows = [head]
    for name, (label, better) in METRIC_INFO.items():
        cells = [f'<td class="name">{label}</td>', _cell(name, "model", numbers.get(name), skipped)]
        if baseline is not None:
            cells.append(_cell(name, "baseline", baseline.get(name), skipped))
        paper = PAPER.get(name)
        how = protocol.get(PROTOCOL_OF.get(name, ""), "")
        cells.append(f"<td>{_fmt(paper) if paper is not None else '-'}</td><td>{better}</td>"
                     f'<td class="protocol">{html.escape(str(how))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = f'<table id="metrics-table">{"".join(rows)}</table>'
    items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in protocol.items())
    table += f'<p>Protocol:</p><ul id="protocol">{items}</ul>'
    if skipped:
        items = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in skipped.items())
        table += f'<p>Skipped metrics (no number is reported for them):</p><ul id="skipped">{items}</ul>'
    return table


# The two appearance-transfer diagnostics: column keys (after "<kind>_") and headings, the explanation.
TRANSFER_TABLES = {
    "colour": ((("error", "model error"), ("error_source_colours", "source colours (perfect transfer)"),
                ("error_training_mean", "training mean colours (ignores the source)"), ("gap_closed", "gap closed")),
               "Distance (RMS over RGB, 0..255) between the mean colour of the generated image and of the ground "
               "truth inside each region of the ground-truth target parsing. Gap closed: 1 = the source's colours "
               "carried over, 0 = a model that ignores the source."),
    "pattern": ((("error", "model error"), ("error_source_pattern", "source pattern (perfect transfer)"),
                 ("error_flat", "flat: the source's mean colour everywhere (no pattern)"),
                 ("gap_closed", "gap closed")),
                "Distance (RMS, 0..255) between the pattern statistics of the generated image and of the ground "
                "truth inside each garment region of the ground-truth target parsing, on pairs whose source "
                "garment is patterned: per channel the colour standard deviation and the mean absolute difference "
                "of neighbouring pixels, over the region's interior. Gap closed: 1 = the source's stripes, checks "
                "or dots carried over, 0 = a flat garment of the right colour."),
}


def transfer_table(numbers: Mapping[str, Any], skipped: Mapping[str, str], kind: str) -> str:
    """An appearance-transfer diagnostic (``kind``: colour | pattern): error, both references and the gap
    closed, overall and per region."""
    regions = numbers.get(f"{kind}_regions")
    if not regions:
        return f'<p class="note skipped">skipped: {html.escape(skipped.get(kind, "not computed"))}</p>'
    columns, note = TRANSFER_TABLES[kind]
    head = "<tr><th>region</th>" + "".join(f"<th>{html.escape(label)}</th>" for _, label in columns) + "</tr>"
    lines = [head, '<tr data-region="overall"><td class="name">overall</td>'
             + "".join(_cell(f"{kind}_{c}", "model", numbers.get(f"{kind}_{c}"), skipped) for c, _ in columns)
             + "</tr>"]
    for region, values in regions.items():
        lines.append(f'<tr data-region="{html.escape(region)}"><td class="name">{html.escape(region)}</td>'
                     + "".join(f"<td>{_fmt(values.get(c))}</td>" for c, _ in columns) + "</tr>")
    return (f'<p class="note">{html.escape(note)} A diagnostic, not one of the paper\'s metrics.</p>'
            f'<table id="{kind}-table">{"".join(lines)}</table>')


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
    try:  # a cell that is not a number (or missing) is a gap in its curve
        table = pd.read_csv(loss_csv, index_col=False).apply(pd.to_numeric, errors="coerce")
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    if table.empty:
        return f'<p class="note">{html.escape(str(loss_csv))} has no rows.</p>'
    x_name = "step" if "step" in table else table.columns[0]
    charts = [svg_curve(table[x_name], table[name], name) for name in table if name not in (x_name, "epoch")]
    return '<div class="curves">' + "".join(c for c in charts if c) + "</div>"


def ranked_pairs(rows: Sequence[Mapping[str, Any]], count: int) -> tuple[str, list[int], list[int]]:
    """(metric used, best row indices, worst row indices) by LPIPS, or by SSIM where LPIPS was skipped."""
    metric = "lpips" if rows and rows[0].get("lpips") is not None else "ssim"
    scored = [i for i, r in enumerate(rows) if r.get(metric) is not None and math.isfinite(r[metric])]
    order = sorted(scored, key=lambda i: rows[i][metric], reverse=metric == "ssim")  # best first
    count = min(count, len(order) // 2) if len(order) > 1 else len(order)
    return metric, order[:count], order[::-1][:count]


def pairs_section(inputs: ReportInputs, indices: Sequence[int], which: str, metric: str) -> str:
    if not indices:
        return '<p class="note">no scored pairs</p>'
    shown = ("lpips", "ssim", "psnr", "colour_error")
    lines = ["<table><tr><th>source | generated | ground truth</th><th>pair</th>"
             + "".join(f"<th>{m}</th>" for m in shown) + "</tr>"]
    for i in indices:
        row = inputs.rows[i]
        lines.append(f'<tr data-file="{html.escape(row["file"])}"><td>{_img(inputs.pair_picture(i), row["file"], 2)}'
                     f'</td><td class="name">{html.escape(row["from"])}<br>&rarr; {html.escape(row["to"])}</td>'
                     + "".join(f'<td>{_fmt(row.get(m))}</td>' for m in shown) + "</tr>")
    return f'<p class="note">{which} by {metric.upper()}.</p>' + "".join(lines) + "</table>"


def parsing_panel(inputs: ReportInputs) -> str:
    """Source parsing | predicted target parsing | ground-truth target parsing for the first pairs."""
    if inputs.parsing_picture is None:
        reason = inputs.skipped.get("parsing", "no parsing maps")
        return f'<p class="note skipped">no predicted parsing to show: {html.escape(reason)}</p>'
    count = min(inputs.show_strips, len(inputs.rows))
    grid = _stack([inputs.parsing_picture(i) for i in range(count)])
    return ('<p class="note">source | source parsing | predicted target parsing (attention of the style-distribution '
            'blocks) | ground-truth target parsing</p>'
            f'<div id="parsing-panel" data-pairs="{count}">{_img(grid, "predicted parsing", 2)}</div>')


def _stack(pictures: Sequence[np.ndarray]) -> np.ndarray:
    width = max(p.shape[1] for p in pictures)
    return np.concatenate([np.pad(p, ((0, 2), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                           for p in pictures], axis=0)


def sample_grid(strips: Sequence[Path], count: int) -> str:
    """The test stage's strips stacked into one picture."""
    files = [f for f in strips if Path(f).is_file()][:count]
    if not files:
        return '<p class="note">no strips (test.strips: 0, or not the test stage\'s pictures)</p>'
    grid = _img(_stack([read_image(f) for f in files]), "sample grid", 2)
    return (f'<p class="note">source | target pose | generated | ground truth</p>'
            f'<div id="sample-grid" data-strips="{len(files)}">{grid}</div>')


def build_report(path: str | Path, inputs: ReportInputs) -> Path:
    """Write the report to ``path``."""
    metric, best, worst = ranked_pairs(inputs.rows, inputs.show_pairs)
    numbers = inputs.numbers
    facts = [f"{numbers.get('pairs')} test pairs", *inputs.facts]
    losses = loss_curves(inputs.loss_csv) if inputs.loss_csv is not None else \
        '<p class="note">No training curves (pictures of another method or a released checkpoint).</p>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CASD evaluation report</title>
<style>{_STYLE}</style></head><body>
<h1>CASD evaluation report</h1>
<p class="note" id="facts">{html.escape(" · ".join(facts))}</p>
<section id="metrics"><h2>Metrics</h2>{metrics_table(numbers, inputs.protocol, inputs.skipped)}
<p class="note">Baseline: the source image (and the source's parsing) returned unchanged. Paper: published CASD
figures on DeepFashion 256x176 (8,570 pairs); numbers of the synthetic demo are not comparable with them.</p></section>
<section id="colour"><h2>Appearance transfer (region colours)</h2>{transfer_table(numbers, inputs.skipped, "colour")}</section>
<section id="pattern"><h2>Pattern transfer (garment texture)</h2>{transfer_table(numbers, inputs.skipped, "pattern")}</section>
<section id="parsing"><h2>Predicted target parsing</h2>{parsing_panel(inputs)}</section>
<section id="losses"><h2>Training curves</h2>{losses}</section>
<section id="best"><h2>Best pairs</h2>{pairs_section(inputs, best, "Lowest error", metric)}</section>
<section id="worst"><h2>Worst pairs</h2>{pairs_section(inputs, worst, "Highest error", metric)}</section>
<section id="samples"><h2>Sample grid</h2>{sample_grid(inputs.strips, inputs.show_strips)}</section>
</body></html>
"""
    write_text(path, page)
    return Path(path)
