"""The ``data:`` section of params.yaml (:class:`DataConfig`) and the image-size rule of the generator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image

from casd.data.layout import SYNTH_RAW_DIR
from casd.errors import ConfigError

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
        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"params.yaml [data]: {key} must be {expected}, got {getattr(self, key)!r}")

        for key, choices in (("source", ("synthetic", "deepfashion")), ("on_error", ("fail", "skip")),
                             ("resize_filter", tuple(RESIZE_FILTERS)), ("keypoint_frame", ("rescale", "as_is")),
                             ("parsing_frame", ("annotation", "image"))):
            if getattr(self, key) not in choices:
                raise bad(key, " or ".join(choices))
        for key, multiple in (("image_size", GENERATOR_SIZE_MULTIPLE), ("annotation_size", 1)):
            problem = size_problem(getattr(self, key), multiple)
            if problem:
                raise bad(key, problem)
            setattr(self, key, tuple(getattr(self, key)))
        if not isinstance(self.crop_border, int) or not 0 <= 2 * self.crop_border < self.annotation_size[1]:
            raise bad("crop_border", "an integer in [0, W_ann/2)")
        if not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 100:
            raise bad("jpeg_quality", "an integer in 1..100")
        if not isinstance(self.follow_external_links, bool):
            raise bad("follow_external_links", "true or false")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise bad("workers", "a positive integer")
        root, synth = Path(self.root).resolve(), SYNTH_RAW_DIR.resolve()
        if self.source == "synthetic" and root != synth:
            raise ConfigError(f"params.yaml [data]: with source: synthetic, root must be {SYNTH_RAW_DIR} (where the "
                              f"synth stage writes the set), got {self.root!r}")
        if self.source == "deepfashion" and (root == synth or synth in root.parents):
            raise ConfigError(f"params.yaml [data]: with source: deepfashion, root must lie outside {SYNTH_RAW_DIR} "
                              "(the synth stage's output)")

    def raw_dir(self) -> Path:
        """Folder holding the raw DeepFashion layout (``data.root``)."""
        return Path(self.root)

    def resample(self) -> Image.Resampling:
        return RESIZE_FILTERS[self.resize_filter]
