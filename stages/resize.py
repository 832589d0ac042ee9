"""Stage resize: data/split -> data/resized at data.image_size (optional border crop; data.resize_filter)."""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C while importing: end quietly (nothing written yet)

from casd.stages import main  # noqa: E402  (run_stage turns Ctrl-C into one line from here on)

if __name__ == "__main__":
    main("resize")
