"""The paper's filter experiment: single-layer CAEs trained plain, with noise, with
max-pooling and with both, and their filters side by side.

  python -m pipelines.filters --config=configs/filters_mnist.py:paper --workdir=runs/filters_mnist

Writes <workdir>/filters.png and, per variant, a pretrain workdir <workdir>/<variant>/.

Each variant (config.variants.<name>) sets its own masking probability, noise_level in [0, 1)
(0: no noise), and max-pooling sparsity window, sparsity_pool >= 1 (1: none). The variants'
noise is the paper's masking noise: pretrain.noise must stay 'mask' and pretrain.noise_level 0
(each variant's own level replaces it); other values are refused. Every variant's config is
checked as the main config is, naming the variant's key, before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from pipelines import common
from scae.data import inputs
from scae.study import filters as filter_experiment


def main(config, workdir: Path) -> None:
    # Every variant is checked before the data is read and the workdir touched.
    filter_experiment.check(config)
    data = inputs.build(config.data, config.seed)
    inputs.check_for(config, data, "filters")
    common.guard_workdir(config, workdir, "filters", common.overwrite(), data)
    path = filter_experiment.run(config, data, workdir, log=common.log)
    common.log(f"wrote {path}")


if __name__ == "__main__":
    common.run(main)
