"""The filter experiment's variants (config.variants): each variant's config goes through the
main config's validation before anything is written, and a bad value is one line naming the
variant's own key; the main config's noise keys, which the variants replace, are refused
rather than silently ignored."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from test_bad_input import command

import configs.filters_mnist
from scae import config as cfglib
from scae.errors import InputError
from scae.study import filters as filter_experiment

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "--config=configs/filters_mnist.py:smoke"


def smoke() -> ml_collections.ConfigDict:
    return configs.filters_mnist.get_config("smoke")


def with_variant(config: ml_collections.ConfigDict, name: str,
                 **fields) -> ml_collections.ConfigDict:
    """``config`` with ``fields`` set in variant ``name``, of any type: as a config file's own
    ConfigDict would hold them (setting them on the typed field would raise TypeError)."""
    variants = config.variants.to_dict()
    variants[name] = dict(variants.get(name, {}), **fields)
    config.variants = ml_collections.ConfigDict(variants)
    return config


def _refused_by_validate(config: ml_collections.ConfigDict, **pretrain) -> bool:
    """Whether the main config with ``pretrain`` keys set (of any type) fails validation."""
    d = config.to_dict()
    d["pretrain"].update(pretrain)
    config = ml_collections.ConfigDict(d)
    try:
        cfglib.validate(config, "filters")
    except InputError:
        return True
    return False


@pytest.mark.parametrize("level", [0.0, 0.3, 0.999, 1.0, 1.5, -0.2, math.nan, math.inf, True,
                                   "0.5", None, 2])
def test_a_variant_noise_level_is_refused_where_the_main_config_refuses_it(level):
    config = with_variant(smoke(), "noise", noise_level=level)
    # The same value as the main config's own masking probability.
    refused = _refused_by_validate(smoke(), noise_level=level)
    if not refused:
        c = filter_experiment.variant_config(config, "noise")
        assert c.pretrain.noise_level == float(level)
        assert c.pretrain.noise == ("none" if level == 0 else "mask")
        return
    with pytest.raises(InputError) as e:
        filter_experiment.check(config)
    assert str(e.value).startswith("config.variants.noise.noise_level: "), str(e.value)


@pytest.mark.parametrize("pool", [1, 2, 3, 0, -1, 1.5, True, "2", (2,)])
def test_a_variant_sparsity_pool_is_refused_where_the_main_config_refuses_it(pool):
    config = with_variant(smoke(), "pool", sparsity_pool=pool)
    if not _refused_by_validate(smoke(), sparsity_pool=(pool,)):
        assert filter_experiment.variant_config(config, "pool").pretrain.sparsity_pool == (pool,)
        return
    with pytest.raises(InputError) as e:
        filter_experiment.check(config)
    message = str(e.value)
    assert message.startswith("config.variants.pool.sparsity_pool: "), message
    assert message.endswith(f"got {pool!r}"), message  # the variant's value, not a tuple


def test_the_paper_variants_pass_with_their_masking_noise_and_windows():
    got = {n: (c.pretrain.noise, c.pretrain.noise_level, tuple(c.pretrain.sparsity_pool))
           for n, c in filter_experiment.check(smoke()).items()}
    assert got == {"plain": ("none", 0.0, (1,)), "noise": ("mask", 0.5, (1,)),
                   "pool": ("none", 0.0, (2,)), "noise_pool": ("mask", 0.3, (2,))}
    assert list(got) == list(cfglib.FILTER_VARIANTS)  # the paper's order, not ConfigDict's


@pytest.mark.parametrize("key, value, fragments", [
    # The variants' noise is the paper's masking noise: another type would have no effect.
    ("noise", "gaussian", ["config.pretrain.noise:", "masking", "expected 'mask'"]),
    ("noise", "none", ["config.pretrain.noise:", "expected 'mask'"]),
    # Each variant's own level replaces the main one.
    ("noise_level", 0.3, ["config.pretrain.noise_level:", "config.variants.<name>.noise_level"]),
    # A single-layer experiment: 0 layers trained nothing and failed on the empty records.
    ("layers", 0, ["config.pretrain.layers:", "expected 1"]),
])
def test_main_pretrain_keys_that_would_have_no_effect_are_refused(key, value, fragments):
    config = smoke()
    config.pretrain[key] = value
    with pytest.raises(InputError) as e:
        filter_experiment.check(config)
    for fragment in fragments:
        assert fragment in str(e.value), str(e.value)


@pytest.mark.parametrize("variant, fragment", [
    ({"title": "x", "noise_level": 0.1}, "config.variants.v: expected the keys title, "
                                         "noise_level, sparsity_pool, got noise_level, title"),
    ({"title": "x", "noise_level": 0.1, "sparsity_pool": 1, "noise": "gaussian"},
     "config.variants.v: expected the keys"),
    ({"title": 3, "noise_level": 0.1, "sparsity_pool": 1}, "config.variants.v.title: expected"),
])
def test_a_malformed_variant_is_named(variant, fragment):
    config = smoke()
    config.variants = ml_collections.ConfigDict(dict(config.variants.to_dict(), v=variant))
    with pytest.raises(InputError, match="^" + fragment.replace(".", r"\.")):
        filter_experiment.check(config)


def test_a_variant_name_must_make_a_plain_folder_and_variants_must_exist():
    config = smoke()
    config.variants = ml_collections.ConfigDict(
        {"up/x": {"title": "x", "noise_level": 0.0, "sparsity_pool": 1}})
    with pytest.raises(InputError, match=r"^config\.variants\.up/x: .*folder"):
        filter_experiment.check(config)
    config.variants = ml_collections.ConfigDict()
    with pytest.raises(InputError, match=r"^config\.variants: expected at least one"):
        filter_experiment.check(config)


def test_run_refuses_a_bad_variant_before_writing(tmp_path):
    config = smoke()
    config.variants.plain.sparsity_pool = 0
    with pytest.raises(InputError, match="config.variants.plain.sparsity_pool"):
        filter_experiment.run(config, None, tmp_path, log=lambda _: None)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("override, fragment", [
    ("variants.plain.sparsity_pool=0", "config.variants.plain.sparsity_pool: expected integers"),
    ("variants.plain.noise_level=1.5", "config.variants.plain.noise_level: masking probability"),
    ("variants.plain.noise_level=-0.2", "config.variants.plain.noise_level: expected a number"),
    ("pretrain.noise=gaussian", "config.pretrain.noise: "),
])
def test_the_command_refuses_a_bad_variant_in_one_line_and_writes_nothing(capsys, tmp_path,
                                                                          override, fragment):
    w = tmp_path / "w"
    status, err = command(capsys, "filters", SMOKE, f"--workdir={w}", f"--config.{override}")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err[-2000:]
    assert lines == [lines[0]] and lines[0].startswith(f"error: {fragment}"), err[-2000:]
    assert not w.exists()


def test_the_reported_command_exits_2_without_a_traceback(tmp_path):
    """The tester's command, as a real process: it ended in a ZeroDivisionError traceback with
    exit 1 and left config.json, filters_settings.json and plain/ behind."""
    w = tmp_path / "w"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.filters", SMOKE, f"--workdir={w}",
         "--config.variants.plain.sparsity_pool=0"], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == ["error: config.variants.plain.sparsity_pool: expected integers >= 1, got 0"]
    assert not w.exists()
