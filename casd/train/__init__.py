"""The train stage: CASD's full objective, exact resume, AMP, DDP, MLflow (README: "Training").

``job`` (what a run reads and writes), ``loop`` (build, step, loop), ``state`` (RNG, fingerprint, resume),
``distributed`` (process group, device; what the batch statistics span). Import from the modules
themselves: this package file imports nothing, so that no import runs in a circle.
"""
