"""CASD networks: the generator (style encoder, pose encoder, decoder), discriminators, frozen VGG."""

from casd.models.discriminator import Discriminator
from casd.models.generator import Generator, GeneratorConfig
from casd.models.vgg import VGG19Features

__all__ = ["Discriminator", "Generator", "GeneratorConfig", "VGG19Features"]
