"""Stage: generate every test pair with the trained (or an upstream) generator (see casd/inference.py)."""

from casd.config import run_stage
from casd.inference import run_from_params

if __name__ == "__main__":
    run_stage(run_from_params)
