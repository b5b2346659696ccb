"""The CAE layer-2 step with its hidden maps in Winograd's tile layout
(scae.models.winograd.tied_sparse_pass) against the three steps it replaces (encoder conv, NHWC
re-layout, pool_sparsify, decoder conv), compiled side by side in one process and timed in
alternation (ROUNDS rounds of 3 calls of 5 steps, batch 128). Prints the medians and each
round's ratio, so that the machine's drift hits both alike.

    PYTHONPATH=. python results/bench_zen3/tied_tile_ab.py ROUNDS
"""
import statistics
import sys

from pipelines import benchmark as bm
from scae.models import ops
from scae.models import winograd


def three_steps(x, w, b, act):
    h = act(winograd.conv_valid(x, w) + b)
    return winograd.conv_transpose(ops.pool_sparsify(h, 2), w)


def compiled(arch, steps, batch=128):
    fn, args, _ = bm.compile_step("cae", arch, 2, batch, steps)
    return fn, args


rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
steps, batch = 5, 128
tiles = winograd.tied_sparse_pass
for arch in ("mnist", "cifar10"):
    winograd.tied_sparse_pass = three_steps
    variants = {"three steps": compiled(arch, steps)}
    winograd.tied_sparse_pass = tiles
    variants["tile layout"] = compiled(arch, steps)
    rates = bm.alternate(variants, steps * batch, rounds)
    a, b = rates["three steps"], rates["tile layout"]
    ratios = [y / x for x, y in zip(a, b)]
    print(f"{arch:8s} cae 2  three steps {statistics.median(a):6.1f} img/s  tile layout "
          f"{statistics.median(b):6.1f} img/s  x{statistics.median(ratios):.3f} (rounds: "
          + " ".join(f"{r:.2f}" for r in ratios) + ")", flush=True)
