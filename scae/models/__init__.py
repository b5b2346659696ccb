"""Models: the custom-VJP array ops (patch matmuls, Winograd), the flax NNX modules (one CAE
layer, the paper's CNN), their analytic FLOP counts, and the :class:`Stack` value (encode,
reconstruct, transfer into the CNN, filter projection, save/load).

Models know nothing of configs files, workdirs or training loops; they are trained by
:mod:`scae.train` as split parameters under a jitted step.
"""
