"""scae: stacked convolutional auto-encoders (Masci et al., 2011) in JAX.

The public API (see README, "Use from Python"):

- :func:`pretrain` trains a CAE stack greedily on an array of images and returns a
  :class:`Stack`: ``encode`` (any depth, bounded batches), ``reconstruct``, ``to_cnn`` (the
  CNN with the stack's filters), ``save`` / :func:`load_stack`, also of a pretrain workdir.
- :func:`finetune` trains the CNN on labelled arrays in the arms ``random``, ``pretrained``
  and ``frozen`` with validation-based selection, returning the models and their records.
- The flax NNX models :class:`CAE`, :class:`CNN` and their specs; :func:`make_config`,
  :func:`load_data` and :func:`prepare` (uint8 pixels to network inputs).
"""

from scae.api import (FinetuneResult, finetune, load_data, load_stack, make_config, prepare,
                      pretrain)
from flax import nnx  # re-exported: Rngs for the models

from scae.models import CAE, CNN, CAESpec, CNNSpec
from scae.stack import Stack

__version__ = "0.2.0"

__all__ = ["CAE", "CAESpec", "CNN", "CNNSpec", "FinetuneResult", "Stack", "finetune",
           "load_data", "load_stack", "nnx", "make_config", "prepare", "pretrain", "__version__"]
