"""Stacking the CAE filters into the CNN: an explicit map, shape checks and a log of what
keeps its fresh initialisation (the approach of big_vision's ``merge_params``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp

from scae.errors import InputError

def mapping(num_layers: int) -> dict[tuple[str, str], tuple[int, str]]:
    """``(cnn layer, name) -> (stack layer k, cae name)``: CAE k's encoder becomes conv k.

    The decoder biases ``c`` (and an untied ``w_dec``) have no counterpart in the CNN.
    """
    return {(f"conv{k}", n): (k, n) for k in range(1, num_layers + 1) for n in ("w", "b")}


def load_stack(cnn_params: dict, stack: Sequence[dict],
               log: Callable[[str], None] = print) -> dict:
    """``cnn_params`` with conv k's kernel and bias replaced by CAE layer k's.

    Raises :class:`InputError` on a shape mismatch. Logs every CNN parameter that keeps its
    fresh initialisation.
    """
    out = {layer: dict(sub) for layer, sub in cnn_params.items()}
    loaded = set()
    for (layer, name), (k, cae_name) in mapping(len(stack)).items():
        if layer not in out:
            raise InputError(f"transfer: the CNN has no layer {layer} for CAE layer {k}")
        src, dst = stack[k - 1][cae_name], out[layer][name]
        if src.shape != dst.shape:
            raise InputError(f"transfer: CAE layer {k} {cae_name} has shape {tuple(src.shape)}, "
                             f"CNN {layer}.{name} expects {tuple(dst.shape)}")
        out[layer][name] = jnp.asarray(src, dst.dtype)
        loaded.add((layer, name))
    fresh = [f"{layer}.{name}" for layer, sub in out.items() for name in sub
             if (layer, name) not in loaded]
    log(f"transfer: loaded {len(loaded)} tensors from the stack; fresh initialisation kept for "
        f"{', '.join(fresh) or 'nothing'}")
    return out
