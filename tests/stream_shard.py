"""Pretrains a small CAE layer from images streamed off disk, the batch spread over the devices
(one seed) and the seeds spread over them (three seeds), and saves the parameters and every
index the process's stream was asked to read: run by tests/test_stream.py in one process and
in each of two processes of one run (jax.distributed).

  python tests/stream_shard.py IMAGES.npy OUT_DIR WORKDIR
"""

import json
import sys
from pathlib import Path

import numpy as np

# This checkout, not an installed copy of the project: the script runs as a file, so its own
# folder (tests/) heads sys.path, and an editable install may point at another checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import two_layer_config  # noqa: E402

from scae.data import stream  # noqa: E402
from scae.data.preprocess import Normalizer  # noqa: E402
from scae.train import parallel  # noqa: E402

CASES = {"batch": [0], "seeds": [0, 1, 2]}  # spread -> the seeds trained together


class RecordingStream(stream.ImageStream):
    """An :class:`~scae.data.stream.ImageStream` that keeps the indices of every read."""

    def __init__(self, path):
        super().__init__(path)
        self.reads: list[list[int]] = []

    def read(self, indices):
        self.reads.append(np.asarray(indices).reshape(-1).tolist())
        return super().read(indices)


def main(images: str, out: str, workdir: str) -> None:
    parallel.initialize_distributed()  # when the environment names a multi-process run
    import jax

    from scae.models import modules as models
    from scae.study import pretrain

    me = jax.process_index()
    normalizer = Normalizer("unit")
    val = normalizer(np.load(images)[:64])
    for spread, seeds in CASES.items():
        config = two_layer_config(epochs=(2,), steps_per_call=3)
        config.pretrain.layers = 1
        config.model.features = (4,)
        config.compare.spread = spread
        source = RecordingStream(images)
        stacks = pretrain.pretrain_seeds(config, stream.PretrainStream(source, normalizer), val,
                                         Path(workdir) / spread, seeds, log=lambda _: None)
        params = {f"s{i}/{'/'.join(map(str, path))}": np.asarray(leaf)
                  for i, s in zip(seeds, stacks)
                  for path, leaf in jax.tree_util.tree_leaves_with_path(models.params_of(s))}
        np.savez(Path(out) / f"params_{spread}_p{me}.npz", **params)
        (Path(out) / f"reads_{spread}_p{me}.json").write_text(json.dumps(source.reads))
    parallel.finish()


if __name__ == "__main__":
    main(*sys.argv[1:])
