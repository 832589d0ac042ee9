"""Stage split: listed raw images -> data/split/{train,test}/<flat name>.jpg + validated pairs CSVs."""

from casd.config import run_stage
from casd.data.prepare import split_from_params

if __name__ == "__main__":
    run_stage(split_from_params)
