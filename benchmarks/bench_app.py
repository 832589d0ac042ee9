"""App benchmark: latency of one interaction of ``casd app`` (a new pose, a new donor), server side.

    python benchmarks/bench_app.py [--demo-size 64x44] [--threads 2] [--device cpu] [--repeat 5]
                                   [--out reports/bench-app.json]

For each configuration (the demo: 64x44 with params.yaml's demo widths; upstream:
256x176 with upstream widths, ``GeneratorConfig()``), a random-init generator
on random prepared people, measured through :class:`casd.app.Studio`:

- ``first``: a person never seen before (style encoder + decoder);
- ``pose``: a new pose of cached people (decoder only: what a drag costs);
- ``donor``: a try-on with a donor already cached (decoder only);
- ``respond``: ``pose`` plus everything the page handler does besides (panels,
  strip, PNG and JSON files, command line): the server's share of an interaction.

Gradio's own transport (queue, websocket, file serving) comes on top; the
browser test exercises it. Best of ``--repeat`` runs after a warm-up.

Measured (2-core CPU container, shared and heavily loaded: load average 15-25, --repeat 3):

    threads  config    size     first     pose     donor    respond
    2        demo      64x44    2180 ms   2120 ms  1552 ms  4854 ms
    2        upstream  256x176  31.0 s    23.4 s   24.4 s   39.2 s
    1        demo      64x44     202 ms    59 ms    64 ms   140 ms
    1        upstream  256x176  18.0 s    11.7 s   12.6 s    5.9 s

(The load changed between rows; upstream "respond" below "pose" is that noise.)

With two threads on a machine this oversubscribed torch's threads mostly wait for
each other: the same decode at demo size took 20-40 ms with one thread and
40-570 ms with two (interleaved runs); the browser test's page reported 11-140 ms
of model time per interaction at 64x44 with the tiny widths.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from casd import app  # noqa: E402
from casd.data.images import REGION_NAMES  # noqa: E402
from casd.fileio import write_json  # noqa: E402
from casd.inference import Synthesizer  # noqa: E402
from casd.models.generator import Generator, GeneratorConfig  # noqa: E402

DEMO_WIDTHS = dict(pose_width=16, style_width=16, width=32, mlp_width=32, vgg_weights="none")  # params.yaml
NAMES = [f"fashionWOMENDressesid00000{i:03d}01_1front.jpg" for i in range(8)]


def prepared(root: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """data/{resized,parsing}/test and data/pose/test.npz for NAMES at ``size``, random content."""
    rng = np.random.default_rng(seed)
    h, w = size
    for sub in ("resized/test", "parsing/test", "pose"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    keypoints = []
    for name in NAMES:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "resized/test" / name)
        Image.fromarray(rng.integers(0, len(REGION_NAMES), (h, w), dtype=np.uint8)).save(
            root / "parsing/test" / name.replace(".jpg", ".png"))
        keypoints.append(np.stack([rng.integers(0, h, 18), rng.integers(0, w, 18)], axis=1))
    np.savez(root / "pose/test.npz", names=np.array(NAMES), keypoints=np.stack(keypoints).astype(np.int16))
    return root


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(label: str, config: GeneratorConfig, size: tuple[int, int], device: str, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = prepared(Path(tmp) / "data", size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random VGG weights
            generator = Generator(config).eval().to(device)
        studio = app.Studio(Synthesizer(generator, size, data_root=root, device=device))
        pose = studio.keypoints(NAMES[1])
        rng = np.random.default_rng(1)
        people = iter(NAMES[2:] * 100)

        def first():
            studio.forget()  # the encoder runs again
            studio.render(app.Choice(next(people), pose))

        def new_pose():
            kp = pose.copy()
            kp[4] = [rng.integers(0, size[0]), rng.integers(0, size[1])]
            studio.render(app.Choice(NAMES[0], kp))

        def donor():
            studio.render(app.Choice(NAMES[0], pose, {"upper_clothes": NAMES[1]}))

        def respond():
            kp = pose.copy()
            kp[4] = [rng.integers(0, size[0]), rng.integers(0, size[1])]
            studio.respond(app.Choice(NAMES[0], kp, {"upper_clothes": NAMES[1]}), NAMES[1], Path(tmp) / "out")

        def synced(fn):
            def run():
                fn()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
            return run

        row = {"config": label, "size": f"{size[0]}x{size[1]}", "width": config.width, "device": device,
               "threads": torch.get_num_threads()}
        for name, fn in (("first", first), ("pose", new_pose), ("donor", donor), ("respond", respond)):
            row[f"{name}_ms"] = round(1000 * best(synced(fn), repeat), 1)
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--demo-size", default="64x44", help="H x W of the demo (params.yaml data.image_size)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    demo_size = tuple(int(v) for v in args.demo_size.split("x"))
    rows = [measure("demo", GeneratorConfig(**DEMO_WIDTHS), demo_size, args.device, args.repeat),
            measure("upstream", GeneratorConfig(vgg_weights="none"), (256, 176), args.device, args.repeat)]
    print(f"{'config':9} {'size':8} {'width':>5} {'device':6} {'first':>9} {'pose':>9} {'donor':>9} {'respond':>9}")
    for r in rows:
        print(f"{r['config']:9} {r['size']:8} {r['width']:>5} {r['device']:6} {r['first_ms']:>7.1f}ms "
              f"{r['pose_ms']:>7.1f}ms {r['donor_ms']:>7.1f}ms {r['respond_ms']:>7.1f}ms")
    if args.out:
        write_json(args.out, {"rows": rows, "torch": torch.__version__})


if __name__ == "__main__":
    main()
