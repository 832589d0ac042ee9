"""Training: end-to-end run, exact resume after SIGKILL, non-finite guard, 2-process DDP on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from casd.checkpoints import load_checkpoint, save_checkpoint
from casd.errors import CasdError, ConfigError, user_error_message
from casd.losses import Objective
from casd.models.generator import Generator, GeneratorConfig
from casd.train.job import Outputs, TrainJob, lr_factor
from casd.train.loop import NonFiniteLossError, Trainer, train
from casd.train.loop import ChunkedGenerator, Networks
from helpers import SIZE, free_port, tiny_params, write_prepared

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_torch_globals():
    """Training in-process sets deterministic mode and 1 thread (tiny_params): undo it for other tests."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared") / "data"
    write_prepared(root, size=tuple(SIZE))
    return root


def generator_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["generator"]


def _leaves(tree):
    for value in tree.values():
        yield from _leaves(value) if isinstance(value, dict) else [value]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_lr_schedule_is_upstreams_rule():
    """Upstream: 1 - max(0, epoch + 1 + epoch_count - niter) / (niter_decay + 1), epoch_count 1, 0-based epoch."""
    niter = niter_decay = 500
    factors = [lr_factor(e, niter, niter_decay) for e in range(1000)]
    assert factors == [1.0 - max(0, e + 1 + 1 - niter) / float(niter_decay + 1) for e in range(1000)]
    assert factors[:499] == [1.0] * 499                 # 499 epochs at the base lr
    assert 0 < factors[499] < 1 and factors[499] == pytest.approx(500 / 501)
    assert all(a > b for a, b in zip(factors[499:], factors[500:]))  # then 501 decaying epochs
    assert factors[-1] == 0.0                           # the last at lr 0
    assert [lr_factor(e, 3, 4) for e in range(7)] == pytest.approx([1, 1, 0.8, 0.6, 0.4, 0.2, 0])


def test_params_files_parse():
    """params.yaml (demo) and params-deepfashion.yaml (the paper's settings) build a valid job."""
    from casd.config import load_params

    paper = TrainJob.from_params(load_params(REPO / "params-deepfashion.yaml"))
    assert paper.image_size == (256, 176)
    assert (paper.train.epochs_constant, paper.train.epochs_decay, paper.train.pairs_per_epoch,
            paper.train.batch_size, paper.train.lr, paper.train.beta1) == (500, 500, 4000, 16, 1e-3, 0.5)
    assert (paper.model.width, paper.model.adain_blocks, paper.model.modulated_blocks) == (256, 4, 4)
    assert (paper.loss.l1, paper.loss.perceptual, paper.loss.gan, paper.loss.cx, paper.loss.amce, paper.loss.lpips,
            paper.loss.content, paper.loss.style) == (1, 1, 5, 0.1, 0.1, 1, 0.5, 200)
    demo = TrainJob.from_params(load_params(REPO / "params.yaml"))
    assert demo.train.epochs >= 1 and demo.image_size[0] % 4 == 0


def test_config_errors():
    with pytest.raises(ConfigError, match="amp must be one of"):
        TrainJob.from_params({**tiny_params(), "train": {"amp": "fp8"}})
    with pytest.raises(ConfigError, match="unknown key"):
        TrainJob.from_params({**tiny_params(), "train": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="divisible by 4"):
        TrainJob.from_params({**tiny_params(), "data": {"image_size": [30, 24]}})


def test_tiny_training_end_to_end(data_root, tmp_path):
    out = Outputs.under(tmp_path)
    summary = train(TrainJob.from_params(tiny_params()), data_root, out)
    assert summary["epochs"] == 3 and summary["steps"] == 6 and summary["samples"] == 24
    assert all(map(torch.isfinite, map(torch.tensor, summary["loss"].values())))
    assert {"l1", "gan", "d_pb", "d_pp", "g_total"} <= set(summary["loss"])
    rows = out.loss_csv.read_text().splitlines()
    assert rows[0].startswith("epoch,step,lr,") and len(rows) == 4
    assert [float(r.split(",")[2]) for r in rows[1:]] == pytest.approx([1e-3, 0.5e-3, 0.0])
    metrics = json.loads(out.metrics.read_text())  # numbers only (DVC's metrics table), strings go to tags
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in _leaves(metrics))
    assert sorted(p.name for p in out.checkpoint_dir.glob("*.pt")) == ["epoch_0002.pt", "epoch_0003.pt",
                                                                     "latest.pt"]
    export = load_checkpoint(out.model)
    assert export["image_size"] == SIZE and export["steps"] == 6 and export["model_config"]["width"] == 16
    latest = load_checkpoint(out.checkpoint_dir / "latest.pt")
    assert_same_weights(export["generator"], latest["generator"])
    assert latest["epoch"] == 3 and latest["step_in_epoch"] == 0 and len(latest["history"]) == 3
    initial = Networks(TrainJob.from_params(tiny_params()).model, 8).generator.state_dict()
    assert not torch.equal(initial["decoder.to_image.weight"], export["generator"]["decoder.to_image.weight"])
    from PIL import Image

    # preview of the test pairs (one test identity, 3 poses: 6 pairs): source | pose | generated | truth
    assert Image.open(out.samples).size == (4 * SIZE[1], 6 * SIZE[0])
    # finished run + resume auto: nothing left to do, weights unchanged
    again = train(TrainJob.from_params(tiny_params()), data_root, out)
    assert again["steps"] == 6
    assert_same_weights(generator_state(out.model), export["generator"])


