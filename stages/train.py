"""Stage: train the CASD generator (see casd/train/).

    python stages/train.py                          # one process (CUDA if available, else CPU)
    torchrun --nproc_per_node=N stages/train.py     # N processes, DistributedDataParallel
"""

from casd.stages import main

if __name__ == "__main__":
    main("train")
