"""MNIST: the paper's CAE stack and CNN (Masci et al., 2011), pretrained and compared.

Presets (``--config=configs/mnist.py:<preset>``):
  smoke  - seconds; tiny subsets, for tests.
  quick  - the README's main job on the embedded MNIST, about 10 minutes on 2 CPU cores:
           pretrains the stack (one epoch per layer on 10k images) and compares random /
           pretrained / frozen at 1000 labels over 3 seeds (short fine-tuning).
  paper  - the full protocol: stack on all 50k non-validation training images (10 epochs
           per layer); 1k, 10k and 50k labels; 10 seeds per cell. Best run on a GPU.

Run:
  python -m pipelines.compare --config=configs/mnist.py:quick --workdir=runs/mnist_quick
Expect: the committed figures in results/README.md (mean and spread over seeds).
"""

from scae import config as cfglib


def get_config(arg: str | None = None):
    preset = cfglib.preset_arg(arg, ("smoke", "quick", "paper"))
    c = cfglib.base_config("mnist")
    c.data.source = "mnist"
    c.preset = preset
    if preset == "smoke":
        c.data.validation_size = 200
        c.data.pretrain_size = 256
        c.data.test_size = 200
        c.model.features = (8, 8, 8)
        c.model.fc_width = 16
        c.pretrain.epochs = (1, 1, 1)
        c.pretrain.batch_size = 32
        c.pretrain.steps_per_call = 4
        c.pretrain.checkpoint_every_steps = 4
        c.pretrain.eval_size = 64
        c.finetune.epochs = 2
        c.finetune.min_steps = 0
        c.finetune.batch_size = 32
        c.finetune.evals = 2
        c.finetune.steps_per_call = 4
        c.compare.label_sizes = (100,)
        c.compare.num_seeds = 2
    elif preset == "quick":
        c.data.validation_size = 1000
        c.data.pretrain_size = 10000
        c.pretrain.epochs = (1, 1, 1)
        c.pretrain.eval_size = 1000
        c.finetune.batch_size = 64
        c.finetune.epochs = 10
        c.finetune.min_steps = 200
        c.finetune.evals = 5
        c.compare.label_sizes = (1000,)
        c.compare.num_seeds = 3
    else:
        c.compare.num_seeds = 10
    return c