def test_zero_weight_terms_are_not_built():
    job = TrainJob.from_params(tiny_params())
    objective = Objective(job.loss)
    assert set(objective.terms) == set(objective.active)
    assert "cx" not in objective.terms and "lpips" not in objective.terms and "style" in objective.terms
    cheap = dict(tiny_params()["loss"], perceptual=0, content=0, style=0, cx=0, lpips=0)
    objective = Objective(TrainJob.from_params({**tiny_params(), "loss": cheap}).loss)
    assert objective.active == ("l1", "gan", "amce")
    assert not any("vgg" in name for name, _ in objective.named_modules())  # no VGG built at all


def test_bf16_autocast_and_flip_train(data_root, tmp_path):
    params = tiny_params(epochs_constant=1, epochs_decay=0, amp="bf16", flip=True, grad_clip=1.0,
                         checkpoint_every_steps=0, pairs_per_epoch=4)
    params["loss"].update(perceptual=0, content=0, style=0)  # bf16 convolutions are slow on most CPUs
    summary = train(TrainJob.from_params(params), data_root, Outputs.under(tmp_path))
    assert summary["steps"] == 1
    assert all(map(torch.isfinite, map(torch.tensor, summary["loss"].values())))


def _write_workdir(path: Path, data_root: Path, params: dict) -> Path:
    path.mkdir(parents=True)
    (path / "data").symlink_to(data_root)
    (path / "params.yaml").write_text(yaml.safe_dump(params))
    return path


def _launch(workdir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "casd.cli", "train", "--params", "params.yaml"], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_and_resume_gives_identical_weights(data_root, tmp_path):
    """A run SIGKILLed mid-epoch and restarted (resume: auto) ends with the weights of an uninterrupted run."""
    params = tiny_params(epochs_constant=2, epochs_decay=2, checkpoint_every_steps=1)
    reference = Outputs.under(tmp_path / "reference")
    train(TrainJob.from_params(params), data_root, reference)  # in-process: same settings, 1 thread, deterministic

    killed = _write_workdir(tmp_path / "killed", data_root, params)
    latest = killed / "checkpoints" / "latest.pt"
    proc = _launch(killed)
    deadline = time.monotonic() + 180
    while True:  # kill as soon as a mid-epoch checkpoint (step 3 of 8: epoch 2, batch 1) is on disk
        assert proc.poll() is None, f"training ended before the kill:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        if latest.exists():
            try:
                step = load_checkpoint(latest)["global_step"]
            except Exception:  # replaced while being read
                step = -1
            if step >= 3:
                break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "models" / "generator.pt").exists(), "the run finished before it was killed"
    at_kill = load_checkpoint(latest)
    assert 3 <= at_kill["global_step"] < 8 and at_kill["epoch"] < 4
    proc = _launch(killed)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    assert "resuming" in output
    ref, res = load_checkpoint(reference.checkpoint_dir / "latest.pt"), load_checkpoint(latest)
    assert ref["global_step"] == res["global_step"] == 8
    assert_same_weights(ref["generator"], res["generator"])
    for key in ("d_pb", "d_pp"):
        assert_same_weights(ref["discriminators"][key], res["discriminators"][key])
    assert_same_weights(generator_state(reference.model), generator_state(killed / "models" / "generator.pt"))
    assert ref["optimizers"]["generator"]["state"][0]["exp_avg"].equal(
        res["optimizers"]["generator"]["state"][0]["exp_avg"])
    drop = {"samples_per_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in ref["history"]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in res["history"]]


def test_checkpoint_of_other_settings_is_not_resumed(data_root, tmp_path, capsys):
    out = Outputs.under(tmp_path)
    train(TrainJob.from_params(tiny_params(epochs_constant=1, epochs_decay=0)), data_root, out)
    summary = train(TrainJob.from_params(tiny_params(epochs_constant=1, epochs_decay=0, lr=5e-4)), data_root, out)
    assert "starting from scratch" in capsys.readouterr().err
    assert summary["steps"] == 2


@pytest.mark.parametrize("content", [[torch.zeros(1)], {"generator": {}}], ids=["pickled-list", "dict-of-another-kind"])
def test_resume_from_a_file_that_is_not_a_training_checkpoint_ends_in_one_line(data_root, tmp_path, content):
    bogus = tmp_path / "bogus.pt"
    save_checkpoint(bogus, content)
    with pytest.raises(CasdError) as caught:
        train(TrainJob.from_params(tiny_params(resume=str(bogus))), data_root, Outputs.under(tmp_path))
    message = user_error_message(caught.value)
    assert message.startswith(f"{bogus}: not a training checkpoint") and "\n" not in message, message
    assert not (tmp_path / "checkpoints" / "latest.pt").exists()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data_root, tmp_path, monkeypatch):
    out = Outputs.under(tmp_path)
    original = Objective.generator_terms
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the third step: l1 becomes NaN
            terms["l1"] = terms["l1"] * float("nan")
        return terms

    monkeypatch.setattr(Objective, "generator_terms", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 3 \(epoch 2, batch 1\): l1 = nan.*last good checkpoint"):
        train(TrainJob.from_params(tiny_params()), data_root, out)
    latest = load_checkpoint(out.checkpoint_dir / "latest.pt")
    assert latest["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in latest["generator"].values() if t.is_floating_point())
    assert not out.model.exists()




def _ddp_worker(rank: int, world_size: int, port: int, params: dict, data_root: str, out_root: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)})
    log = open(Path(out_root) / f"rank{rank}.log", "w")
    sys.stdout = log
    sys.stderr = log
    trainer = Trainer(TrainJob.from_params(params), data_root, Outputs.under(out_root))
    trainer.run()
    torch.save({"generator": trainer.nets.generator.state_dict(), "d_pb": trainer.nets.d_pb.state_dict(),
                "steps": trainer.progress.global_step}, Path(out_root) / f"rank{rank}.pt")
    log.flush()


