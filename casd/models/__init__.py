"""CASD networks: the generator (style encoder, pose encoder, decoder; :mod:`casd.models.generator`), the
discriminators (:mod:`casd.models.discriminator`), the frozen VGG19 (:mod:`casd.models.vgg`).

Import from the modules themselves: this package file imports nothing, so that no import runs in a circle.
"""
