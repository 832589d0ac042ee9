"""Stage segment: LIP-20 parsing maps -> data/parsing/{train,test}, 8 merged regions at data.image_size."""

from casd.config import from_dict, load_params, run_stage
from casd.data.layout import DataConfig
from casd.data.prepare import segment


def main() -> None:
    print(f"segment: {segment(from_dict(DataConfig, load_params().get('data'), 'data'))}")


if __name__ == "__main__":
    run_stage(main)
