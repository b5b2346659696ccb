"""The one training driver: every resumable unit of training (a CAE layer of the stacks of
one seed or several, a fine-tuning cell of seeds trained together) is a :class:`Phase` over a
leading seed axis, run by :func:`train`.

Data sets live on the device; each epoch is a seeded permutation of example indices, and a
compiled ``lax.scan`` runs many steps per call, gathering its batches from the device arrays,
so Python is off the per-step path. Data too large for that stream from the host instead
(:class:`Source`): each chunk reads the images its steps take on this process's devices, laid
out by seed and step, and runs the same steps on them. Randomness is ``fold_in(key, step)``: a
run resumed from a checkpoint at step s draws exactly what an uninterrupted run draws. Around
the compiled chunks the driver keeps the progress bar, the checkpoints (orbax, only complete
ones are ever seen), the guard against non-finite losses or parameters, the divergence retries
(:mod:`scae.train.retry`), and the per-evaluation records.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm.auto import tqdm

from scae import accounting, interrupt
from scae.errors import InputError
from scae.train import checkpoint, parallel, retry

Array = jax.Array
# loss_fn(params, batch, key) -> scalar loss, where batch = data[indices] (a pytree); a phase
# with a context calls loss_fn(params, batch, key, context).
LossFn = Callable[..., Array]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many steps a run takes: whole epochs of ``batch_size``, the remainder dropped."""

    num_examples: int
    batch_size: int
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def call_size(self, steps_per_call: int) -> int:
        """The steps of one compiled call: at most ``steps_per_call``, and where it can be
        done with calls of at least half that, a divisor of the epoch, so that every call
        has the same length and one program is compiled instead of two (312 steps in calls
        of 50 would end each epoch with a 12-step call; calls of 39 divide it)."""
        spe = self.steps_per_epoch
        if spe <= steps_per_call:
            return spe
        for d in range(steps_per_call, (steps_per_call + 1) // 2 - 1, -1):
            if d > 0 and spe % d == 0:
                return d
        return steps_per_call

    def chunks(self, start_step: int, steps_per_call: int) -> Iterator[tuple[int, int, int]]:
        """(epoch, offset within the epoch, number of steps) from ``start_step`` to the end,
        in calls of :meth:`call_size`; chunks never cross an epoch boundary, so each sees one
        permutation."""
        size = self.call_size(steps_per_call)
        step = start_step
        while step < self.total_steps:
            epoch, within = divmod(step, self.steps_per_epoch)
            n = min(size, self.steps_per_epoch - within)
            yield epoch, within, n
            step += n


def plan(num_examples: int, batch_size: int, epochs: int, min_steps: int = 0) -> Plan:
    """A plan of at least ``epochs`` epochs and at least ``min_steps`` steps."""
    if num_examples < batch_size:
        batch_size = num_examples  # a tiny labelled set trains full-batch
    spe = num_examples // batch_size
    return Plan(num_examples, batch_size, max(epochs, math.ceil(min_steps / spe)))


def epoch_order(key: Array, pool: Array, epoch: int | Array) -> Array:
    """The indices of ``pool`` in the seeded order of ``epoch``."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), pool)



# How the seeds of a phase trained together share one compiled program (see over_seeds).
SEED_BATCHINGS = ("auto", "vmap", "map")


def resolve_seed_batching(mode: str = "auto") -> str:
    """'auto' is 'map' on the CPU and 'vmap' elsewhere.

    'vmap' batches the seeds into every operation, which fills a GPU or TPU. 'map' runs them
    one after another within the same program (``lax.map``): on a CPU one seed's batch already
    keeps the cores busy, and vmapped seeds add layout copies around the batched matmuls
    (docs/performance.md, "The seeds of a cell one after another, in one program"); it also
    holds one seed's activations at a time. Both compute the same values up to float32 rounding."""
    if mode not in SEED_BATCHINGS:
        raise ValueError(f"seed batching {mode!r} not in {SEED_BATCHINGS}")
    if mode == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return mode


def seeds_at_once(seeds: int, mode: str = "auto") -> int:
    """How many seeds' activations a program of ``seeds`` seeds holds at once under ``mode``:
    the divisor of an evaluation's batch that keeps its memory bounded."""
    return max(1, seeds) if resolve_seed_batching(mode) == "vmap" else 1


def per_seed_batch(batch: int, seeds: int, mode: str = "auto") -> int:
    """Images per seed in one evaluation step, so that the seeds held at once
    (:func:`seeds_at_once`) take ``batch`` images together: at least 1."""
    return max(1, batch // seeds_at_once(seeds, mode))


def over_seeds(fn: Callable, in_axes: Sequence[int | None], mode: str = "auto") -> Callable:
    """``fn`` over a leading seed axis of the arguments whose ``in_axes`` entry is 0 (None:
    shared by every seed), its outputs stacked along a leading seed axis: ``jax.vmap(fn,
    in_axes)``, or the same computation seed after seed as a ``lax.map``
    (:func:`resolve_seed_batching`)."""
    in_axes = tuple(in_axes)
    if any(a not in (0, None) for a in in_axes):
        raise ValueError(f"in_axes entries must be 0 or None, got {in_axes}")
    batched = (jax.vmap(fn, in_axes=in_axes) if resolve_seed_batching(mode) == "vmap"
               else _mapped(fn, in_axes))

    def over(*args):
        per_seed = [a for a, ax in zip(args, in_axes) if ax == 0]
        if per_seed and all(leaf.shape[0] == 1 for leaf in jax.tree.leaves(per_seed)):
            # One seed: its program is the one-model program, with no batching around it.
            one = fn(*(jax.tree.map(lambda x: x[0], a) if ax == 0 else a
                       for a, ax in zip(args, in_axes)))
            return jax.tree.map(lambda x: x[None], one)
        return batched(*args)

    return over


def _mapped(fn: Callable, in_axes: tuple[int | None, ...]) -> Callable:
    """``fn`` seed after seed, as a ``lax.map`` over the arguments of ``in_axes`` 0."""

    def mapped(*args):
        per_seed = [a for a, ax in zip(args, in_axes) if ax == 0]

        def one(xs):
            it = iter(xs)
            return fn(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes)))

        return lax.map(one, per_seed)

    return mapped


