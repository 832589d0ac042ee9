"""Stage synth: write the synthetic DeepFashion set to data/raw (or, for real data, validate data.root)."""

from casd.config import run_stage
from casd.data.synthetic import run_from_params

if __name__ == "__main__":
    run_stage(run_from_params)
