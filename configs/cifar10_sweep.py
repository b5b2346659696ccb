"""The CIFAR-10 fine-tuning recipe search, on the validation split only (pipelines.sweep).

The random arm of the paper preset (configs/cifar10.py:paper) at 10,000 labels, two seeds, for
every combination of: preprocessing (per-channel standardisation, or GCN + ZCA whitening fitted
on the training split), learning rate (0.01, 0.03), and regularisation (none, or weight decay
5e-4 with random translations by up to 2 pixels and horizontal flips). The winner's values are
the paper preset's.

  python -m pipelines.sweep --config=configs/cifar10_sweep.py --workdir=runs/cifar10_sweep \\
      --config.data.source=folder:/path/cifar10-jpeg.tar.gz
"""

import importlib.util
from pathlib import Path

import ml_collections


def _cifar10_config(preset: str):
    spec = importlib.util.spec_from_file_location("cifar10_config",
                                                  Path(__file__).with_name("cifar10.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def get_config(arg: str | None = None):
    del arg  # one grid
    c = _cifar10_config("paper")
    c.sweep = ml_collections.ConfigDict()
    c.sweep.label_size = 10000
    c.sweep.seeds = (0, 1)
    none = {"finetune.weight_decay": 0.0, "finetune.augment_translate": 0,
            "finetune.augment_flip": False}
    augmented = {"finetune.weight_decay": 0.0005, "finetune.augment_translate": 2,
                 "finetune.augment_flip": True}
    c.sweep.axes = ml_collections.ConfigDict({
        "preprocessing": ({"data.standardize": True, "data.preprocess": "none"},
                          {"data.standardize": False, "data.preprocess": "gcn_zca"}),
        "learning_rate": ({"finetune.learning_rate": 0.01}, {"finetune.learning_rate": 0.03}),
        "regularisation": (none, augmented),
    })
    return c
