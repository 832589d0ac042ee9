"""Stage segment: LIP-20 parsing maps -> data/parsing/{train,test}, 8 merged regions at data.image_size."""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C while importing: end quietly (nothing written yet)

from casd.stages import main  # noqa: E402  (run_stage turns Ctrl-C into one line from here on)

if __name__ == "__main__":
    main("segment")
