"""CIFAR-10: the paper's CAE stack and CNN (Masci et al., 2011), pretrained and compared.

CIFAR-10 is not embedded: pass a source, e.g. the original python batches
``--config.data.source=cifar:/path/cifar-10-python.tar.gz`` (or have tfds prepared; an image
folder tree such as a JPEG copy, ``folder:/path/cifar10-jpeg.tar.gz``, works too, and the
records then say it is not the original test set).

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
      --config.data.source=cifar:/path/cifar-10-python.tar.gz
Expect: the committed figures in results/README.md (mean and spread over seeds).
"""

from scae import config as cfglib


def get_config(arg: str | None = None):
    # The presets are defined once, in scae.config, which scae.make_config reads too.
    return cfglib.dataset_config("cifar10", cfglib.preset_arg(arg, ("smoke", "quick", "paper")))
