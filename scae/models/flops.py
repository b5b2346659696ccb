"""Analytic FLOP counts of one training step (multiply-adds count as 2 FLOPs).

A convolution's forward pass costs 2*N*Ho*Wo*k*k*Cin*Cout. Training needs the forward pass,
the gradient with respect to the kernel (the same cost) and, except for the first layer whose
input is data, the gradient with respect to the input (the same cost again).
"""

from __future__ import annotations


def conv(n: int, out_hw: int, k: int, c_in: int, c_out: int) -> int:
    """Forward FLOPs of a valid square convolution producing ``out_hw`` x ``out_hw`` maps."""
    return 2 * n * out_hw * out_hw * k * k * c_in * c_out


def cnn_step(model_cfg, image_shape: tuple[int, int, int], batch: int) -> int:
    """FLOPs of one training step of the CNN on ``batch`` images."""
    h, c, total = image_shape[0], image_shape[2], 0
    for i, (f, k, p) in enumerate(zip(model_cfg.features, model_cfg.kernel_sizes,
                                      model_cfg.pool_sizes)):
        ho = h - k + 1
        fwd = conv(batch, ho, k, c, f)
        total += fwd * (2 if i == 0 else 3)
        h, c = -(-ho // p), f
    n_in = h * h * c
    for a, b in ((n_in, model_cfg.fc_width), (model_cfg.fc_width, model_cfg.num_classes)):
        total += 3 * 2 * batch * a * b
    return total


def cae_step(in_hw: int, c_in: int, k: int, maps: int, batch: int) -> int:
    """FLOPs of one training step of a tied CAE layer: encoder forward and kernel gradient,
    decoder forward, input gradient and kernel gradient (five convolutions of equal cost)."""
    return 5 * conv(batch, in_hw - k + 1, k, c_in, maps)
