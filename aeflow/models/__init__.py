"""Torch modules only: no files, no Ray, no S3."""

from aeflow.models.autoencoder import ConvAutoencoder, ConvAutoencoderConfig
from aeflow.models.restorer import ResidualUNet, ResidualUNetConfig

__all__ = ["ConvAutoencoder", "ConvAutoencoderConfig", "ResidualUNet", "ResidualUNetConfig"]
