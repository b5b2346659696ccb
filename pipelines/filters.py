"""The paper's filter experiment: single-layer CAEs trained plain, with noise, with
max-pooling and with both, and their filters side by side.

  python -m pipelines.filters --config=configs/filters_mnist.py:paper --workdir=runs/filters_mnist

Writes <workdir>/filters.png and, per variant, a pretrain workdir <workdir>/<variant>/.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import common
from scae.data import inputs
from scae.errors import InputError
from scae.study import filters as filter_experiment


def main(config, workdir: Path) -> None:
    if "variants" not in config:
        raise InputError("--config: not a filter-experiment config (no 'variants'); use "
                         "configs/filters_mnist.py or configs/filters_cifar10.py")
    data = inputs.build(config.data, config.seed)
    inputs.check_for(config, data, "filters")
    common.guard_workdir(config, workdir, "filters", common.overwrite(), data)
    path = filter_experiment.run(config, data, workdir, log=common.log)
    common.log(f"wrote {path}")


if __name__ == "__main__":
    common.run(main)
