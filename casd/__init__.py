"""casd: CASD person-image synthesis as a reproducible pipeline.

Layers, lowest first (lower layers never import higher ones; README: the package table):
errors / config / fileio / weights -> tracking, data -> models, visuals -> losses, checkpoints, control ->
train, inference -> evaluation, annotate -> app -> stages, cli.
"""

__version__ = "0.1.0"
