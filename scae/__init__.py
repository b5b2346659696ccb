"""scae: stacked convolutional auto-encoders (Masci et al., 2011) in JAX."""

__version__ = "0.1.0"
