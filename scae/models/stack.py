"""The CAE stack as a value: the :class:`Stack` module (encode to any depth, reconstruct,
filter projection, transfer into the CNN, save/load) and the layer specs a config describes.

How a stack is trained is :mod:`scae.study.pretrain`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from scae import atomic
from scae.data import preprocess
from scae.errors import InputError, WriteError, as_write_error
from scae.models import modules as models
from scae.models import ops
from scae.train import driver

Array = jax.Array
EVAL_BATCH = 256  # images per evaluation batch: bounds the activations held at once
TRANSFORM_FILE = "transform.npz"  # a saved stack's input transform statistics
# OSError numbers that say the path itself is wrong (a file on the way, a name too long, a
# link loop), not the disk: a bad input, not a failed write.
_BAD_PATH_ERRNOS = frozenset({errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST,
                              errno.EISDIR})


def layer_specs(config: ml_collections.ConfigDict, in_channels: int) -> list[models.CAESpec]:
    """The CAE of each pretrained layer, from the config's ``model`` and ``pretrain``."""
    m, p = config.model, config.pretrain
    specs, c = [], in_channels
    for k in range(p.layers):
        specs.append(models.CAESpec(
            in_channels=c, maps=m.features[k], kernel=m.kernel_sizes[k],
            sparsity_pool=p.sparsity_pool[k], activation=m.activation, decoder=p.decoder,
            noise=p.noise, noise_level=p.noise_level, init=m.init,
            conv_impl=m.get("conv_impl", "auto"),
            compute_dtype=m.get("compute_dtype", "float32"),
            decoder_output=p.get("decoder_output", "activation")))
        c = m.features[k]
    return specs


