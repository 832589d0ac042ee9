"""Stage: train the CASD generator (see casd/train/).

    python stages/train.py                          # one process (CUDA if available, else CPU)
    torchrun --nproc_per_node=N stages/train.py     # N processes, DistributedDataParallel
"""

from casd.config import run_stage
from casd.train import run_from_params

if __name__ == "__main__":
    run_stage(run_from_params)
