"""Property-based checks of the readers: any array an npz or IDX file can hold is either read
back exactly or refused with an InputError, never a crash."""

import gzip
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scae import data
from scae.errors import InputError

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

images = hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4)))


@SETTINGS
@given(train=images, labels=hnp.arrays(np.int64, st.integers(0, 6), elements=st.integers(-3, 12)))
def test_npz_reads_back_or_refuses(tmp_path, train, labels):
    path = tmp_path / "d.npz"
    np.savez(path, train_images=train, train_labels=labels, test_images=train,
             test_labels=labels)
    try:
        split = data.load(f"npz:{path}", "train")
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert len(labels) == len(train) and labels.min() >= 0
    np.testing.assert_array_equal(split.images[..., 0], train)
    np.testing.assert_array_equal(split.labels, labels)


@SETTINGS
@given(payload=st.binary(max_size=64), magic=st.sampled_from([2051, 2049, 1234]))
def test_idx_garbage_is_refused_cleanly(tmp_path, payload, magic):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(struct.pack(">I", magic) + payload)
    try:
        data.load(f"idx:{tmp_path}", "train")
    except InputError as e:
        assert "\n" not in str(e)
