"""Stage split: listed raw images -> data/split/{train,test}/<flat name>.jpg + validated pairs CSVs."""

from casd.config import from_dict, load_params, run_stage
from casd.data.layout import DataConfig
from casd.data.prepare import split


def main() -> None:
    summary = split(from_dict(DataConfig, load_params().get("data"), "data"))
    print("split: " + ", ".join(f"{phase} {summary[phase]['placed']} images / {summary[phase]['pairs']} pairs"
                                for phase in ("train", "test")))


if __name__ == "__main__":
    run_stage(main)
