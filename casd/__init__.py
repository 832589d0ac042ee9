"""casd: CASD person-image synthesis as a reproducible pipeline.

Layers, lowest first (lower layers never import higher ones):
formats / synth / pose / prepare -> models -> losses -> dataset / train /
generate -> metrics / report / tracking -> cli and stages/.
"""

__version__ = "0.1.0"
