"""Property-based checks of the readers: every generated file is either valid, and then read
back exactly, or invalid in a known way, and then refused with one InputError line naming it.
Both kinds are generated on purpose, so neither branch can pass vacuously."""

import gzip
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scae.data import sources as data
from scae.errors import InputError

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

NPZ_DAMAGE = (None, "label_count", "negative_label", "image_rank", "float_pixels", "drop_array")


@st.composite
def npz_sets(draw):
    """(arrays, damage): a valid npz data set, or one with the named damage."""
    n = draw(st.integers(1, 6))
    shape = (n, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    images = draw(hnp.arrays(np.uint8, shape))
    labels = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 9)))
    damage = draw(st.sampled_from(NPZ_DAMAGE))
    arrays = {"train_images": images, "train_labels": labels, "test_images": images,
              "test_labels": labels}
    if damage == "label_count":
        arrays["train_labels"] = np.concatenate([labels, labels[:1]])
    elif damage == "negative_label":
        arrays["train_labels"] = labels - 1 - labels.max()
    elif damage == "image_rank":
        arrays["train_images"] = images.reshape(n, -1)
    elif damage == "float_pixels":
        arrays["train_images"] = images + 0.5
    elif damage == "drop_array":
        del arrays["train_labels"]
    return arrays, damage


@SETTINGS
@given(case=npz_sets())
def test_npz_reads_back_exactly_or_refuses(tmp_path, case):
    arrays, damage = case
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    if damage is not None:
        try:
            data.load(f"npz:{path}", "train")
        except InputError as e:
            assert str(path) in str(e) and "\n" not in str(e)
        else:
            raise AssertionError(f"accepted an npz with damage {damage}")
        return
    split = data.load(f"npz:{path}", "train")
    np.testing.assert_array_equal(split.images[..., 0], arrays["train_images"])
    np.testing.assert_array_equal(split.labels, arrays["train_labels"])


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) \
        + array.tobytes()


IDX_DAMAGE = (None, "truncate", "extra_bytes", "magic", "garbage")


@SETTINGS
@given(images=hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 4),
                                             st.integers(1, 4))),
       compress=st.booleans(), damage=st.sampled_from(IDX_DAMAGE),
       garbage=st.binary(max_size=64), data_draw=st.data())
def test_idx_reads_back_exactly_or_refuses(tmp_path, images, compress, damage, garbage,
                                           data_draw):
    labels = data_draw.draw(hnp.arrays(np.uint8, (len(images),), elements=st.integers(0, 9)))
    files = {"images-idx3": _idx(images, 2051), "labels-idx1": _idx(labels, 2049)}
    raw = files["images-idx3"]
    if damage == "truncate":
        raw = raw[:-1]
    elif damage == "extra_bytes":
        raw = raw + b"\0"
    elif damage == "magic":
        raw = struct.pack(">I", 2049) + raw[4:]
    elif damage == "garbage":
        raw = struct.pack(">I", 2051) + garbage[:11]  # too short for a header and its data
    files["images-idx3"] = raw
    for stem in ("train", "t10k"):
        for kind, content in files.items():
            name = tmp_path / f"{stem}-{kind}-ubyte"
            for old in (name, name.with_name(name.name + ".gz")):
                old.unlink(missing_ok=True)
            if compress:
                name.with_name(name.name + ".gz").write_bytes(gzip.compress(content))
            else:
                name.write_bytes(content)
    if damage is not None:
        try:
            data.load(f"idx:{tmp_path}", "train")
        except InputError as e:
            assert "train-images-idx3-ubyte" in str(e) and "\n" not in str(e)
        else:
            raise AssertionError(f"accepted an IDX file with damage {damage}")
        return
    split = data.load(f"idx:{tmp_path}", "train")
    np.testing.assert_array_equal(split.images[..., 0], images)
    np.testing.assert_array_equal(split.labels, labels)
