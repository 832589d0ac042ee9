"""Stage pose: annotation CSVs -> data/pose/{train,test}.npz keypoints in the data.image_size frame."""

from casd.config import from_dict, load_params, run_stage
from casd.formats import DataConfig
from casd.pose import PoseConfig, extract_pose


def main() -> None:
    params = load_params()
    data = from_dict(DataConfig, params.get("data"), "data")
    pose = from_dict(PoseConfig, params.get("pose"), "pose")
    print(f"pose: {extract_pose(data, pose)}")


if __name__ == "__main__":
    run_stage(main)