class Stack(nnx.Module):
    """A stack of CAE layers with the CNN's max-pooling (with subsampling) between them.

    ``layers[k-1]`` is CAE layer k (:class:`scae.models.modules.CAE`); ``pools[k-1]`` the
    pooling after it. Encode images to any depth, reconstruct them, build the CNN with the
    stack's filters (:meth:`to_cnn`), save and load it.

    ``normalizer`` is the input transform the stack was trained behind (scale,
    standardisation, GCN/ZCA statistics: :class:`scae.data.preprocess.Normalizer`). With one,
    :meth:`encode` and :meth:`reconstruct` take raw images (uint8, or floats in [0, 1]) and
    apply it; without one (a stack as the study trains it, on inputs it prepared), they take
    float32 network inputs. :meth:`prepare` is that step on its own. The traceable
    :meth:`features` and :meth:`decode_to_image` always take network inputs.
    """

    def __init__(self, specs: Sequence[models.CAESpec], pools: Sequence[int], *,
                 rngs: nnx.Rngs):
        if len(pools) < len(specs):
            raise InputError(f"stack: {len(specs)} layers need {len(specs)} pool sizes, got "
                             f"{len(pools)}")
        self.pools = tuple(int(p) for p in pools)
        self.layers = nnx.List([models.CAE(s, rngs=rngs) for s in specs])
        # How raw pixels become the stack's inputs, when known (see the class docstring).
        self.normalizer: preprocess.Normalizer | None = None

    @property
    def specs(self) -> list[models.CAESpec]:
        return [layer.spec for layer in self.layers]

    @property
    def depth(self) -> int:
        return len(self.layers)

    def _check_depth(self, depth: int | None) -> int:
        depth = self.depth if depth is None else depth
        if not 0 <= depth <= self.depth:
            raise InputError(f"depth {depth}: the stack has layers 1..{self.depth}")
        return depth

    def features(self, x: Array, depth: int | None = None, pooled: bool = True) -> Array:
        """``x`` through layers 1..depth, each encoded and max-pooled (the last one only when
        ``pooled``): the input of CAE layer depth+1, or the CNN's conv features. Traceable."""
        depth = self._check_depth(depth)
        for k, (layer, pool) in enumerate(zip(self.layers[:depth], self.pools), start=1):
            x = layer.encode_pooled(x, pool) if pooled or k < depth else layer.encode(x)
        return x

    def decode_to_image(self, x: Array, depth: int | None = None) -> Array:
        """Reconstructs images ``x`` through CAE layer ``depth`` and back down the stack.

        The top CAE reconstructs its input; each layer below then unpools it at the switches
        of its own forward pass and decodes it with its decoder, back to image space.
        """
        depth = self._check_depth(depth)
        hiddens, h = [], x
        for layer, pool in zip(self.layers[:depth - 1], self.pools):
            hid = layer.encode(h)
            hiddens.append(hid)
            h = ops.max_pool(hid, pool)
        y = self.layers[depth - 1].reconstruct(h)
        for layer, pool, hid in reversed(list(zip(self.layers, self.pools, hiddens))):
            y = layer.decode(ops.unpool(y, hid, pool))
        return y

    def encode(self, images: np.ndarray | Array, depth: int | None = None, pooled: bool = True,
               batch_size: int = EVAL_BATCH) -> np.ndarray:
        """:meth:`features` of ``images`` computed batch by batch into host memory, so any
        number of images fits: float32 (N, H', W', maps of layer ``depth``)."""
        depth = self._check_depth(depth)
        x = self.prepare(images)
        graphdef, params = models.split(self)
        fn = jax.jit(lambda q, x: models.merge(graphdef, q).features(x, depth, pooled))
        return driver.map_batches(lambda x: fn(params, x), x, batch_size)

    def reconstruct(self, images: np.ndarray | Array, depth: int | None = None,
                    batch_size: int = EVAL_BATCH) -> np.ndarray:
        """:meth:`decode_to_image` of ``images``, batch by batch into host memory: in the
        stack's input space (its transform applied, when it has one)."""
        depth = self._check_depth(depth)
        x = self.prepare(images)
        graphdef, params = models.split(self)
        fn = jax.jit(lambda q, x: models.merge(graphdef, q).decode_to_image(x, depth))
        return driver.map_batches(lambda x: fn(params, x), x, batch_size)

    def prepare(self, images: np.ndarray | Array) -> np.ndarray | Array:
        """The network inputs of ``images`` (N, H, W, C), or (N, H, W) for a grey stack: raw
        pixels through :attr:`normalizer`, or float inputs as they are for a stack without
        one. Refuses with one :class:`InputError` line what the stack cannot take: a wrong rank
        or channel count, images smaller than its kernels, values that cannot be raw pixels."""
        c = self.layers[0].spec.in_channels if self.depth else None
        x = images if isinstance(images, jax.Array) else np.asarray(images)
        x = preprocess.as_batch(x, c)
        self._check_size(x.shape)
        if self.normalizer is not None:
            return self.normalizer.raw(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise InputError(f"images of dtype {x.dtype}: this stack carries no input "
                             f"transform, so it takes float network inputs (set "
                             f"stack.normalizer to give it raw pixels)")
        return x

    def _check_size(self, shape: Sequence[int]) -> None:
        h, w = int(shape[1]), int(shape[2])
        for k, (spec, pool) in enumerate(zip(self.specs, self.pools), start=1):
            if h < spec.kernel or w < spec.kernel:
                raise InputError(
                    f"images of {shape[1]}x{shape[2]}: too small for the stack, whose layer "
                    f"{k} kernel of {spec.kernel}x{spec.kernel} meets a {h}x{w} input "
                    f"(kernels {tuple(s.kernel for s in self.specs)}, pools {self.pools})")
            h, w = -(-(h - spec.kernel + 1) // pool), -(-(w - spec.kernel + 1) // pool)

    def project_filters(self, k: int) -> np.ndarray:
        """Pixel-space pictures of layer ``k``'s filters, (maps, H, W, image channels).

        A deeper filter lives on the pooled maps of the layer below, which no one can read. It
        is projected down linearly: each pooled unit is spread over its pooling window (nearest
        upsampling) and passed through the lower layer's tied decoder, down to the image. This
        ignores the activations (near-linear around 0), so it shows what a filter prefers, not
        an exact preimage.
        """
        # _check_depth admits 0 (encode to depth 0 is the input), which has no filters; and an
        # unchecked k past the top would silently slice to the top layer's filters.
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= self.depth:
            raise InputError(f"project_filters({k!r}): expected a layer number in 1..{self.depth}"
                             if self.depth else
                             f"project_filters({k!r}): the stack has no layers")
        k = int(k)
        return np.asarray(_project(tuple(layer.w[...] for layer in self.layers[:k]),
                                   self.pools[:k - 1]))

    def to_cnn(self, spec: models.CNNSpec, *, rngs: nnx.Rngs,
               log: Callable[[str], None] = print) -> models.CNN:
        """A fresh :class:`scae.models.modules.CNN` of ``spec`` whose conv k takes CAE layer k's
        encoder kernel and bias (model surgery on the state, as big_vision's
        ``merge_params``). A shape mismatch is an :class:`InputError`; the map and every
        parameter that keeps its fresh initialisation are logged."""
        cnn = models.CNN(spec, rngs=rngs)
        transfer(self, cnn, log)
        return cnn

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the stack to the folder ``path`` (orbax parameters, ``stack.json`` with the
        layer specs and the input transform's fields, and the transform's statistics in
        ``transform.npz``), replacing an earlier saved stack there whole: a kill leaves the old
        stack or the new one.

        Anything else at ``path`` (a file, a workdir, a folder neither empty nor a saved stack)
        is refused with an :class:`InputError`, as is a ``path`` under a file; a write the file
        system refuses (read-only, full, no permission) is a :class:`~scae.errors.WriteError`
        naming ``path``.
        """
        path = Path(path).absolute()
        _check_save_target(path)
        tmp = path.with_name(f".{path.name}.saving")
        # Where the stack being replaced goes for a moment. A kill between the two renames
        # leaves it there, and no stack at path: the next save finds it, and discards it last.
        old = path.with_name(f".{path.name}.old")
        moved = False
        try:
            _discard(tmp)  # what a killed save left
            tmp.mkdir(parents=True)
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(tmp / "params", jax.device_get(models.params_of(self)))
            norm = self.normalizer
            fields, arrays = (None, {}) if norm is None else norm.state()
            if arrays:  # the transform's statistics, bit for bit (ZCA: half a D x D matrix)
                with (tmp / TRANSFORM_FILE).open("wb") as f:
                    np.savez_compressed(f, **arrays)
            atomic.write_text(tmp / "stack.json", json.dumps(
                {"pools": list(self.pools), "specs": [dataclasses.asdict(s) for s in self.specs],
                 "normalizer": fields}, indent=1))
            if path.exists() or path.is_symlink():
                _discard(old)  # what a save killed after its last rename left
                os.replace(path, old)
                moved = True
            os.replace(tmp, path)
        except Exception as e:
            with contextlib.suppress(OSError):
                _discard(tmp)
            if moved and not (path.exists() or path.is_symlink()):
                with contextlib.suppress(OSError):
                    os.replace(old, path)  # the old stack back where it was
            # The user asked for path: the temporary folder beside it means nothing to them.
            error = as_write_error(e)
            if error is not None:
                raise WriteError(path, error.cause) from e
            if isinstance(e, OSError) and e.errno in _BAD_PATH_ERRNOS:
                raise InputError(f"{path}: cannot save a stack there "
                                 f"({os.strerror(e.errno).lower()})") from None
            raise
        with contextlib.suppress(OSError):  # the new stack is in place; the old one is garbage
            _discard(old)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Stack:
        """A stack written by :meth:`save` (a workdir's stack: :func:`scae.load_stack`)."""
        path = Path(path)
        meta = path / "stack.json"
        if not meta.exists():
            what = ("a workdir: scae.load_stack reads its finished stack"
                    if (path / "config.json").exists() else "not a saved stack (no stack.json)")
            raise InputError(f"{path}: {what}")
        try:
            info = json.loads(meta.read_text())
            specs = [models.CAESpec(**s) for s in info["specs"]]
            pools = info["pools"]
            normalizer = _load_transform(info.get("normalizer"), path / TRANSFORM_FILE)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise InputError(f"{meta}: unreadable ({e})") from None
        stack = cls(specs, pools, rngs=nnx.Rngs(0))
        stack.normalizer = normalizer
        like = models.params_of(stack)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
        try:
            with ocp.StandardCheckpointer() as ckptr:
                params = ckptr.restore(path.absolute() / "params", abstract)
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds for a damaged folder
            raise InputError(f"{path / 'params'}: cannot read the saved parameters "
                             f"({type(e).__name__}); save the stack again") from None
        nnx.update(stack, params)
        return stack


def _check_save_target(path: Path) -> None:
    """An :class:`InputError` unless :meth:`Stack.save` may write the folder ``path``: a new
    name in a folder (or under folders still to be made), an empty folder or a saved stack to
    replace. The replaced folder is deleted, so nothing else may be there: a file, a workdir,
    anyone's folder."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            what = "a dangling symbolic link" if not path.exists() else "a file"
        elif (path / "stack.json").is_file() and (path / "params").is_dir():
            return
        elif _is_empty(path):
            return  # nothing to lose: a folder made to save into (tempfile.mkdtemp, mkdir)
        elif (path / "config.json").exists():
            what = "a workdir (it has config.json)"
        else:
            what = "a folder without stack.json and params/"
        other = path.with_name(f"{path.name}-stack")
        raise InputError(f"{path}: is {what}, not a saved stack (stack.json and params/), and "
                         f"saving would replace it; save to a new path"
                         + ("" if other.exists() else f", e.g. {other}"))
    # The nearest existing folder above must be a folder: mkdir under a file says ENOTDIR
    # about a temporary name the user never chose.
    above = path.parent
    while not above.exists():
        if above.is_symlink():
            raise InputError(f"{path}: {above} is a dangling symbolic link; save to another path")
        above = above.parent
    if not above.is_dir():
        raise InputError(f"{path}: lies under {above}, which is a file, not a folder; save to "
                         f"another path")


def _is_empty(folder: Path) -> bool:
    """Whether ``folder`` holds nothing; one that cannot be listed counts as holding something."""
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _discard(path: Path) -> None:
    """Deletes ``path``, a folder, a file or a symbolic link (never what a link points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _load_transform(fields: dict | None, arrays_file: Path) -> preprocess.Normalizer | None:
    """The input transform saved with a stack; ``mean`` and ``std`` lists in the fields are
    how stacks saved before ``transform.npz`` kept them."""
    if fields is None:
        return None
    arrays = {k: np.asarray(fields[k], np.float32) for k in ("mean", "std")
              if fields.get(k) is not None}
    if arrays_file.exists():
        with np.load(arrays_file) as f:
            arrays.update({k: f[k] for k in f.files})
    return preprocess.Normalizer.from_state(fields, arrays)


def transfer(stack: Stack, cnn: models.CNN, log: Callable[[str], None] = print) -> None:
    """Copies CAE layer k's ``w`` and ``b`` into ``cnn``'s conv k, in place. The decoder
    biases ``c`` (and an untied ``w_dec``) have no counterpart in the CNN."""
    loaded = []
    for k, layer in enumerate(stack.layers, start=1):
        name = f"conv{k}"
        if name not in cnn.spec.conv_names:
            raise InputError(f"transfer: the CNN has no layer {name} for CAE layer {k}")
        conv = getattr(cnn, name)
        for p in ("w", "b"):
            src, dst = getattr(layer, p), getattr(conv, p)
            if src[...].shape != dst[...].shape:
                raise InputError(f"transfer: CAE layer {k} {p} has shape "
                                 f"{tuple(src[...].shape)}, CNN {name}.{p} expects "
                                 f"{tuple(dst[...].shape)}")
            dst[...] = jnp.asarray(src[...], dst[...].dtype)
            loaded.append(f"layer{k}.{p}->{name}.{p}")
    fresh = [".".join(str(k) for k in path) for path, _ in
             nnx.to_flat_state(nnx.state(cnn, nnx.Param))
             if f"{path[0]}.{path[-1]}" not in {m.split("->")[1] for m in loaded}]
    log(f"transfer: {', '.join(loaded) or 'nothing'}; fresh initialisation kept for "
        f"{', '.join(fresh) or 'nothing'}")


@functools.partial(jax.jit, static_argnums=1)
def _project(kernels: tuple[Array, ...], pools: tuple[int, ...]) -> Array:
    """:meth:`Stack.project_filters` of the last of ``kernels``: one program, where op by op
    each convolution's patch copies would compile as programs of their own."""
    f = jnp.moveaxis(kernels[-1], 3, 0)  # each filter as a (kh, kw, c_in) map
    for j in reversed(range(len(kernels) - 1)):
        p = pools[j]
        f = ops.upsample_nearest(f, p, (f.shape[1] * p, f.shape[2] * p))
        f = ops.conv_full_tied(f, kernels[j])
    return f
