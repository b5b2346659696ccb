"""A prototype, not used by the library: conv 2 of the MNIST CNN with its 2 x 2 max-pooling
(12 x 12 x 100 inputs, 5 x 5 x 100 x 150 kernel) by Winograd's F(2x2, 5x5) against
``ops.conv_pool``, forward only: the largest difference of the values and the time per BATCH
images (7 interleaved rounds). Each 2 x 2 output tile is one pooling window, so the pooled value
is the maximum of the tile's four outputs. The transforms are the Toom-Cook matrices at the
points 0, 1, -1, 2, -2 and infinity (B^T is that of F(4, 3); G and A^T from the points).
"batched" multiplies the 36 transformed (images x 16 tiles, 100) x (100, 150) pairs as one
batched dot, "36 dots" one dot each.

    python results/bench_zen3/winograd_conv2.py [BATCH]
"""
import sys, time, numpy as np, jax, jax.numpy as jnp
from jax import lax
from scae.models import ops
BT = np.array([[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],[0,4,0,-5,0,1]], np.float32)
AT = np.array([[1,1,1,1,1,0],[0,1,-1,2,-2,1]], np.float32)
pts=[0,1,-1,2,-2]
G = np.zeros((6,5), np.float64)
for j,p in enumerate(pts):
    f=np.prod([p-q for l,q in enumerate(pts) if l!=j])
    G[j]=[p**k/f for k in range(5)]
G[5,4]=1; G=G.astype(np.float32)

def wino_pool(x, w, mode="batched"):
    # x (N,H,W,C) valid 5x5 conv -> (N,H-4,W-4,O), pooled 2x2 -> (N,(H-4)/2,(W-4)/2,O)
    n,h,wd,c = x.shape; o = w.shape[-1]
    th, tw = (h-4)//2, (wd-4)//2
    U = jnp.einsum('xk,yl,klco->xyco', G, G, w).reshape(36, c, o)
    # stage 1 over rows u: T[xi][v] = sum_u BT[xi,u] x[:, u::2 rows]
    rows = [x[:, u:u+2*th-1:2, :, :] for u in range(6)]  # (N,th,W,C)
    T = [sum(float(BT[a,u])*rows[u] for u in range(6) if BT[a,u]) for a in range(6)]
    V = []
    for a in range(6):
        cols = [T[a][:, :, v:v+2*tw-1:2, :] for v in range(6)]
        for b in range(6):
            V.append(sum(float(BT[b,v])*cols[v] for v in range(6) if BT[b,v]))
    V = jnp.stack(V).reshape(36, n*th*tw, c)
    if mode == "batched":
        M = lax.dot_general(V, U, (((2,),(1,)),((0,),(0,))))
        Ms = [M[k] for k in range(36)]
    else:
        Ms = [V[k] @ U[k] for k in range(36)]
    Ms = [m.reshape(n, th, tw, o) for m in Ms]
    outs = []
    for i in range(2):
        for j in range(2):
            outs.append(sum(float(AT[i,a]*AT[j,b])*Ms[a*6+b] for a in range(6) for b in range(6) if AT[i,a]*AT[j,b]))
    return jnp.maximum(jnp.maximum(outs[0], outs[1]), jnp.maximum(outs[2], outs[3]))

key = jax.random.PRNGKey(0)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 128
x = jnp.tanh(jax.random.normal(key, (B,12,12,100)))
w = jax.random.normal(jax.random.PRNGKey(1), (5,5,100,150)) * (1/50)
ref = ops.conv_pool(x, w, 2)

fns = {"conv_pool": jax.jit(lambda x,w: ops.conv_pool(x,w,2)),
       "wino batched": jax.jit(lambda x,w: wino_pool(x,w,"batched")),
       "wino 36 dots": jax.jit(lambda x,w: wino_pool(x,w,"split"))}
for k,f in fns.items():
    out = f(x,w)
    print(k, "max abs diff vs conv_pool", float(jnp.abs(out-ref).max()), "max |ref|", float(jnp.abs(ref).max()), flush=True)
ts = {k: [] for k in fns}
for r in range(7):
    for k,f in fns.items():
        t=time.perf_counter(); f(x,w).block_until_ready(); ts[k].append(time.perf_counter()-t)
for k,v in ts.items():
    print(f"{k:14s} median {1000*np.median(v):.1f} ms per {B} images  {[round(1000*t,1) for t in v]}")
