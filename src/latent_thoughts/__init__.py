"""latent-thoughts: pretraining that learns from the latent thoughts behind text."""

__version__ = "0.1.0"
