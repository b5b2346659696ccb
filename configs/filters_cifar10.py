"""The paper's filter experiment on CIFAR-10: four single-layer CAEs of 100 filters of 5x5,
trained plain, with 50% masking noise, with 2x2 max-pooling sparsity, and with 30% noise plus
max-pooling (Masci et al., 2011, the CIFAR-10 filter figure).

CIFAR-10 is not embedded; pass a source, e.g. the JPEG copy:
  python -m pipelines.filters --config=configs/filters_cifar10.py:paper \
      --workdir=runs/filters_cifar10 --config.data.source=cifar:/path/cifar-10-python.tar.gz
Expect: results/filters_cifar10.png: max-pooling gives edge- and blob-like filters; noise
alone changes little (see results/README.md).
"""

from scae import config as cfglib


def get_config(arg: str | None = None):
    preset = cfglib.preset_arg(arg, ("smoke", "quick", "paper"))
    c = cfglib.base_config("cifar10")
    c.data.validation_size = 5000
    c.data.standardize = True
    return cfglib.filter_experiment(c, maps=100, kernel=5, preset=preset)
