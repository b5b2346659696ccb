"""The driver's plan: how a run's steps are cut into compiled calls."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scae import interrupt
from scae.errors import Interrupted
from scae.train import checkpoint, driver


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 2000), batch=st.integers(1, 64), epochs=st.integers(1, 4),
       per_call=st.integers(1, 120), start=st.integers(0, 10_000))
def test_chunks_cover_every_step_once_within_epochs(n, batch, epochs, per_call, start):
    p = driver.plan(n, batch, epochs)
    start = start % (p.total_steps + 1)
    chunks = list(p.chunks(start, per_call))
    step = start
    for epoch, within, k in chunks:
        assert (epoch, within) == divmod(step, p.steps_per_epoch)
        assert 1 <= k <= per_call and within + k <= p.steps_per_epoch
        step += k
    assert step == p.total_steps
    # From an epoch's start, every call but an epoch's last has the same length; the last
    # one too whenever a divisor of the epoch of at least half the call length exists.
    full = [k for e, w, k in chunks if e > start // p.steps_per_epoch or start == 0]
    size = p.call_size(per_call)
    assert all(k == size for k in full[:-1] if k != p.steps_per_epoch % size)
    spe = p.steps_per_epoch
    if any(spe % d == 0 for d in range(max(1, (per_call + 1) // 2), per_call + 1)) \
            or spe <= per_call:
        assert spe % size == 0 and len({k for k in full}) <= 1


def test_call_size_divides_the_epoch_when_it_can():
    assert driver.plan(312 * 32, 32, 1).call_size(50) == 39
    assert driver.plan(15 * 64, 64, 1).call_size(50) == 15
    assert driver.plan(311, 1, 1).call_size(50) == 50  # prime: calls of 50 and one of 11
    assert [k for *_, k in driver.plan(311, 1, 1).chunks(0, 50)] == [50] * 6 + [11]


def test_the_jax_internals_the_driver_clears_still_exist():
    """driver._drop_executables clears JAX's executable caches through private names (there is
    no public call that keeps the traces); when a JAX release removes them, the driver falls
    back to jax.clear_caches, slower to restart phases. This test says so instead of a silent
    slowdown: update driver.executable_caches for the new JAX."""
    clears = driver.executable_caches()
    assert clears is not None, (f"jax {jax.__version__} lacks the executable caches that "
                                "scae.train.driver.executable_caches names")
    assert all(callable(f) for f in clears)



def _toy_phase(tmp_path, clock, **kwargs):
    return driver.Phase(
        name="toy", ckpt_dir=tmp_path / "ckpt", plan=driver.plan(8, 2, 5),
        loss_fn=lambda p, x, k: jnp.mean((x - p["w"]) ** 2), make_tx=lambda s: optax.sgd(0.1 * s),
        params={"w": jnp.zeros((1,))}, data=jnp.arange(8.0), pool=jnp.arange(8)[None],
        order_key=jax.random.PRNGKey(0)[None], step_key=jax.random.PRNGKey(1)[None], seeds=(0,),
        steps_per_call=2, clock=clock, log=lambda _: None, **kwargs)


@pytest.fixture
def saves(monkeypatch):
    """The steps every checkpoint save of the test wrote, in order."""
    steps, real = [], checkpoint.Checkpoints.save

    def save(self, step, state, record):
        steps.append(step)
        return real(self, step, state, record)

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save)
    return steps


def test_checkpoints_by_time_keep_every_evaluation_and_the_end(tmp_path, saves):
    """With checkpoint_seconds, a phase saves at most that often (a fake clock: 10 s a
    chunk of 2 steps) and at its end; every evaluation still reaches on_eval."""
    ticks = iter(range(0, 10_000, 10))
    seen = []
    driver.train(_toy_phase(tmp_path, lambda: next(ticks), checkpoint_seconds=25,
                            on_eval=lambda r: seen.append(r["evals"][-1]["step"])))
    # 10 chunks: a save once 25 s have passed since the last (3 chunks), and the end.
    assert saves == [6, 12, 18, 20], saves
    assert seen == [4, 8, 12, 16, 20]
    saves.clear()
    driver.train(_toy_phase(tmp_path / "every", lambda: 0.0, checkpoint_seconds=0))
    assert saves == [4, 8, 12, 16, 20]  # 0: a save at every evaluation


def test_a_signal_saves_the_step_it_stops_at_and_the_rerun_resumes_exactly(tmp_path, saves,
                                                                            monkeypatch):
    whole = driver.train(_toy_phase(tmp_path / "whole", lambda: 0.0, checkpoint_seconds=1e9))
    saves.clear()
    chunks = []
    real_check = interrupt.check

    def pending():
        return Interrupted(15, "toy") if len(chunks) >= 2 else None

    def check(where=None):
        chunks.append(where)
        if len(chunks) >= 3:
            raise Interrupted(15, where or "")

    monkeypatch.setattr(interrupt, "pending", pending)
    monkeypatch.setattr(interrupt, "check", check)
    with pytest.raises(Interrupted):
        driver.train(_toy_phase(tmp_path, lambda: 0.0, checkpoint_seconds=1e9))
    assert saves == [6], saves  # no save by time; the one the signal asked for, at step 6
    monkeypatch.setattr(interrupt, "pending", lambda: None)
    monkeypatch.setattr(interrupt, "check", real_check)
    resumed = driver.train(_toy_phase(tmp_path, lambda: 0.0, checkpoint_seconds=1e9))
    assert saves == [6, 20]
    np.testing.assert_array_equal(resumed.state["params"]["w"], whole.state["params"]["w"])
    losses = lambda r: [(e["step"], e["train_loss"]) for e in r.record["evals"]]
    assert losses(resumed) == losses(whole)


@pytest.mark.parametrize("value", [-0.5, 0, float("nan"), 1e9, 0.3, "0.5", True])
def test_a_learning_rate_scale_not_written_by_a_retry_is_refused(tmp_path, value):
    """layer<k>.lr_scale.json is written by the divergence retries only (1, 1/2, 1/4, ...);
    anything else, a negative scale above all (gradient ascent), is bad input naming the
    file, never obeyed."""
    from scae.errors import InputError
    from scae.train import retry

    path = retry.scale_file(tmp_path / "layer1")
    path.write_text(json.dumps({"lr_scale": value}))
    with pytest.raises(InputError, match="layer1.lr_scale.json: lr_scale"):
        retry.read_scale(path)
    path.write_text(json.dumps({"lr_scale": 0.25}))
    assert retry.read_scale(path) == 0.25
