"""The ``data:`` section of params.yaml (:class:`DataConfig`) and the image-size rule of the generator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image

from casd.data.layout import SYNTH_RAW_DIR
from casd.config import Checks

GENERATOR_SIZE_MULTIPLE = 4  # image height and width: the generator down-samples twice


def size_problem(size: object, multiple: int = 1) -> str | None:
    """What ``size`` should be when it is not [H, W] positive integers, each divisible by ``multiple``; else None."""
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        return "[H, W] positive integers"
    if size[0] % multiple or size[1] % multiple:
        return f"[H, W] divisible by {multiple} (the generator down-samples twice)"
    return None



RESIZE_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}


@dataclasses.dataclass
class DataConfig:
    """The ``data:`` section of params.yaml (README, "Data formats" and "Switching to real DeepFashion").

    image_size: (H, W) of the prepared images, divisible by 4 (the generator down-samples twice).
    annotation_size: (H, W) of the frame of the annotation coordinates and the LIP parsing maps.
    crop_border: columns cut left and right, in annotation pixels (raw images: the same fraction).
    resize_filter: lanczos | bicubic (PIL's default of ``Image.resize``, what upstream's resize used).
    keypoint_frame: rescale (annotation frame -> image frame) | as_is (upstream: coordinates unchanged).
    parsing_frame: annotation (maps at annotation_size, cropped and resized) | image (maps already at
    image_size, used as they are: upstream's loader).
    follow_external_links: read links under ``root`` that resolve outside it.
    """

    source: str = "synthetic"
    root: str = str(SYNTH_RAW_DIR)
    image_size: tuple[int, int] = (64, 44)
    annotation_size: tuple[int, int] = (256, 176)
    crop_border: int = 0
    resize_filter: str = "lanczos"
    jpeg_quality: int = 95
    keypoint_frame: str = "rescale"
    parsing_frame: str = "annotation"
    follow_external_links: bool = False
    on_error: str = "fail"
    workers: int = 2

    def __post_init__(self) -> None:
        checks = Checks("data")
        for key, choices in (("source", ("synthetic", "deepfashion")), ("on_error", ("fail", "skip")),
                             ("resize_filter", tuple(RESIZE_FILTERS)), ("keypoint_frame", ("rescale", "as_is")),
                             ("parsing_frame", ("annotation", "image"))):
            checks.choice(key, getattr(self, key), choices)
        for key, multiple in (("image_size", GENERATOR_SIZE_MULTIPLE), ("annotation_size", 1)):
            problem = size_problem(getattr(self, key), multiple)
            if checks.require(not problem, f"{key} must be {problem}, got {getattr(self, key)!r}"):
                setattr(self, key, tuple(getattr(self, key)))
        annotation_width_known = not size_problem(self.annotation_size, 1)
        if checks.number("crop_border", self.crop_border, minimum=0, integer=True) and annotation_width_known:
            checks.require(2 * self.crop_border < self.annotation_size[1],
                           f"crop_border must be below half the annotation width {self.annotation_size[1]}, "
                           f"got {self.crop_border}")
        checks.number("jpeg_quality", self.jpeg_quality, minimum=1, maximum=100, integer=True)
        checks.flag("follow_external_links", self.follow_external_links)
        checks.number("workers", self.workers, minimum=1, integer=True)
        root, synth = Path(self.root).resolve(), SYNTH_RAW_DIR.resolve()
        if self.source == "synthetic":
            checks.require(root == synth, f"with source: synthetic, root must be {SYNTH_RAW_DIR} (where the synth "
                                          f"stage writes the set), got {self.root!r}")
        if self.source == "deepfashion":
            checks.require(root != synth and synth not in root.parents,
                           f"with source: deepfashion, root must lie outside {SYNTH_RAW_DIR} (the synth stage's "
                           "output)")
        checks.done()

    def raw_dir(self) -> Path:
        """Folder holding the raw DeepFashion layout (``data.root``)."""
        return Path(self.root)

    def resample(self) -> Image.Resampling:
        return RESIZE_FILTERS[self.resize_filter]
