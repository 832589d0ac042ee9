"""Annotation benchmark: seconds per photo for framing, LIP parsing (SCHP) and the whole chain (released models).

    python benchmarks/bench_annotate.py [--photos 5] [--threads 2] [--device cpu|cuda] \
        [--out reports/bench-annotate.json]

- framing: a 750x1101 photo (DeepFashion's high-res size) cropped and resampled to 256x176;
- parser: the full-size SCHP network (ResNet-101) at the authors' 473x473 on a 256x176 framed photo, pre- and
  post-processing included, and the forward pass alone. Without the released checkpoint the weights are
  random: the same architecture and arithmetic, so the same time;
- whole chain (detector + pose + framing + parser + conversion) only when all three released files are
  present (``casd weights``); otherwise reported as skipped: stand-in pose models would time nothing real.

Figures recorded (2-core CPU container, shared with other jobs, load average 14 during the run, so upper
bounds; torch 2.14, 2 threads, 3 repetitions): framing 22 ms; parser 23.7 s per photo (forward alone 24.5 s:
the network is nearly all of it); whole chain skipped (released files absent here). No GPU was available.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from casd.annotate import Annotator, locate_weights  # noqa: E402
from casd.annotate.framing import crop, frame_person  # noqa: E402
from casd.annotate.parsing import INPUT_SIZE, SCHPParser, parse, preprocess  # noqa: E402
from casd.errors import WeightsError  # noqa: E402
from casd.fileio import write_json  # noqa: E402


def photo(rng: np.random.Generator) -> Image.Image:
    """750x1101 white photo with a smooth dark figure (content does not change the timings)."""
    array = np.full((1101, 750, 3), 245, np.uint8)
    array[150:1000, 250:500] = rng.integers(20, 120, (850, 250, 3), dtype=np.uint8)
    return Image.fromarray(array)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=5, help="timed repetitions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("reports/bench-annotate.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    picture = photo(rng)
    frame = frame_person(np.array([250, 150, 500, 1000]))
    framed = crop(picture, frame)
    results: dict[str, object] = {"threads": args.threads, "device": args.device, "torch": torch.__version__}
    results["framing_ms"] = 1e3 * timed(lambda: crop(picture, frame), args.photos * 10)

    try:
        paths = locate_weights()
    except WeightsError as e:
        paths, results["whole_chain"] = None, f"skipped: {e}"
    with torch.device("meta"):
        model = SCHPParser()
    model = model.to_empty(device=args.device).eval()
    for p in model.parameters():  # random weights of sane scale (to_empty leaves memory as found)
        torch.nn.init.normal_(p, std=0.01)
    for name, b in model.named_buffers():
        b.fill_(1.0 if name.endswith("running_var") else 0.0)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def parse_one():
        parse(model, framed)
        sync()

    x = preprocess(framed, INPUT_SIZE).to(args.device)

    def forward_one():
        with torch.no_grad():
            model(x)
        sync()

    results["parser_s"] = timed(parse_one, args.photos)
    results["parser_forward_s"] = timed(forward_one, args.photos)
    results["parser_weights"] = "random (same architecture)"
    if paths is not None:
        annotator = Annotator.from_weights(args.device)
        results["parser_weights"] = "released"
        results["whole_chain_s"] = timed(lambda: annotator(picture), args.photos)
    write_json(args.out, results)
    for key, value in results.items():
        print(f"{key:18s} {value:.4g}" if isinstance(value, float) else f"{key:18s} {value}")


if __name__ == "__main__":
    main()
