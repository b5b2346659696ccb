"""CIFAR-10: the paper's CAE stack and CNN (Masci et al., 2011), pretrained and compared.

CIFAR-10 is not embedded: pass a source, e.g. the JPEG copy of the data set
``--config.data.source=folder:/path/cifar10-jpeg.tar.gz`` or the original python batches
``--config.data.source=cifar:/path/cifar-10-python.tar.gz`` (or have tfds prepared).

Presets (``--config=configs/cifar10.py:<preset>``):
  smoke  - seconds; tiny subsets, for tests.
  quick  - a first look on 2 CPU cores: 4, 1 and 1 epochs per CAE layer on 10k images, 1000 labels,
           3 seeds.
  paper  - the full protocol: stack on all 45k non-validation training images (10 epochs
           per layer); 1k, 10k and all 45k labels, the last refit on all 50k training images
           for the schedule chosen on validation; the fine-tuning recipe chosen on validation
           (configs/cifar10_sweep.py); one stack per seed; 5 seeds per cell. Best run on a GPU.

Run:
  python -m pipelines.compare --config=configs/cifar10.py:paper --workdir=runs/cifar10 \
      --config.data.source=folder:/path/cifar10-jpeg.tar.gz
Expect: the committed figures in results/README.md (mean and spread over seeds).
"""

from scae import config as cfglib


def get_config(arg: str | None = None):
    preset = cfglib.preset_arg(arg, ("smoke", "quick", "paper"))
    c = cfglib.base_config("cifar10")
    c.data.source = "cifar10"
    c.data.validation_size = 5000
    c.data.standardize = True
    # Standardised (or whitened) pixels reach beyond the scaled tanh's +-1.716: the decoder's
    # output is linear so that the CAEs can reconstruct what they are given.
    c.pretrain.decoder_output = "linear"
    cfglib.apply_preset(c, preset)
    if preset == "paper":
        c.compare.label_sizes = (1000, 10000, 45000)
        # The recipe chosen on validation by configs/cifar10_sweep.py (results/cifar10_sweep):
        # GCN + ZCA whitening, learning rate 0.03, weight decay 5e-4, random translations by
        # up to 2 pixels and horizontal flips.
        c.data.standardize = False
        c.data.preprocess = "gcn_zca"
        c.finetune.learning_rate = 0.03
        c.finetune.weight_decay = 0.0005
        c.finetune.augment_translate = 2
        c.finetune.augment_flip = True
        # The full cell trains again on all 50k training images (validation included) for the
        # schedule chosen on validation, as the paper's 50k; see finetune.refit_full.
        c.finetune.refit_full = True
    return c
