"""The Python API's preset default is the commands': a config file without a preset runs
'quick', and so do scae.make_config, scae.pretrain and scae.finetune without one (the paper's
protocol takes hours on a CPU and is asked for by name)."""

from __future__ import annotations

import inspect
from pathlib import Path

import configs.cifar10
import configs.mnist
import scae
from pipelines import usage
from scae import api


def test_every_api_entry_defaults_to_the_quick_preset():
    for fn in (api.make_config, api.pretrain, api.finetune):
        assert inspect.signature(fn).parameters["preset"].default == "quick", fn.__name__
    for module in (configs.mnist, configs.cifar10):
        assert usage.default_preset(Path(module.__file__)) == "quick"


def test_make_config_without_a_preset_is_the_config_file_without_one():
    for dataset, module in (("mnist", configs.mnist), ("cifar10", configs.cifar10)):
        got = dict(usage.flat_items(scae.make_config(dataset)))
        assert got == dict(usage.flat_items(module.get_config())), dataset
        assert got["preset"] == "quick"
