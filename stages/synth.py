"""Stage synth: write the synthetic DeepFashion set to data/raw (or, for real data, validate data.root)."""

import json

from casd.config import from_dict, load_params, run_stage
from casd.formats import DataConfig
from casd.synth import SynthConfig, run


def main() -> None:
    params = load_params()
    data = from_dict(DataConfig, params.get("data"), "data")
    config = from_dict(SynthConfig, params.get("synth"), "synth")
    print(f"synth: {json.dumps(run(data, config), sort_keys=True)}")


if __name__ == "__main__":
    run_stage(main)
