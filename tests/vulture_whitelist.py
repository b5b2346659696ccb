"""Names vulture cannot see used: read by name from configs or records, called by a protocol,
or public constants for users. Each line uses one, so that `vulture` (pyproject.toml) passes."""

# Config keys read with ConfigDict.get(name, default), so that configs recorded before them load.
_.divergence_retries
_.augment_translate
_.augment_flip
_.refit_full
_.stack_per_seed
_.tensorboard
_.unlabelled_source
# Module attributes and methods called by Python's protocols (PEP 562, io.RawIOBase).
__getattr__
__dir__
_.readable
_.readinto
# Record fields of the statistics' dataclasses, written with dataclasses.asdict.
_.n_a
_.n_b
_.differences
# Public constant: the CIFAR-10 class names in label order, for users of scae.data.
CIFAR10_CLASSES
# Console-script entry points, named in pyproject.toml's [project.scripts].
_.pretrain
_.compare
_.visualize
_.filters
_.sweep
_.publish
_.encode
_.benchmark
# A config key read with config.finetune.get("failure_rule", ...), which vulture cannot see.
_.failure_rule
# A config key read with config.finetune.get("full_epochs", ...); a function the config files
# (configs/cifar10_ablation.py, outside vulture's paths) call.
_.full_epochs
sweep_choice
# A config key read with cfg.get("warmup_steps", 0) (scae.train.optim.schedule).
_.warmup_steps