# One order per seed: its own key and pool.
_seed_orders = jax.jit(over_seeds(epoch_order, (0, 0, None), "vmap"))


@runtime_checkable
class Source(Protocol):
    """A phase's data read on the host by example index (``Phase.data``), for data sets that
    do not fit in memory (:class:`scae.data.stream.PretrainStream`). Each compiled chunk of n
    steps reads the examples its batches take on this process's devices, and only those are
    held at once (:func:`chunk_data`)."""

    def read(self, indices: np.ndarray) -> Any:
        """The examples at ``indices``, in that order: a pytree of host arrays indexed by
        example, as ``data[indices]`` of in-memory data."""


def chunk_data(source: Source, order: np.ndarray, offset: int, num_steps: int,
               batch_size: int, spread: str = "auto") -> Any:
    """The data of one chunk of ``num_steps`` steps of a streamed phase, on the devices: each
    seed's batches, (seeds, num_steps, batch_size, ...), seed m's step i training on
    ``data[m, i]``, the examples ``order[m, offset + i*batch_size : ... + batch_size]`` of the
    epoch's ``order`` (seeds, n); :func:`make_steps` with ``streamed`` runs on them.

    They are laid out over the devices as the phase is (``spread``,
    :func:`scae.train.parallel.spread`): with the batch spread each device holds its slice of
    every batch, with the seeds spread its seeds' batches. A process reads from ``source`` only
    the examples of its own devices' share, each once however many of its seeds and steps take
    it (:func:`scae.train.parallel.seed_batches`)."""
    need = np.asarray(order)[:, offset:offset + num_steps * batch_size]
    need = need.reshape(need.shape[0], num_steps, batch_size)
    return parallel.seed_batches(need, source.read, parallel.spread(spread, need.shape[0]))


def _running_max(so_far: Sequence[float], norms: np.ndarray) -> list[float]:
    """Each seed's largest of ``so_far`` and its row of ``norms`` (seeds, steps). A NaN in
    ``so_far`` (unknown: steps restored from a checkpoint saved without norms) stays NaN,
    as Python's max keeps its first argument when the comparison is false."""
    return [max(m, float(g)) for m, g in zip(so_far, norms.max(axis=1))]


