"""Stage pose: annotation CSVs -> data/pose/{train,test}.npz keypoints in the data.image_size frame."""

from casd.stages import main

if __name__ == "__main__":
    main("pose")
