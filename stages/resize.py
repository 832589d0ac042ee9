"""Stage resize: data/split -> data/resized at data.image_size (optional border crop; data.resize_filter)."""

from casd.config import run_stage
from casd.data.prepare import resize_from_params

if __name__ == "__main__":
    run_stage(resize_from_params)
