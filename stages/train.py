"""Stage: train the CASD generator (see casd/train/).

    python stages/train.py                          # one process (CUDA if available, else CPU)
    torchrun --nproc_per_node=N stages/train.py     # N processes, DistributedDataParallel
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C while importing: end quietly (nothing written yet)

from casd.stages import main  # noqa: E402  (run_stage turns Ctrl-C into one line from here on)

if __name__ == "__main__":
    main("train")