def make_steps(loss_fn: LossFn, tx: optax.GradientTransformation, batch_size: int,
               num_steps: int, seed_batching: str = "auto", spread: str = "auto",
               streamed: bool = False) -> Callable:
    """Compiles ``num_steps`` training steps of every seed as one call.

    Returns ``run(params, opt_state, data, order, offset, step0, key, context=None) ->
    (params, opt_state, losses, grad_norms)`` over a leading seed axis of params, opt_state,
    order, key, context, losses and grad_norms (the data are shared), as ``seed_batching``
    says (:func:`over_seeds`). ``losses`` and ``grad_norms`` are (seeds, num_steps): each
    step's loss and the global norm of its gradient (what a run that blows up shows first).

    Seed m's step i trains on ``data[order[m, offset + i*batch_size : ... + batch_size]]``
    with key ``fold_in(key[m], step0 + i)``; a ``context`` that is not None (fixed inputs of
    the loss that are not trained, such as frozen layers) is passed to ``loss_fn`` as its last
    argument. ``streamed``: the data are each seed's batches of these steps instead
    (:func:`chunk_data`), seed m's step i training on ``data[m, i]``, and ``order`` is None.
    On several devices ``spread`` (:func:`scae.train.parallel.spread`) splits the batches or
    the seeds over them.
    """

    def run(params, opt_state, data, order, offset, step0, key, context=None):
        extra = () if context is None else (context,)

        def step(carry, i):
            params, opt_state = carry
            if streamed:  # this seed's batches: the i-th is this step's
                batch = jax.tree.map(lambda a: a[i], data)
            else:
                idx = lax.dynamic_slice_in_dim(order, offset + i * batch_size, batch_size)
                batch = jax.tree.map(lambda a: a[idx], data)
            batch = parallel.shard_batch(batch)
            step_key = jax.random.fold_in(key, step0 + i)
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, step_key, *extra)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), \
                (loss, optax.tree.norm(grads))

        (params, opt_state), (losses, norms) = lax.scan(step, (params, opt_state),
                                                        jnp.arange(num_steps))
        return params, opt_state, losses, norms

    in_axes = (0, 0, 0, None, None, None, 0, 0) if streamed else (0, 0, None, 0, None, None, 0, 0)
    per_seed = over_seeds(run, in_axes, seed_batching)

    def run_seeds(params, opt_state, data, order, offset, step0, key, context=None):
        # over_seeds takes every argument its in_axes names, so the default is filled in here.
        args = (params, opt_state, data, order, offset, step0, key, context)
        seeds = key.shape[0]
        if parallel.spread(spread, seeds) == "seeds":
            specs = tuple("seeds" if a == 0 else None for a in in_axes)
            return parallel.over_devices(per_seed, specs, seeds)(*args)
        return per_seed(*args)

    return jax.jit(run_seeds, donate_argnums=(0, 1))


def batched_apply(fn: Callable[[Array], Array], x: Array, batch_size: int) -> Array:
    """``fn`` over ``x`` in batches (inside jit: a ``lax.map``), bounding memory on big sets."""
    n = x.shape[0]
    pad = -n % batch_size
    xp = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) if pad else x
    out = lax.map(fn, xp.reshape((-1, batch_size) + x.shape[1:]))
    return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:n], out)


def seed_map(fn: Callable[[Any, Array], Array], params, x: Array, batch_size: int,
             seed_batching: str = "auto") -> Array:
    """``fn(params_i, x)`` for each seed's parameters (``params`` has a leading seed axis),
    over the seeds as ``seed_batching`` says (:func:`over_seeds`) and in batches of
    ``batch_size`` images per seed, jitted: (seeds, len(x), ...)."""
    per_seed = lambda q, v: batched_apply(lambda b: fn(q, b), v, min(batch_size, v.shape[0]))
    return jax.jit(over_seeds(per_seed, (0, None), seed_batching))(params, x)


def seed_stretches(per_seed: Array, pool: Array | np.ndarray) -> tuple[Array, Array]:
    """The data of a vmapped phase whose seeds each see their own version of the same
    examples: ``per_seed`` (seeds, n, ...) laid one seed after another along the example axis,
    and ``pool`` (seeds, k) of indices into n offset to index each seed's own stretch, so every
    seed draws what it would draw from its own copy alone."""
    seeds, n = per_seed.shape[:2]
    return (per_seed.reshape((seeds * n,) + per_seed.shape[2:]),
            jnp.asarray(pool) + n * jnp.arange(seeds)[:, None])