def test_two_process_ddp_on_cpu(data_root, tmp_path):
    import torch.multiprocessing as mp

    # 2 epochs (the second at lr 0) of 4 pairs = 2 per rank, batch 4 = 2 per rank: one step per epoch
    params = tiny_params(epochs_constant=2, epochs_decay=0, pairs_per_epoch=4, checkpoint_every_steps=0)
    mp.spawn(_ddp_worker, args=(2, free_port(), params, str(data_root), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2
    assert_same_weights(r0["generator"], r1["generator"])
    assert_same_weights(r0["d_pb"], r1["d_pb"])
    initial = Networks(TrainJob.from_params(params).model, 8).generator.state_dict()
    assert not torch.equal(initial["decoder.to_image.weight"], r0["generator"]["decoder.to_image.weight"])
    log0, log1 = ((tmp_path / f"rank{r}.log").read_text() for r in (0, 1))
    assert "epoch 1/2" in log0 and "train: done" in log0
    assert "epoch" not in log1 and "train: done" not in log1
    latest = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert latest["global_step"] == 2
    assert_same_weights(latest["generator"], r0["generator"])


def test_stale_checkpoint_temp_files_are_removed_at_start(data_root, tmp_path):
    """A save killed mid-write leaves .latest.pt.*.tmp.pt: the next run deletes it before training."""
    out = Outputs.under(tmp_path)
    out.checkpoint_dir.mkdir(parents=True)
    stale = out.checkpoint_dir / ".latest.pt.k1ll3d.tmp.pt"
    stale.write_bytes(b"partial")
    keep = out.checkpoint_dir / "notes.txt"
    keep.write_text("mine")
    Trainer(TrainJob.from_params(tiny_params(epochs_constant=1, epochs_decay=0)), data_root, out)
    assert not stale.exists() and keep.exists()


def test_dvc_never_caches_atomic_temp_files(tmp_path):
    """.dvcignore (gitignore rules, as DVC reads it) excludes atomic_path's temp names from the checkpoints output."""
    from pathspec import PathSpec

    from casd.fileio import atomic_path

    with atomic_path(tmp_path / "latest.pt") as tmp:
        temp_name = tmp.name  # the name a save killed at this point leaves behind
        tmp.write_bytes(b"x")
    patterns = [line.strip() for line in (REPO / ".dvcignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    spec = PathSpec.from_lines("gitignore", patterns)
    assert spec.match_file(f"checkpoints/{temp_name}")
    assert not any(spec.match_file(f"checkpoints/{n}") for n in ("latest.pt", "epoch_0002.pt"))


def test_norm_batch_chunks_equal_separate_halves():
    """chunks=2: each half's norm statistics are its own (as two DataParallel replicas), outputs concatenated."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig.tiny(), pretrained_vgg=False)
    gen = torch.Generator().manual_seed(1)
    pose = torch.rand(4, g.config.pose_channels, 32, 24, generator=gen)
    image = torch.rand(4, 3, 32, 24, generator=gen) * 2 - 1
    parsing = torch.nn.functional.one_hot(torch.randint(0, 8, (4, 32, 24), generator=gen), 8).permute(0, 3, 1, 2)
    parsing = parsing.float()
    chunked, chunked_attention = ChunkedGenerator(g, 2)(pose, image, parsing)
    halves = [g(pose[s], image[s], parsing[s]) for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(chunked, torch.cat([h[0] for h in halves]), rtol=0, atol=0)
    for i, maps in enumerate(chunked_attention):
        torch.testing.assert_close(maps, torch.cat([h[1][i] for h in halves]), rtol=0, atol=0)
    whole, _ = g(pose, image, parsing)  # batch statistics over all 4 differ: the chunking is what changed it
    assert not torch.allclose(whole, chunked)


def test_norm_batch_chunks_train_and_must_divide_the_batch(data_root, tmp_path):
    params = tiny_params(epochs_constant=1, epochs_decay=0, pairs_per_epoch=4, norm_batch_chunks=2)
    params["loss"].update(perceptual=0, content=0, style=0)
    summary = train(TrainJob.from_params(params), data_root, Outputs.under(tmp_path / "ok"))
    assert summary["steps"] == 1
    with pytest.raises(ConfigError, match="norm_batch_chunks"):
        Trainer(TrainJob.from_params(tiny_params(norm_batch_chunks=3)), data_root, Outputs.under(tmp_path / "bad"))


def test_channels_last_and_foreach_adam_train(data_root, tmp_path):
    params = tiny_params(epochs_constant=1, epochs_decay=0, pairs_per_epoch=4, channels_last=True, adam="foreach",
                         checkpoint_every_steps=0)
    params["loss"].update(perceptual=0, content=0, style=0)
    summary = train(TrainJob.from_params(params), data_root, Outputs.under(tmp_path))
    assert summary["steps"] == 1
    assert all(map(torch.isfinite, map(torch.tensor, summary["loss"].values())))


def test_compile_trains_or_falls_back_to_eager(data_root, tmp_path):
    """train.compile: a few steps with finite losses (compiled where the compiler works, eager otherwise)."""
    params = tiny_params(epochs_constant=1, epochs_decay=0, pairs_per_epoch=8, compile=True, deterministic=False,
                         checkpoint_every_steps=0)
    params["loss"].update(perceptual=0, content=0, style=0)
    summary = train(TrainJob.from_params(params), data_root, Outputs.under(tmp_path))
    assert summary["steps"] == 2
    assert all(map(torch.isfinite, map(torch.tensor, summary["loss"].values())))


def test_compile_failure_runs_eager():
    from casd.train.loop import CompiledOrEager

    net = torch.nn.Linear(3, 2)
    wrapped = CompiledOrEager(net, "linear")
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no compiler")

    wrapped.compiled = Broken()
    x = torch.ones(1, 3)
    with pytest.warns(UserWarning, match="compiling linear failed"):
        out = wrapped(x)
    torch.testing.assert_close(out, net(x))
    assert wrapped.failed.startswith("RuntimeError")
    torch.testing.assert_close(wrapped(x), net(x))


def test_accumulation_2x4_gives_the_gradients_of_one_batch_of_8(data_root, tmp_path):
    """accumulate 2 (micro-batches of 4) vs one batch of 8 in norm chunks of 4: the same norm statistics and
    losses (CX, whose centring spans a micro-batch, is off in the tiny params), so the same gradients."""
    grads = {}
    for name, overrides in (("whole", {"norm_batch_chunks": 2}), ("accumulated", {"accumulate": 2})):
        params = tiny_params(batch_size=8, pairs_per_epoch=8, **overrides)
        trainer = Trainer(TrainJob.from_params(params), data_root, Outputs.under(tmp_path / name))
        trainer.nets.train()
        trainer.sampler.set_epoch(0)
        batch = trainer.to_device(next(iter(trainer.loader)))
        for optimizer in trainer.optimizers.values():  # keep the weights: compare the gradients alone
            optimizer.step = lambda *a, **k: None
        trainer.train_step(batch)
        grads[name] = {k: p.grad.clone() for k, p in trainer.nets.named_parameters() if p.grad is not None}
    assert grads["whole"].keys() == grads["accumulated"].keys() and grads["whole"]
    for k in grads["whole"]:
        torch.testing.assert_close(grads["accumulated"][k], grads["whole"][k], rtol=1e-4, atol=1e-6, msg=k)


def test_accumulate_must_divide_the_batch(data_root, tmp_path):
    with pytest.raises(ConfigError, match="accumulate"):
        Trainer(TrainJob.from_params(tiny_params(accumulate=3)), data_root, Outputs.under(tmp_path))
