"""The ablation that explains the gain: {version 0.1 recipe, tuned recipe} x {random,
pretrained} at CIFAR-10 1k and 10k labels, each arm at its own rate chosen on validation,
5 seeds, one stack per seed. Does the gain from pretraining depend on the baseline's strength?

Presets (``--config=configs/cifar10_ablation.py:<preset>``), one per recipe:
  v0.1   - version 0.1's recipe: per-channel standardised pixels, no augmentation, no weight
           decay (its rate was 0.02 for both arms); each arm's rate is the sweep's best for
           that recipe (a sub-grid of configs/cifar10_sweep.py).
  tuned  - the recipe the sweep chose (today GCN + ZCA, weight decay, translations and flips),
           each arm at its own chosen rate: configs/cifar10.py:paper's settings at 1k and 10k.
  table  - the CIFAR-10 table: configs/cifar10.py:paper (1k, 10k, all labels refit; random,
           pretrained and frozen) with the sweep's recipe, per-arm rates and full-label
           schedule. Its 1k and 10k random and pretrained cells are the tuned preset's runs
           (the same settings), so the ablation needs only v0.1's on top of it.
Every preset restarts a run that fails at half its rate (finetune.failure_rule = 'restart'),
the same rule for every arm.

The per-arm rates (and the tuned recipe and schedule) are those of a finished sweep: its
best.json, read from runs/cifar10_sweep/ (where `pipelines.gpu_run --studies=sweep:
configs/cifar10_sweep.py,...` leaves it) or else results/cifar10_sweep/; ``config.rates_from``
records which. Until a sweep has covered the arms, the values in RATES below stand in (each
recipe's single rate for every arm) and ``rates_from`` says so.

  python -m pipelines.compare --config=configs/cifar10_ablation.py:v0.1 \\
      --workdir=runs/cifar10_ablation_v0.1 --config.data.source=cifar:/path/cifar-10-python.tar.gz
  python -m pipelines.publish --workdir=runs/cifar10_ablation_v0.1 \\
      --out=results/cifar10_ablation_v0.1
"""

from pathlib import Path

from scae import config as cfglib

ROOT = Path(__file__).resolve().parents[1]
# Where a finished sweep's choice is looked for, first to last.
SWEEP_CHOICES = (ROOT / "runs" / "cifar10_sweep" / "best.json",
                 ROOT / "results" / "cifar10_sweep" / "best.json")
V01_RECIPE = {"data.standardize": True, "data.preprocess": "none",
              "finetune.weight_decay": 0.0, "finetune.augment_translate": 0,
              "finetune.augment_flip": False}
# The stand-ins until the sweep's choice exists: the values to be filled by its output.
RATES = {"v0.1": {"random": 0.02, "pretrained": 0.02},
         "tuned": {"random": 0.03, "pretrained": 0.03, "frozen": 0.03}}
PRESETS = ("v0.1", "tuned", "table")


def _shown(path: Path) -> str:
    """``path`` relative to the checkout when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def get_config(arg: str | None = None):
    preset = cfglib.preset_arg(arg or "tuned", PRESETS)
    c = cfglib.dataset_config("cifar10", "paper")
    c.preset = f"ablation_{preset}"
    c.finetune.failure_rule = "restart"
    recipe = "v0.1" if preset == "v0.1" else "tuned"
    arms = ("random", "pretrained", "frozen") if preset == "table" else ("random", "pretrained")
    found = cfglib.sweep_choice(SWEEP_CHOICES, V01_RECIPE if recipe == "v0.1" else None, arms)
    if recipe == "v0.1":
        c = cfglib.with_overrides(c, V01_RECIPE)
        c.finetune.learning_rate = RATES["v0.1"]["random"]
    if found is None:
        rates = RATES[recipe]
        c.rates_from = ("stand-ins (configs/cifar10_ablation.py RATES): no finished sweep "
                        "covering these arms in " + " or ".join(map(_shown, SWEEP_CHOICES)))
    else:
        choice, path = found
        rates = choice["arm_learning_rates"]
        if recipe == "tuned":
            c = cfglib.with_overrides(c, choice["recipe"])
            c.finetune.full_epochs = int(choice.get("full_epochs") or 0)
        c.rates_from = _shown(Path(path))
    # Every arm the recipe has a rate for, whichever the preset trains: the tuned and table
    # presets then have the same settings, and share runs.
    c.finetune.arm_learning_rates = cfglib.rate_items(
        {a: rates[a] for a in cfglib.ARMS if a in rates})
    c.compare.arms = arms
    if preset != "table":
        c.compare.label_sizes = (1000, 10000)
    c.compare.num_seeds = 5
    return c