def map_batches(fn: Callable[[Array], Array], x: np.ndarray | Array,
                batch_size: int) -> np.ndarray:
    """``fn`` (jitted by the caller) over ``x`` batch by batch on the host, the results
    gathered in host memory: device memory holds one batch whatever the size of ``x``.

    Every call of ``fn`` sees exactly ``batch_size`` images, the last batch (or a short ``x``)
    padded with zeros and its outputs sliced off, so ``fn`` compiles once and an image's result
    does not depend on how many images came with it: ``map_batches(fn, x[:1], b)[0]`` is
    ``map_batches(fn, x, b)[0]`` bit for bit. ``batch_size`` itself is part of the compiled
    program, and XLA may pick a different convolution algorithm for another batch size (on CPU
    it does below about 13 images), so results under different ``batch_size`` can differ in
    their last bits. An empty ``x`` gives an empty result of ``fn``'s trailing shape and dtype.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size < 1:
        raise InputError(f"batch_size {batch_size!r}: expected a positive whole number of images")
    n = x.shape[0]
    # The output's trailing shape and dtype without running fn: also what an empty x returns.
    like = jax.eval_shape(fn, jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype))
    # Filled in place, so that the host holds the result once rather than batches plus a copy.
    out = np.empty((n, *like.shape[1:]), like.dtype)
    for start in range(0, n, batch_size):
        xb = np.asarray(x[start:start + batch_size])
        m = xb.shape[0]
        if m < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - m, *xb.shape[1:]), xb.dtype)])
        out[start:start + m] = np.asarray(fn(jnp.asarray(xb)))[:m]
    return out


@jax.jit
def all_finite(tree) -> Array:
    """Whether every value of every array in ``tree`` is finite (no NaN, no inf)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# An evaluation hook: (state, epoch) -> (state, fields of the evaluation's record).
Evaluate = Callable[[dict, int], tuple[dict, dict]]


@dataclasses.dataclass
class Phase:
    """One resumable unit of training: what to train, on what, and how to checkpoint it."""

    name: str  # names the unit in the progress bar and in messages, e.g. "layer 2"
    ckpt_dir: Path
    plan: Plan
    loss_fn: LossFn
    make_tx: Callable[[float], optax.GradientTransformation]  # lr_scale -> optimiser
    params: Any  # initial parameters, with a leading seed axis
    data: Any  # a device pytree indexed by example, or a Source read on the host per chunk
    pool: Array  # (seeds, n): the example indices each epoch permutes, per seed
    order_key: Array  # (seeds, 2): each seed's batch order
    step_key: Array  # per-step randomness: noise, dropout, augmentation
    seeds: Sequence[int]  # the seeds whose models train in one program (one or more)
    seed_batching: str = "auto"  # how they share it: see resolve_seed_batching
    spread: str = "auto"  # how several devices share the phase: parallel.spread
    # Fixed inputs of the loss, not trained and not checkpointed (a leading seed axis when
    # ``seeds``): the loss is then loss_fn(params, batch, key, context).
    context: Any = None
    steps_per_call: int = 50
    checkpoint_every: int = 0  # also a checkpoint every N steps (0: none by steps)
    # A checkpoint at most every N seconds of the phase, plus one at its end and one when a
    # signal stops it; 0: a checkpoint at every evaluation. Selection on validation keeps the
    # best parameters in the state, so no save is owed at an evaluation.
    checkpoint_seconds: float = 0.0
    clock: Callable[[], float] = time.monotonic  # what checkpoint_seconds is measured with
    eval_epochs: frozenset[int] | None = None  # epochs (1-based) to evaluate after; None: all
    evaluate: Evaluate | None = None
    extra_state: dict = dataclasses.field(default_factory=dict)  # e.g. the best parameters
    on_eval: Callable[[dict], None] | None = None  # called with the record after each evaluation
    # (lr_scale, step) -> the learning rate at that step, recorded with each evaluation as the
    # rate of the last step before it; None: not recorded.
    learning_rate: Callable[[float, int], float] | None = None
    where: str = ""  # names the unit in messages (default: ``name``)
    lr_key: str = "learning_rate"  # the config key a divergence message tells to lower
    retries: int = 0  # divergence retries (halvings of the learning rate)
    log: Callable[[str], None] = print


