"""Generator speed: forward + backward, samples/s and peak memory (CPU or GPU).

    python benchmarks/bench_model.py                         # CPU, batch 4, 256x176, full (upstream) widths
    python benchmarks/bench_model.py --upstream /tmp/upstream_casd   # ... and upstream's ADGen in the same run
    python benchmarks/bench_model.py --device cuda --bf16 --channels-last [--compile]   # GPU path
    python benchmarks/bench_model.py --tiny --size 64 44     # the demo-sized model

Each model is measured in its own fresh process (spawned) so that peak memory
(CPU: the process's max RSS; GPU: ``torch.cuda.max_memory_allocated``) belongs to
that model alone. On a shared machine, load from other processes swings step
times by 2x between runs: ``--interleave`` (with ``--upstream``) also times both
models in ONE process, alternating steps, so that both see the same load
(best and median step over the rounds). The step is: forward, a scalar of the image and attention maps,
backward (the frozen VGG gets no gradient). ``--upstream DIR`` imports upstream's
``models/CASD.py`` from DIR (outside this repository, patched as tests/upstream_rules.py
says) and runs it with the same weights and inputs.

Measured (2-core CPU shared with other jobs, fp32, batch 4, 256x176, upstream
widths, forward + backward; ``--interleave-only --steps 3``): ours best 22.0 s
(median 29.7), upstream best 25.2 s (median 31.5): 1.15x. Peak RSS (separate
processes): ours 4.1 GB, upstream 4.4 GB. The unloaded figure the team measured
for upstream is 16.7 s; figures under load vary up to 2x from run to run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
import warnings
from pathlib import Path


def _build(kind: str, args):
    import torch

    from casd.models.generator import Generator, GeneratorConfig

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    if kind == "ours":
        config = GeneratorConfig.tiny() if args["tiny"] else GeneratorConfig(vgg_weights="none")
        return Generator(config)
    sys.path.insert(0, args["upstream"])
    from models.CASD import ADGen  # upstream, imported from the folder given (never part of this repo)

    return ADGen(3, 64, 2048, 2, 8, 256)


def _measure(kind: str, args: dict, queue) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from upstream_rules import rule_inputs

    torch.set_num_threads(args["threads"]) if args["threads"] else None
    device = torch.device(args["device"])
    net = _build(kind, args).to(device).train()
    fmt = torch.channels_last if args["channels_last"] else torch.contiguous_format
    net = net.to(memory_format=fmt)
    step_net = torch.compile(net) if args["compile"] else net
    h, w = args["size"]
    pose, image, parsing = (t.to(device).contiguous(memory_format=fmt)
                            for t in rule_inputs(args["batch"], h, w, seed=0, empty_regions=((3,),)))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args["bf16"])

    def step():
        with autocast:
            out, attns = step_net(pose, image, parsing)
            loss = out.float().mean() + sum(a.float().mean() for a in attns)
        loss.backward()
        net.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args["warmup"]):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args["steps"]):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    best, mean = min(times), sum(times) / len(times)
    queue.put({"model": kind, "device": str(device), "batch": args["batch"], "size": list(args["size"]),
               "step_s_best": round(best, 3), "step_s_mean": round(mean, 3),
               "samples_per_s": round(args["batch"] / best, 3), "peak_memory_mb": round(peak, 1),
               "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
               "threads": torch.get_num_threads(), "bf16": args["bf16"], "channels_last": args["channels_last"],
               "compile": args["compile"]})


def _interleaved(args: dict, queue) -> None:
    """Alternate one step of ours and one of upstream's, ``steps`` rounds; best and median per model."""
    import statistics

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from upstream_rules import rule_inputs

    torch.set_num_threads(args["threads"]) if args["threads"] else None
    nets = {kind: _build(kind, args).train() for kind in ("ours", "upstream")}
    inputs = rule_inputs(args["batch"], *args["size"], seed=0, empty_regions=((3,),))
    times: dict[str, list[float]] = {kind: [] for kind in nets}
    for round_ in range(args["warmup"] + args["steps"]):
        for kind, net in nets.items():
            start = time.perf_counter()
            out, attns = net(*inputs)
            (out.mean() + sum(a.mean() for a in attns)).backward()
            net.zero_grad(set_to_none=True)
            if round_ >= args["warmup"]:
                times[kind].append(time.perf_counter() - start)
    queue.put({kind: {"step_s_best": round(min(t), 3), "step_s_median": round(statistics.median(t), 3),
                      "samples_per_s": round(args["batch"] / min(t), 3), "rounds": len(t)}
               for kind, t in times.items()})


def run(kind: str, args: dict, target=_measure) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(kind, args, queue) if target is _measure else (args, queue))
    proc.start()
    while True:  # a crashed child puts nothing: stop waiting when it is gone
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty
            if not proc.is_alive():
                raise SystemExit(f"benchmark of {kind} failed (exit code {proc.exitcode}); see the error above")
    proc.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 176), metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tiny", action="store_true", help="GeneratorConfig.tiny() instead of upstream widths")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the generator")
    parser.add_argument("--upstream", help="folder holding upstream's patched models/CASD.py: measure it too")
    parser.add_argument("--interleave", action="store_true",
                        help="with --upstream: also time both in one process, alternating steps (fair under load)")
    parser.add_argument("--interleave-only", action="store_true", help="skip the separate per-model runs")
    parser.add_argument("--json", help="also write the results to this JSON file")
    ns = parser.parse_args(argv)
    args = dict(vars(ns))
    args["size"] = tuple(ns.size)
    results = [] if ns.interleave_only else [run("ours", args)]
    if ns.upstream and not ns.interleave_only:
        results.append(run("upstream", args))
    for r in results:
        print(f"{r['model']:>8} {r['device']} batch {r['batch']} {r['size'][0]}x{r['size'][1]}: "
              f"forward+backward {r['step_s_best']:.2f} s (mean {r['step_s_mean']:.2f}), "
              f"{r['samples_per_s']:.2f} samples/s, peak {r['peak_memory_mb']:.0f} MB, {r['threads']} threads")
    if ns.upstream and (ns.interleave or ns.interleave_only):
        paired = run("both", args, target=_interleaved)
        for kind, r in paired.items():
            print(f"{kind:>8} interleaved: best {r['step_s_best']:.2f} s, median {r['step_s_median']:.2f} s "
                  f"over {r['rounds']} rounds, {r['samples_per_s']:.2f} samples/s")
        ratio = paired["upstream"]["step_s_best"] / paired["ours"]["step_s_best"]
        print(f"ours is {ratio:.2f}x upstream's speed (best interleaved steps)")
        results.append({"interleaved": paired})
    if ns.json:
        from casd.fileio import write_json

        write_json(ns.json, results)


if __name__ == "__main__":
    main()
