"""The driver's plan: how a run's steps are cut into compiled calls."""

import jax
from hypothesis import given, settings
from hypothesis import strategies as st

from scae.train import driver


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
