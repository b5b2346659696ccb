"""MNIST: the paper's CAE stack and CNN (Masci et al., 2011), pretrained and compared.

Presets (``--config=configs/mnist.py:<preset>``):
  smoke  - seconds; tiny subsets, for tests.
  quick  - the README's main job on the embedded MNIST, a few minutes on 2 CPU cores:
           pretrains the stack (4, 1 and 1 epochs on 10k images) and compares random /
           pretrained / frozen at 1000 labels over 3 seeds (short fine-tuning).
  paper  - the full protocol: stack on all 50k non-validation training images (10 epochs
           per layer); 1k, 10k and 50k labels; 10 seeds per cell. Best run on a GPU.

Run:
  python -m pipelines.compare --config=configs/mnist.py:quick --workdir=runs/mnist_quick
Expect: the committed figures in results/README.md (mean and spread over seeds).
"""

from scae import config as cfglib


def get_config(arg: str | None = None):
    # The presets are defined once, in scae.config, which scae.make_config reads too.
    return cfglib.dataset_config("mnist", cfglib.preset_arg(arg, ("smoke", "quick", "paper")))
