"""Patches as one gather (``ops._gather_windows``) against kh*kw concatenated slices (the
earlier ``ops.im2col`` / ``ops.strided_im2col``): the compile time and speed of each training
step (batch 128, 10 steps per call) and of the evaluation forward pass (3 vmapped seeds x 3000
MNIST images, as ``finetuning.error_fn`` runs it), without a compilation cache, each case in
its own process, both variants one after the other, ROUNDS rounds.

    python results/bench_zen3/patch_gather.py ROUNDS       # all cases
    python results/bench_zen3/patch_gather.py ROUNDS bfloat16  # the bf16 steps
    python results/bench_zen3/patch_gather.py - VARIANT CASE  # one case (what each process runs)
"""
import json
import subprocess
import sys
import time

CASES = ["cnn mnist 0", "cae mnist 1", "cae mnist 2", "cae mnist 3", "cnn cifar10 0",
         "cae cifar10 2", "eval mnist 0"]
# The bf16 steps also build transposed patches (``ops.im2col_t``).
BF16_CASES = ["cnn mnist 0 bfloat16", "cae mnist 2 bfloat16"]


def slices_im2col(x, kh, kw):
    import jax.numpy as jnp
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return jnp.concatenate([x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)],
                           axis=-1)


def slices_strided_im2col(x, kh, kw, p, a, b):
    import jax.numpy as jnp
    hp, wp = (x.shape[1] - kh + 1) // p, (x.shape[2] - kw + 1) // p
    cols = [x[:, a + i:a + i + p * (hp - 1) + 1:p, b + j:b + j + p * (wp - 1) + 1:p, :]
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1).reshape(-1, kh * kw * x.shape[-1])


def slices_im2col_t(x, kh, kw):
    import jax.numpy as jnp
    n, h, w, c = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    xt = x.transpose(3, 0, 1, 2)
    p = jnp.concatenate([xt[:, :, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)],
                        axis=0)
    return p.reshape(kh * kw * c, n * ho * wo)


def one(variant, case):
    import jax
    import jax.numpy as jnp
    import numpy as np
    jax.config.update("jax_enable_compilation_cache", False)
    from flax import nnx
    from pipelines import benchmark as bm
    from scae import config as cfglib
    from scae.train import driver
    from scae.study import finetune as finetuning
    from scae.models import modules as models
    from scae.models import ops
    from scae.train import optim
    if variant == "slices":
        ops.im2col, ops.strided_im2col = slices_im2col, slices_strided_im2col
        ops.im2col_t = slices_im2col_t
    workload, arch, layer, *dtype = case.split()
    dtype = dtype[0] if dtype else "float32"
    if workload == "eval":
        S, N = 3, 3000
        spec = models.CNNSpec.from_config(cfglib.base_config(arch).model, bm.IMAGE_SHAPES[arch])
        nets = [models.CNN(spec, rngs=nnx.Rngs(i)) for i in range(S)]
        graphdef, _ = models.split(nets[0])
        params = jax.tree.map(lambda *q: jnp.stack(q), *[models.params_of(m) for m in nets])
        x = jax.random.uniform(jax.random.PRNGKey(0), (N,) + bm.IMAGE_SHAPES[arch])
        y = jnp.asarray(np.random.RandomState(1).randint(0, 10, N))
        f = jax.jit(jax.vmap(finetuning.error_fn(graphdef, S), in_axes=(0, None, None)))
        t = time.perf_counter()
        c = f.lower(params, x, y).compile()
        ct = time.perf_counter() - t
        run, images = (lambda: c(params, x, y).block_until_ready()), S * N
    else:
        batch, steps = 128, 10
        loss_fn, params, data, _ = bm._workload(workload, arch, int(layer), batch, "auto",
                                                dtype)
        tx = optim.make(cfglib.base_config(arch).pretrain, 1000)
        order = jnp.arange(steps * batch) % (4 * batch)
        key = jax.random.PRNGKey(1)
        state = [params, tx.init(params)]
        t = time.perf_counter()
        c = driver.make_steps(loss_fn, tx, batch, steps).lower(*state, data, order, 0, 0,
                                                               key).compile()
        ct = time.perf_counter() - t

        def run():
            state[0], state[1], losses = c(*state, data, order, 0, 0, key)
            losses.block_until_ready()
        images = batch * steps
    times = []
    for _ in range(5):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    print(json.dumps({"variant": variant, "case": case, "dtype": dtype, "compile_s": round(ct, 2),
                      "img_s": round(images / float(np.median(times[1:])), 1)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "-":
        one(sys.argv[2], sys.argv[3])
    else:
        cases = BF16_CASES if sys.argv[2:] == ["bfloat16"] else CASES
        for r in range(int(sys.argv[1])):
            for case in cases:
                for variant in ("slices", "gather"):
                    out = subprocess.run([sys.executable, __file__, "-", variant, case],
                                         capture_output=True, text=True).stdout.strip()
                    print(f"round {r + 1} {out}", flush=True)
