"""Stage resize: data/split -> data/resized at data.image_size (optional border crop, Lanczos)."""

from casd.config import from_dict, load_params, run_stage
from casd.data.layout import DataConfig
from casd.data.prepare import resize


def main() -> None:
    print(f"resize: {resize(from_dict(DataConfig, load_params().get('data'), 'data'))}")


if __name__ == "__main__":
    run_stage(main)
