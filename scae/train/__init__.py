"""Training: the one driver (a resumable :class:`~scae.train.driver.Phase` of one or many
seeds, compiled scan chunks, divergence retries), orbax checkpoints, optimisers from a config
section, and the device mesh.

The driver is model-agnostic: it trains any pytree of parameters under a loss function.
"""
