"""aeflow: autoencoder image compression, restoration and generation at archive scale on Ray."""

__version__ = "0.5.0"
