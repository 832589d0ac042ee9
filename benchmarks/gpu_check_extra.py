"""The measurements of gpu_check.sh besides bench_vs_upstream: host syncs, precision, test throughput, FLOPs.

    python benchmarks/gpu_check_extra.py --params params-deepfashion.yaml --device cuda --batch-size 16 --out DIR

Writes DIR/sync_check.json (host syncs inside one train step under ``torch.cuda.set_sync_debug_mode``; CUDA
only), DIR/precision_flops.json: the loss terms of fp32 and bf16 train steps on the same batches from the same
weights, the generator's fp32 vs bf16 output (max abs pixel difference in 0-255, SSIM of each against the
target and their difference), test-stage images/s of the generator over ``--pairs`` pairs at random weights,
and FLOPs of one train step (``torch.utils.flop_counter``) for MFU.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params-deepfashion.yaml"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=8570, help="test-stage pairs (the paper's protocol: 8,570)")
    parser.add_argument("--loss-steps", type=int, default=4, help="fp32 vs bf16 steps compared")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from bench_vs_upstream import sync, synthetic_prepared
    from casd.config import load_params
    from casd.evaluation.metrics import ssim
    from casd.train.job import Outputs, TrainJob
    from casd.train.loop import Trainer

    device = torch.device(args.device)
    params = load_params(args.params)
    params.setdefault("model", {})["vgg_weights"] = "none"
    params.setdefault("loss", {}).update(vgg_weights="none", cx_vgg_weights="none", lpips_weights="none")
    params.setdefault("train", {}).update(batch_size=args.batch_size, device=args.device, resume="never", workers=0,
                                          preload=True, deterministic=False, amp="none")
    params.setdefault("tracking", {})["enabled"] = False
    job = TrainJob.from_params(params, args.params)
    out: dict = {"device": str(device), "batch_size": args.batch_size, "image_size": list(job.image_size)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = synthetic_prepared(tmp / "data", tuple(job.image_size))
        trainer = Trainer(job, root, Outputs.under(tmp / "out"))
        trainer.nets.train()
        batches, epoch = [], 0
        while len(batches) < args.loss_steps + 1:
            trainer.sampler.set_epoch(epoch)
            batches += [trainer.to_device(c) for c in trainer.loader]
            epoch += 1

        # host syncs inside the step (CUDA only: the debug mode exists there alone)
        sync_report = {"device": str(device)}
        if device.type == "cuda":
            trainer.train_step(batches[0])  # warm-up (cuDNN autotuning may sync)
            sync(device)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    trainer.step(batches[0])  # the step without its final read-back of the loss values
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            messages = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
            sync_report.update(syncs_inside_step=len(messages), messages=messages[:20])
        else:
            sync_report["syncs_inside_step"] = None
            sync_report["note"] = "torch.cuda.set_sync_debug_mode needs CUDA"
        (args.out / "sync_check.json").write_text(json.dumps(sync_report, indent=1))

        # fp32 vs bf16 loss terms: the same weights, the same batches, each run from the same start
        start_state = copy.deepcopy({"nets": trainer.nets.state_dict(),
                                     "opt": {k: o.state_dict() for k, o in trainer.optimizers.items()}})
        terms = {}
        for amp, dtype in (("none", None), ("bf16", torch.bfloat16)):
            trainer.nets.load_state_dict(start_state["nets"])
            for k, o in trainer.optimizers.items():
                o.load_state_dict(start_state["opt"][k])
            trainer.amp_dtype = dtype
            terms[amp] = [trainer.train_step(b)[0] for b in batches[:args.loss_steps]]
        trainer.amp_dtype = None
        relative = {k: max(abs(b[k] - a[k]) / max(abs(a[k]), 1e-8) for a, b in zip(terms["none"], terms["bf16"]))
                    for k in terms["none"][0]}
        out["loss_terms_fp32"] = terms["none"]
        out["loss_terms_bf16"] = terms["bf16"]
        out["loss_max_relative_difference"] = relative

        # generator output fp32 vs bf16 (eval mode, same weights, one batch)
        g = trainer.nets.generator.eval()
        batch = batches[-1]
        with torch.no_grad():
            fp32 = g(batch.target_pose, batch.source, batch.source_parsing)[0].float()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = g(batch.target_pose, batch.source, batch.source_parsing)[0].float()
        pixels = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
        out["pixel_max_abs_diff_0_255"] = float((pixels(fp32) - pixels(bf16)).abs().max())
        target = pixels(batch.target).cpu().permute(0, 2, 3, 1).numpy().astype("uint8")
        s32 = ssim(pixels(fp32).cpu().permute(0, 2, 3, 1).numpy().astype("uint8"), target)
        s16 = ssim(pixels(bf16).cpu().permute(0, 2, 3, 1).numpy().astype("uint8"), target)
        s32, s16 = float(torch.as_tensor(s32).mean()), float(torch.as_tensor(s16).mean())
        out.update(ssim_fp32=s32, ssim_bf16=s16, ssim_diff=abs(s32 - s16))

        # test-stage throughput: generator forward over the protocol's pairs, batches of 16 (random weights)
        for amp, dtype in (("none", None), ("bf16", torch.bfloat16)):
            n, step = 0, batch.source.shape[0]
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode():
                while n < args.pairs:
                    if dtype is None:
                        g(batch.target_pose, batch.source, batch.source_parsing)
                    else:
                        with torch.autocast(device.type, dtype=dtype):
                            g(batch.target_pose, batch.source, batch.source_parsing)
                    n += step
            sync(device)
            out[f"test_images_per_s_{amp}"] = round(n / (time.perf_counter() - start), 2)
        out["test_pairs"] = args.pairs
        g.train()

        # FLOPs of one train step (forward + backward of everything the step runs)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            trainer.train_step(batches[0])
        out["train_step_flops"] = counter.get_total_flops()
        out["train_step_tflops"] = round(counter.get_total_flops() / 1e12, 3)
        out["mfu_note"] = "MFU = train_step_flops x steps/s / the card's peak (H200 dense bf16 ~989 TFLOP/s)"
    (args.out / "precision_flops.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
