"""Shared fixtures: a tiny synthetic DeepFashion set, raw and fully prepared (session-scoped, < 2 s).

``tiny_raw``      Path of a raw layout (img_highres/, lst, pairs and annotation CSVs, semantic_merge3/):
                  2 categories x 3 identities x 3 poses, JPEGs 128x88, annotation frame 128x88.
``tiny_prepared`` Path of a folder laid out like ``data/``: raw/, split/, resized/, pose/, parsing/,
                  reports/, prepared at 64x44 by the four stages (split, resize, pose, segment).
``tiny_data_config``  the :class:`casd.data.layout.DataConfig` they were prepared with.

Both are shared by the whole session: tests that modify files must copy them first
(``shutil.copytree``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from casd.data.config import DataConfig
from casd.data.synthetic import SynthConfig

TINY_RAW_SIZE = (128, 88)
TINY_IMAGE_SIZE = (64, 44)


def tiny_synth_config(seed: int = 0) -> SynthConfig:
    return SynthConfig(seed=seed, image_size=TINY_RAW_SIZE, categories=2, identities_per_category=3,
                       poses_per_identity=3, test_fraction=0.34)


@pytest.fixture(scope="session")
def tiny_data_config() -> DataConfig:
    return DataConfig(source="synthetic", image_size=TINY_IMAGE_SIZE, annotation_size=TINY_RAW_SIZE,
                      crop_border=0, on_error="fail", workers=1)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_data_config) -> Path:
    from casd.data.synthetic import generate
    raw = tmp_path_factory.mktemp("tiny") / "raw"
    generate(tiny_synth_config(), tiny_data_config.annotation_size, raw, workers=1)
    return raw


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw, tiny_data_config) -> Path:
    from casd.data.pose import PoseConfig, extract_pose
    from casd.data.prepare import resize, segment, split
    root = tiny_raw.parent
    reports = root / "reports"
    split(tiny_data_config, tiny_raw, root / "split", reports)
    resize(tiny_data_config, root / "split", root / "resized", reports)
    extract_pose(tiny_data_config, PoseConfig(), tiny_raw, root / "pose", reports, root / "split")
    segment(tiny_data_config, tiny_raw, root / "split", root / "parsing", reports)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors run faster on one thread than on several (thread start-up dominates)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
