"""Stage pose: annotation CSVs -> data/pose/{train,test}.npz keypoints in the data.image_size frame."""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C while importing: end quietly (nothing written yet)

from casd.stages import main  # noqa: E402  (run_stage turns Ctrl-C into one line from here on)

if __name__ == "__main__":
    main("pose")
