"""When does fine-tuning from a pretrained stack never train? The first epochs of the
CIFAR-10 paper recipe at 10,000 labels, over learning rates, for the random and the
pretrained arm (pipelines.sweep).

In results/cifar10_paper one pretrained run (seed 0, 10k labels, rate 0.03 with momentum 0.9
and no warm-up) sat at one class from its first evaluation on, while the same seed's frozen
arm and its 1k and 50k pretrained runs trained normally. This sweep repeats the start of that
cell: 2 epochs at a constant rate (the paper preset's cosine over 30 epochs is within 1% of
its peak there), for rates 0.01, 0.02, 0.03 and 0.05, five seeds each (the seed picks the
labelled subset, the head's initialisation and the batch order), every pretrained run from
seed 0's stack (``compare.stack_per_seed`` off: the stack is the one thing held fixed). Each
record keeps every run's training loss at its first evaluation and the failure rule's
verdict (``failure_hit``: not below chance, log 10), which the sweep's table counts as
"never trained". The sweep's choice of a rate is not the point here; the counts per rate are.

  python -m pipelines.sweep --config=configs/cifar10_collapse.py --workdir=runs/cifar10_collapse \\
      --config.data.source=cifar:/path/cifar-10-python.tar.gz
  python -m pipelines.publish --workdir=runs/cifar10_collapse --out=results/cifar10_collapse

``:warmup`` asks whether a warm-up removes the collapse: the two top rates again, with the
rate rising linearly over the first epoch (finetune.warmup_steps, 78 steps of 128 of the
10,000 images), every arm alike (workdir runs/cifar10_collapse_warmup, published to
results/cifar10_collapse_warmup).
"""

import ml_collections

from scae import config as cfglib

RATES = (0.01, 0.02, 0.03, 0.05)
WARMUP_RATES = (0.03, 0.05)


def get_config(arg: str | None = None):
    preset = cfglib.preset_arg(arg or "paper", ("paper", "warmup"))
    c = cfglib.dataset_config("cifar10", "paper")
    c.preset = "collapse"
    c.compare.stack_per_seed = False
    c.finetune.epochs = 2
    c.finetune.evals = 2
    c.finetune.min_steps = 0
    c.finetune.schedule = "constant"
    c.finetune.failure_rule = "mark"  # recorded, not restarted: the count is the result
    c.sweep = ml_collections.ConfigDict()
    c.sweep.label_size = 10000
    c.sweep.seeds = (0, 1, 2, 3, 4)
    c.sweep.arms = ("random", "pretrained")
    rates = RATES
    if preset == "warmup":
        c.preset = "collapse_warmup"
        c.finetune.warmup_steps = c.sweep.label_size // c.finetune.batch_size  # one epoch
        rates = WARMUP_RATES
    c.sweep.axes = ml_collections.ConfigDict({
        "learning_rate": tuple({"finetune.learning_rate": r} for r in rates)})
    return c
