"""finetune.warmup_steps: the rate rises linearly over the first steps, then the schedule
proper runs over the rest; the key is validated, and adding it left sweeps' digests alone."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from scae import config as cfglib
from scae.errors import InputError
from scae.study import sweep
from scae.train import optim


def section(schedule: str, warmup: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(learning_rate=0.1, schedule=schedule,
                                          warmup_steps=warmup))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_rate_rises_over_the_warmup_then_follows_the_schedule(schedule):
    total, warm = 10, 4
    got = [optim.rate(section(schedule, warm), total, 0.5, i) for i in range(total)]
    np.testing.assert_allclose(got[:warm], [0.05 * (i + 1) / warm for i in range(warm)],
                               rtol=1e-6)
    # after it, the schedule proper over the remaining steps, from its start
    rest = [optim.rate(section(schedule, 0), total - warm, 0.5, i) for i in range(total - warm)]
    np.testing.assert_allclose(got[warm:], rest, rtol=1e-6)
    # no warm-up: the schedule as before, and a section without the key (pretrain) alike
    plain = ml_collections.ConfigDict(dict(learning_rate=0.1, schedule=schedule))
    assert [optim.rate(plain, total, 1.0, i) for i in range(total)] == \
        [optim.rate(section(schedule, 0), total, 1.0, i) for i in range(total)]


@pytest.mark.parametrize("bad", [-1, True])
def test_impossible_warmups_are_refused(bad):
    c = cfglib.base_config("mnist")
    c.finetune.warmup_steps = bad
    with pytest.raises(InputError, match="finetune.warmup_steps"):
        cfglib.validate(c)


def test_a_key_at_its_default_leaves_the_sweep_digest_as_before_it_existed():
    c = cfglib.base_config("cifar10")
    c.sweep = ml_collections.ConfigDict({"axes": {"lr": ({"finetune.learning_rate": 0.01},)}})
    digest = sweep.base_digest(c)
    before = c.copy_and_resolve_references()
    del before.finetune["warmup_steps"]  # the config as the code made it before the key
    assert sweep.base_digest(before) == digest
    c.finetune.warmup_steps = 100
    assert sweep.base_digest(c) != digest
