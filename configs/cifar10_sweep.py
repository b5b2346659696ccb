"""The CIFAR-10 fine-tuning recipe search, on the validation split only (pipelines.sweep).

Every arm of the paper preset (configs/cifar10.py:paper: random, pretrained and frozen, the
last two from one stack per seed, pretrained into the sweep's workdir for each preprocessing)
at 10,000 labels, three seeds (two cannot separate points 0.6 apart), for every combination
of: preprocessing (per-channel standardisation, or GCN + ZCA whitening fitted on the training
split), learning rate (0.01, 0.03), and regularisation (none, or weight decay 5e-4 with random
translations by up to 2 pixels and horizontal flips). Each arm gets its own best rate per
recipe; the recipe of the lowest mean over the arms is chosen (the frozen arm's rate is its
head's). Then the full-label cell (all 45,000 non-validation labels, validated on the other
5,000, no refit) is trained for 30, 60 and 100 epochs with that recipe and those rates, and the
schedule of the lowest mean over the arms is chosen: the refit's (finetune.full_epochs).
The workdir's best_flags.txt and best.json hold the choice; configs/cifar10_ablation.py reads
best.json.

  python -m pipelines.sweep --config=configs/cifar10_sweep.py --workdir=runs/cifar10_sweep \\
      --config.data.source=cifar:/path/cifar-10-python.tar.gz

The preset ``random`` (``--config=configs/cifar10_sweep.py:random``) is the sweep as first
run (results/cifar10_sweep): the random arm alone, two seeds, no schedule search.
"""

import importlib.util
from pathlib import Path

import ml_collections

from scae import config as cfglib


def _cifar10_config(preset: str):
    spec = importlib.util.spec_from_file_location("cifar10_config",
                                                  Path(__file__).with_name("cifar10.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def get_config(arg: str | None = None):
    preset = cfglib.preset_arg(arg or "arms", ("arms", "random"))
    c = _cifar10_config("paper")
    c.sweep = ml_collections.ConfigDict()
    c.sweep.label_size = 10000
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
    if preset == "random":
        c.sweep.seeds = (0, 1)
        return c
    c.sweep.seeds = (0, 1, 2)
    c.sweep.arms = ("random", "pretrained", "frozen")
    # The full-label cell's schedule, after the grid (scae.study.sweep).
    c.sweep.full_axes = ml_collections.ConfigDict({
        "epochs": tuple({"finetune.full_epochs": e} for e in (30, 60, 100))})
    return c