@dataclasses.dataclass
class Result:
    """The final state (``params``, ``opt_state`` and the phase's extra state), the record
    (``evals``: one dict per evaluation; ``time_s``: training wall time) and the learning-rate
    scale the phase finished at.

    Each evaluation holds ``epoch``, ``step``, ``train_loss`` (the mean training loss since the
    previous evaluation, over the seeds too), ``time_s``, ``img_per_s`` (all seeds together),
    the fields of the phase's ``evaluate``, ``train_loss_per_seed`` (each seed's own mean,
    in the order of ``Phase.seeds``), ``max_grad_norm_per_seed`` (each seed's largest global
    gradient norm of a step since the previous evaluation) and, when the phase says how
    (``Phase.learning_rate``), ``learning_rate``. The record's ``run_max_grad_norm_per_seed``
    is that of the whole phase."""

    state: dict
    record: dict
    lr_scale: float


def train(phase: Phase) -> Result:
    """Runs (or resumes, or returns the finished) ``phase``; on divergence halves the
    learning rate and resumes from the last good checkpoint, up to ``phase.retries`` times."""
    scale_path = retry.scale_file(phase.ckpt_dir)
    return retry.halving_lr(lambda scale: _train(phase, scale), scale_path, phase.retries,
                            phase.log)


def write_finished(ckpt_dir: Path, step: int, state: dict, record: dict,
                   lr_scale: float) -> None:
    """Writes ``state`` (with its seed axis) as the last checkpoint of a finished phase in
    ``ckpt_dir``, with the learning-rate scale it finished at, as :func:`train` would leave
    them: a unit trained inside a larger phase becomes a phase of its own."""
    record = {"loss_sum": 0.0, "loss_steps": 0, "eval_time": 0.0, **record, "finished": True}
    ckpts = checkpoint.Checkpoints(ckpt_dir)
    try:
        ckpts.save(step, state, record)
    finally:
        ckpts.close()
    retry.write_scale(retry.scale_file(ckpt_dir), lr_scale)


def latest(ckpt_dir: Path) -> tuple[int, Any, dict] | None:
    """(step, raw saved state, record) of the last complete checkpoint in ``ckpt_dir``, or
    None when there is none."""
    if not parallel.agreed(Path(ckpt_dir).exists()):  # as process 0 sees it, in every process
        return None
    ckpts = checkpoint.Checkpoints(ckpt_dir)
    try:
        step = ckpts.latest_step()
        return None if step is None else (step, *ckpts.restore_raw(step))
    finally:
        ckpts.close()


def finished(ckpt_dir: Path, total_steps: int) -> tuple[Any, dict] | None:
    """(raw saved state, record) of a phase whose checkpoint holds all ``total_steps`` steps,
    or None: lets a caller skip building a phase's inputs when there is nothing to train."""
    saved = latest(ckpt_dir)
    return saved[1:] if saved is not None and saved[0] >= total_steps else None


def _train(phase: Phase, lr_scale: float) -> Result:
    if not phase.seeds:
        raise ValueError(f"{phase.name}: a phase trains one seed or more, got none")
    # From here a signal names this phase, even before its first check point.
    interrupt.progress(phase.name)
    try:
        return _train_phase(phase, lr_scale)
    finally:
        interrupt.progress(None)


