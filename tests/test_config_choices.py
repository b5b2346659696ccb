"""The config's choice lists are plain constants (a config file loads without JAX); they must
name exactly what the models, ops, driver and preprocessing accept."""

import subprocess
import sys
from pathlib import Path

from scae import config as cfglib
from scae.data import preprocess
from scae.models import modules, ops
from scae.train import driver, parallel

ROOT = Path(__file__).resolve().parents[1]


def test_choice_lists_match_the_code():
    assert cfglib.ACTIVATIONS == tuple(ops.ACTIVATIONS)
    assert cfglib.INITIALIZERS == tuple(modules.INITIALIZERS)
    assert cfglib.CONV_IMPLS == ops.CONV_IMPLS
    assert cfglib.COMPUTE_DTYPES == ops.COMPUTE_DTYPES
    assert cfglib.SEED_BATCHINGS == driver.SEED_BATCHINGS
    assert cfglib.SPREADS == parallel.SPREADS
    assert cfglib.NOISES == modules.NOISES
    assert cfglib.DECODERS == modules.DECODERS
    assert cfglib.DECODER_OUTPUTS == modules.DECODER_OUTPUTS
    assert cfglib.PREPROCESS == preprocess.PREPROCESS


def test_loading_a_config_file_does_not_import_jax():
    code = (
        "import importlib.util as u, sys\n"
        "for name in ('mnist', 'cifar10', 'cifar10_sweep', 'filters_mnist'):\n"
        f"    spec = u.spec_from_file_location(name, {str(ROOT / 'configs')!r} + f'/{{name}}.py')\n"
        "    m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "    m.get_config('paper' if name in ('mnist', 'cifar10') else None).to_dict()\n"
        "heavy = [k for k in ('jax', 'flax', 'optax', 'orbax', 'matplotlib')\n"
        "         if k in sys.modules]\n"
        "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "", f"loading the config files imported {out.stdout.strip()}"
