"""Stage: generate every test pair with the trained (or an upstream) generator (see casd/inference.py)."""

from casd.stages import main

if __name__ == "__main__":
    main("test")