def _train_phase(phase: Phase, lr_scale: float) -> Result:
    p = phase.plan
    tx = phase.make_tx(lr_scale)
    init = jax.vmap(tx.init)
    # Fresh buffers: the compiled steps donate params and opt_state, which extra state (the
    # best parameters so far) must not alias. One program makes both; eagerly, each array of
    # them was a program of its own.
    with accounting.part("phase set-up"):
        params, opt_state = jax.jit(lambda q: (jax.tree.map(jnp.copy, q), init(q)))(
            phase.params)
    state = {"params": params, "opt_state": opt_state, **phase.extra_state}
    record = {"evals": [], "time_s": 0.0, "loss_sum": 0.0, "loss_steps": 0, "eval_time": 0.0}
    ckpts = checkpoint.Checkpoints(phase.ckpt_dir)
    step = ckpts.latest_step() or 0
    if step:
        with accounting.part("checkpoints"):
            state, record = ckpts.restore(step, state)
        if step < p.total_steps:
            phase.log(f"{phase.name}: resuming at step {step}/{p.total_steps}")
    interrupt.progress(f"{phase.name}, step {step}/{p.total_steps}")
    record.setdefault("seed_loss_sums", [0.0] * len(phase.seeds))
    # Each seed's largest gradient norm since the last evaluation, and over the whole phase:
    # unknown (NaN, which max keeps) for the steps of a checkpoint saved without them.
    unknown = [math.nan if step else 0.0] * len(phase.seeds)
    record.setdefault("seed_max_grad_norms", unknown)
    record.setdefault("run_max_grad_norm_per_seed", unknown)
    state = parallel.replicate(state)
    streamed = isinstance(phase.data, Source)
    # Inputs still being computed (encoded layer inputs, frozen features: dispatched
    # asynchronously) finish here, so that the phase's time and img/s count training only.
    jax.block_until_ready((state, None if streamed else phase.data, phase.context))
    compiled: dict[int, Callable] = {}
    bar = tqdm(total=p.total_steps, initial=step, desc=phase.name, unit="step",
               dynamic_ncols=True, leave=True, disable=step >= p.total_steps)
    last_ckpt, last_save_t = step, phase.clock()
    try:
        order_epoch = None
        for epoch, offset, n in p.chunks(step, phase.steps_per_call):
            if epoch != order_epoch:  # one permutation per epoch, not per chunk
                with accounting.part("between chunks (batch order, finiteness checks)"):
                    order, order_epoch = _seed_orders(phase.order_key, phase.pool, epoch), epoch
                    if streamed:
                        order = np.asarray(order)
            data, chunk_order, at = phase.data, order, offset
            if streamed:
                with accounting.part("data loading and preprocessing"):
                    data = chunk_data(phase.data, order, offset, n, p.batch_size, phase.spread)
                chunk_order, at = None, 0
            args = (state["params"], state["opt_state"], data, chunk_order, at, step,
                    phase.step_key, phase.context)
            if n not in compiled:
                # Compiled ahead of the call, so that the records' times and img/s count the
                # steps alone and the command's accounting shows compilation apart.
                with accounting.part("compilation"):
                    compiled[n] = make_steps(phase.loss_fn, tx, p.batch_size, n,
                                             seed_batching=phase.seed_batching,
                                             spread=phase.spread,
                                             streamed=streamed).lower(*args).compile()
            t0 = time.perf_counter()
            with accounting.part("training steps"):
                params, opt_state, losses, norms = compiled[n](*args)
                losses, norms = np.asarray(losses), np.asarray(norms)
            state = dict(state, params=params, opt_state=opt_state)
            step += n
            bar.update(n)
            bar.set_postfix(loss=f"{losses.mean():.5f}")
            with accounting.part("between chunks (batch order, finiteness checks)"):
                finite = np.isfinite(losses).all() and bool(all_finite(state["params"]))
            if not finite:
                raise FloatingPointError(_divergence(phase, losses, epoch, step, n, last_ckpt))
            record["loss_sum"] += float(losses.mean(axis=0).sum())
            record["seed_loss_sums"] = [total + float(s) for total, s in
                                        zip(record["seed_loss_sums"], losses.sum(axis=1))]
            for field in ("seed_max_grad_norms", "run_max_grad_norm_per_seed"):
                record[field] = _running_max(record[field], norms)
            record["loss_steps"] += n
            dt = time.perf_counter() - t0
            record["time_s"] += dt
            record["eval_time"] += dt
            epoch_done = offset + n == p.steps_per_epoch
            evaluated = epoch_done and (phase.eval_epochs is None
                                        or epoch + 1 in phase.eval_epochs)
            if evaluated:
                entry = {"epoch": epoch + 1, "step": step,
                         "train_loss": record["loss_sum"] / record["loss_steps"],
                         "time_s": record["eval_time"],
                         "img_per_s": record["loss_steps"] * p.batch_size
                         * len(phase.seeds) / max(record["eval_time"], 1e-9),
                         "train_loss_per_seed": [total / record["loss_steps"]
                                                 for total in record["seed_loss_sums"]],
                         "max_grad_norm_per_seed": record["seed_max_grad_norms"]}
                if phase.learning_rate is not None:
                    entry["learning_rate"] = phase.learning_rate(lr_scale, step - 1)
                record["seed_loss_sums"] = [0.0] * len(phase.seeds)
                record["seed_max_grad_norms"] = [0.0] * len(phase.seeds)
                if phase.evaluate is not None:
                    with accounting.part("evaluation"):
                        state, fields = phase.evaluate(state, epoch + 1)
                    entry.update(fields)
                record["evals"].append(entry)
                record.update(loss_sum=0.0, loss_steps=0, eval_time=0.0)
            if _checkpoint_due(phase, step, last_ckpt, last_save_t, evaluated):
                record["finished"] = step >= p.total_steps
                with accounting.part("checkpoints"):
                    ckpts.save(step, state, record)
                last_ckpt, last_save_t = step, phase.clock()
                trim_heap()
            if evaluated and phase.on_eval is not None:
                with accounting.part("evaluation"):
                    phase.on_eval(record)
            interrupt.check(f"{phase.name}, step {step}/{p.total_steps}")
    finally:
        bar.close()
        ckpts.close()
        compiled.clear()
        with accounting.part("phase set-up"):
            release_freed_memory()
    return Result(state, record, lr_scale)


