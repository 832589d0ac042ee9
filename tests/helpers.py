"""Helpers shared by several test modules: a tiny prepared dataset written directly, tiny training params."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from casd.data import layout as formats
from casd.losses import LossConfig

SIZE = [32, 24]


def write_prepared(root, size=(32, 24), identities=3, poses=3, test_identities=1, seed=0):
    """Tiny prepared dataset in the contract layout (data/split, resized, pose, parsing) under ``root``.

    Each person: a torso (upper clothes, region 5) and legs (region 7) in the
    identity's colours around its keypoints, arms (region 6) on the left side
    only, so that flips are visible. Returns {phase: list of names}.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    names_by_phase = {}
    for phase, ids in (("train", range(identities)), ("test", range(identities, identities + test_identities))):
        names, keypoints, pairs = [], [], []
        (root / "resized" / phase).mkdir(parents=True, exist_ok=True)
        (root / "parsing" / phase).mkdir(parents=True, exist_ok=True)
        (root / "split").mkdir(parents=True, exist_ok=True)
        for ident in ids:
            colours = rng.integers(0, 256, size=(3, 3))
            person = []
            for p in range(poses):
                name = f"fashionWOMENDressesid{ident:08d}0{p + 1}_{p + 1}front.jpg"
                kp = np.full((18, 2), -1, dtype=np.int16)
                cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
                kp[1] = (cy - h // 4, cx)                  # neck
                kp[2], kp[5] = (cy - h // 4, cx - 3), (cy - h // 4, cx + 3)   # shoulders: right at smaller x
                kp[8], kp[11] = (cy + 2, cx - 2), (cy + 2, cx + 2)          # hips
                kp[9], kp[12] = (min(cy + h // 4, h - 1), cx - 2), (min(cy + h // 4, h - 1), cx + 2)  # knees
                kp[0] = (max(cy - h // 3, 0), cx)          # nose
                kp[7] = (cy, min(cx + 6, w - 1))           # left wrist only
                regions = np.zeros((h, w), np.uint8)
                regions[kp[1, 0]:kp[8, 0], kp[2, 1]:kp[5, 1] + 1] = 5
                regions[kp[8, 0]:kp[9, 0], kp[8, 1]:kp[11, 1] + 1] = 7
                regions[kp[5, 0]:kp[7, 0] + 1, kp[5, 1] + 1:kp[7, 1] + 1] = 6
                image = np.full((h, w, 3), 200, np.uint8)
                for region, colour in zip((5, 7, 6), colours):
                    image[regions == region] = colour
                Image.fromarray(image).save(root / "resized" / phase / name, quality=95)
                Image.fromarray(regions).save(root / "parsing" / phase / (name[:-4] + ".png"))
                names.append(name)
                keypoints.append(kp)
                person.append(name)
            pairs += [(a, b) for a in person for b in person if a != b]
        formats.write_pairs(root / "split" / f"pairs-{phase}.csv", pairs)
        (root / "pose").mkdir(parents=True, exist_ok=True)
        np.savez_compressed(root / "pose" / f"{phase}.npz", names=np.array(names, dtype=str),
                            keypoints=np.stack(keypoints))
        names_by_phase[phase] = names
    return names_by_phase


def tiny_loss() -> dict:
    names = {f.name for f in dataclasses.fields(LossConfig)}
    loss = {}
    for key in ("cx", "lpips"):  # the slow terms: off for tests (they have their own tests)
        if key in names:
            loss[key] = 0.0
    for key in ("vgg_weights", "cx_vgg_weights", "lpips_weights"):
        if key in names:
            loss[key] = "none"
    return loss


def tiny_params(**train_overrides) -> dict:
    """Tiny model and loop on the 32x24 test data; VGG-heavy terms stay on except CX and LPIPS."""
    train = {"epochs_constant": 2, "epochs_decay": 1, "pairs_per_epoch": 8, "batch_size": 4, "disc_width": 8,
             "deterministic": True, "threads": 1, "save_every": 2, "checkpoint_every_steps": 1, "log_every": 1,
             "sample_every": 2, "seed": 7}
    train.update(train_overrides)
    return {"data": {"image_size": SIZE}, "pose": {"mode": "onehot", "sigma": 6.0},
            "model": {"pose_width": 8, "style_width": 8, "width": 16, "mlp_width": 16, "adain_blocks": 2,
                      "modulated_blocks": 2, "vgg_weights": "none"},
            "loss": tiny_loss(), "train": train, "tracking": {"enabled": False}}
