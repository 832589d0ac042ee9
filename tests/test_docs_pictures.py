"""docs/make_pictures.py: the README's pose-transfer and try-on pictures come from unseen test people."""

import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from casd import visuals
from casd.data.layout import PreparedLayout, flat_person
from casd.data.tables import read_pairs
from casd.inference import Synthesizer
from helpers import save_tiny_generator

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "make_pictures.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pictures_show_the_first_test_people_in_their_target_poses(tmp_path, tiny_prepared, tiny_data_config):
    checkpoint = save_tiny_generator(tmp_path / "generator.pt", image_size=tiny_data_config.image_size)
    pictures = runpy.run_path(str(SCRIPT))["pictures"]
    assert flat_person("fashionWOMENBlouses_Shirtsid0000004401_7additional.jpg") == \
        "fashionWOMENBlouses_Shirtsid00000044"
    written = pictures(checkpoint, tiny_prepared, rows=2, out=tmp_path / "docs", scale=1)
    assert [p.name for p in written] == ["pose_transfer.png", "tryon.png"]

    synthesizer = Synthesizer.from_checkpoint(checkpoint, data_root=tiny_prepared)
    pairs = read_pairs(PreparedLayout(tiny_prepared).pairs("test"))
    first = pairs[0]
    second = next(p for p in pairs if flat_person(p[0]) != flat_person(first[0]))
    h, w = tiny_data_config.image_size
    caption = visuals.CAPTION_HEIGHT
    transfer = np.asarray(Image.open(written[0]))
    tryon = np.asarray(Image.open(written[1]))
    assert transfer.shape == (caption + 2 * h + 2, 5 * w + 4 * 2, 3)
    assert tryon.shape == (caption + 2 * h + 2, 4 * w + 3 * 2, 3)
    # row 1, panel 3: the generated picture; panel 4: the ground truth; the try-on's donor is the next row's source
    generated = transfer[caption:caption + h, 2 * (w + 2):2 * (w + 2) + w]
    np.testing.assert_array_equal(generated, visuals.to_uint8(synthesizer.transfer(*first)))
    truth = transfer[caption:caption + h, 3 * (w + 2):3 * (w + 2) + w]
    np.testing.assert_array_equal(truth, visuals.to_uint8(synthesizer.person(first[1]).image))
    tried = tryon[caption:caption + h, 3 * (w + 2):]
    np.testing.assert_array_equal(tried, visuals.to_uint8(synthesizer.swap(*first, {"upper_clothes": second[0]})))
