"""Stage synth: write the synthetic DeepFashion set to data/raw (or, for real data, validate data.root)."""

from casd.stages import main

if __name__ == "__main__":
    main("synth")
