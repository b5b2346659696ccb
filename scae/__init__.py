"""scae: stacked convolutional auto-encoders (Masci et al., 2011) in JAX.

The public API (see README, "Use from Python"):

- :func:`pretrain` trains a CAE stack greedily on an array of images and returns a
  :class:`Stack`: ``encode`` (any depth, bounded batches), ``reconstruct``, ``to_cnn`` (the
  CNN with the stack's filters), ``save`` / :func:`load_stack`, also of a pretrain workdir.
- :func:`finetune` trains the CNN on labelled arrays in the arms ``random``, ``pretrained``
  and ``frozen`` with validation-based selection, returning the models and their records.
- The flax NNX models :class:`CAE`, :class:`CNN` and their specs; :func:`make_config`,
  :func:`load_data` and :func:`prepare` (uint8 pixels to network inputs).
- :class:`InputError`, a ``ValueError``: what the API raises, with one line naming the
  problem, for input it cannot take.

The package layers (docs/architecture.md): ``data``, ``models``, ``train``, ``study`` and
``report``, with the public API in :mod:`scae.api`. The names below load on first use, so that
a config file (which imports :mod:`scae.config`) does not pull in JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "FinetuneResult": "scae.api", "finetune": "scae.api", "load_data": "scae.api",
    "load_stack": "scae.api", "make_config": "scae.api", "prepare": "scae.api",
    "pretrain": "scae.api",
    "CAE": "scae.models.modules", "CNN": "scae.models.modules",
    "CAESpec": "scae.models.modules", "CNNSpec": "scae.models.modules",
    "Stack": "scae.models.stack",
    "InputError": "scae.errors",  # what every check of the API's inputs raises
    "nnx": "flax",  # re-exported: Rngs for the models
}

__all__ = ["CAE", "CAESpec", "CNN", "CNNSpec", "FinetuneResult", "InputError", "Stack", "finetune",
           "load_data", "load_stack", "make_config", "nnx", "prepare", "pretrain", "__version__"]

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from flax import nnx

    from scae.api import (
        FinetuneResult,
        finetune,
        load_data,
        load_stack,
        make_config,
        prepare,
        pretrain,
    )
    from scae.errors import InputError
    from scae.models.modules import CAE, CNN, CAESpec, CNNSpec
    from scae.models.stack import Stack


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
