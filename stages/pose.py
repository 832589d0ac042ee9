"""Stage pose: annotation CSVs -> data/pose/{train,test}.npz keypoints in the data.image_size frame."""

from casd.config import run_stage
from casd.data.pose import run_from_params

if __name__ == "__main__":
    run_stage(run_from_params)
