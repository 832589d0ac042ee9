"""Stage segment: LIP-20 parsing maps -> data/parsing/{train,test}, 8 merged regions at data.image_size."""

from casd.config import run_stage
from casd.data.prepare import segment_from_params

if __name__ == "__main__":
    run_stage(segment_from_params)
