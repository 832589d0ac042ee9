"""The README's pictures of pose transfer and try-on, from unseen test people, after `dvc repro`.

    python docs/make_pictures.py [--checkpoint models/generator.pt] [--data data] [--rows 4] [--out docs]

Takes the first test pairs of data/split/pairs-test.csv (identities the model never saw in training):
- ``pose_transfer.png``: source | target pose | generated | ground truth | predicted target parsing
- ``tryon.png``: source | target pose | donor of the upper clothes (the next row's source) | result
"""

from __future__ import annotations

import argparse
from pathlib import Path

from casd.config import run_stage
from casd.data.layout import PreparedLayout, flat_person
from casd.data.tables import read_pairs
from casd.inference import Synthesizer
from casd.visuals import make_grid, make_strip, parsing_colours, save_png, to_uint8


def pictures(checkpoint: Path, data: Path, rows: int, out: Path, scale: int = 3) -> list[Path]:
    synthesizer = Synthesizer.from_checkpoint(checkpoint, data_root=data)
    pairs, seen = [], set()
    for source, target in read_pairs(PreparedLayout(data).pairs("test")):
        person = flat_person(source)
        if person not in seen:  # one row per person
            seen.add(person)
            pairs.append((source, target))
        if len(pairs) == rows:
            break
    people = {name: synthesizer.person(name) for pair in pairs for name in pair}
    transfer_rows, tryon_rows = [], []
    for i, (source, target) in enumerate(pairs):
        image, parsing = synthesizer.transfer_with_parsing(people[source], target)
        donor = people[pairs[(i + 1) % len(pairs)][0]]
        tried = synthesizer.swap(people[source], target, {"upper_clothes": donor})
        source_panel, pose_panel = to_uint8(people[source].image), synthesizer.pose_picture(target)
        panels = [source_panel, pose_panel, to_uint8(image), to_uint8(people[target].image), parsing_colours(parsing)]
        labels = ["source", "pose", "generated", "truth", "parsing"] if i == 0 else None
        transfer_rows.append(make_strip(panels, gap=2, scale=scale, labels=labels))
        labels = ["source", "pose", "donor", "try-on"] if i == 0 else None
        tryon_rows.append(make_strip([source_panel, pose_panel, to_uint8(donor.image), to_uint8(tried)], gap=2,
                                     scale=scale, labels=labels))
    return [save_png(make_grid(transfer_rows, gap=2), out / "pose_transfer.png"),
            save_png(make_grid(tryon_rows, gap=2), out / "tryon.png")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/generator.pt"))
    parser.add_argument("--data", type=Path, default=Path("data"), help="the prepared data folder")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    run_stage(lambda: print("wrote " + ", ".join(map(str, pictures(args.checkpoint, args.data, args.rows, args.out)))))


if __name__ == "__main__":
    main()