def _checkpoint_due(phase: Phase, step: int, last_ckpt: int, last_save_t: float,
                    evaluated: bool) -> bool:
    """Whether the state at ``step`` (a chunk just trained, its evaluation done) is saved: at
    the phase's end, when a signal is stopping the run (so a rerun resumes here), every
    ``checkpoint_every`` steps, and at evaluations every ``checkpoint_seconds`` (every one when
    that is 0). A kill loses at most that much training."""
    if step >= phase.plan.total_steps or interrupt.pending() is not None:
        return step > last_ckpt
    if phase.checkpoint_every and step - last_ckpt >= phase.checkpoint_every:
        return True
    if phase.checkpoint_seconds <= 0:
        return evaluated
    return phase.clock() - last_save_t >= phase.checkpoint_seconds


def release_freed_memory() -> bool:
    """Drops JAX's in-memory compiled programs and hands the C heap's free pages back to the
    system (:func:`trim_heap`); True when the pages were handed back.

    JAX keeps every program it compiled until its caches are cleared, and glibc keeps freed
    pages, so without this a job's resident memory would grow to the sum of its phases' peaks
    instead of their maximum. A program needed again is read back from the persistent
    compilation cache."""
    _drop_executables()
    return trim_heap()


def _drop_executables() -> None:
    """Drops JAX's in-memory compiled programs but keeps their traced and lowered forms: the
    small programs every phase runs again (the initialisers, batch order, checks, eager array
    operations) then skip tracing and lowering and only load their executable from the
    persistent cache. JAX has no public call for that (``jax.clear_caches`` drops the traces
    too), so it uses JAX internals (:func:`executable_caches`); where this JAX lacks them, all
    of its caches are cleared."""
    clears = executable_caches()
    if clears is None:
        jax.clear_caches()
        return
    for f in clears:
        f()


def executable_caches() -> tuple[Callable[[], Any], ...] | None:
    """The clear functions of JAX's caches of compiled executables (private names, the one
    place this package uses any; tests/test_driver_plan.py fails when a JAX release removes
    them), or None where they are missing."""
    try:
        from jax._src import pjit
        from jax._src.interpreters import pxla
        from jax._src.lib import _jax

        return (pxla.clear_in_memory_compilation_cache, pjit._pjit_lower.cache_clear,
                pjit._cpp_pjit_cache_fun_only.clear,
                pjit._cpp_pjit_cache_explicit_attributes.clear, _jax.PjitFunctionCache.clear_all)
    except (ImportError, AttributeError):
        return None


def trim_heap() -> bool:
    """glibc's ``malloc_trim``: the C heap's free pages back to the system, True when some
    were. Evaluations and checkpoints between training calls leave freed blocks that the next
    call's temporaries do not reuse, so without it the resident memory of a phase creeps up
    with each evaluation (docs/performance.md, memory). A no-op where the C library is not
    glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    return bool(_malloc_trim and _malloc_trim(0))


_malloc_trim = None


def _divergence(phase: Phase, losses: np.ndarray, epoch: int, step: int, n: int,
                last_ckpt: int) -> str:
    """The message of a non-finite loss or parameter: where, and what to do."""
    bad = np.argwhere(~np.isfinite(losses))
    where = phase.where or phase.name
    seed_i, i = bad[0] if len(bad) else (0, n - 1)
    if len(phase.seeds) > 1:
        where += f", seed {phase.seeds[seed_i]}"
    loss = losses[seed_i, i]
    return (f"{where}: the loss or parameters became non-finite (loss {loss}) in epoch "
            f"{epoch + 1} by step {step - n + i + 1}; the last good checkpoint (step "
            f"{last_ckpt}) is kept; lower config.{phase.lr_key} and rerun to resume from it")
