"""The paper's filter experiment on MNIST: four single-layer CAEs of 20 filters of 7x7,
trained plain, with 50% masking noise, with 2x2 max-pooling sparsity, and with 30% noise
plus max-pooling (Masci et al., 2011, the MNIST filter figure).

Run:
  python -m pipelines.filters --config=configs/filters_mnist.py:paper --workdir=runs/filters_mnist
Expect: results/filters_mnist.png: plain gives trivial, identity-like filters; max-pooling
gives localised stroke-like ones (see results/README.md).
"""

from scae import config as cfglib


def get_config(arg: str | None = None):
    preset = cfglib.preset_arg(arg, ("smoke", "quick", "paper"))
    return cfglib.filter_experiment(cfglib.base_config("mnist"), maps=20, kernel=7, preset=preset)
