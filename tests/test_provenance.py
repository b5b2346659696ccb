"""Test splits identified by content, and the machine record."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scae import provenance
from scae.data import sources as data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def mnist_test() -> data.Split:
    return data.load("mnist", "test")


def test_embedded_mnist_is_the_exact_paper_test_set(mnist_test):
    got = provenance.identify("mnist", mnist_test.images, mnist_test.labels)
    assert (got.title, got.paper_key, got.exact) == ("MNIST", "mnist", True)
    assert "official MNIST test set" in got.note
    assert got.fingerprint in provenance.KNOWN_COPIES


@pytest.mark.skipif(not (SHARED / "mnist.npz").is_file(), reason="no ../shared/data/mnist.npz")
def test_development_copy_of_mnist_has_the_same_fingerprint(mnist_test):
    other = data.load(f"npz:{SHARED / 'mnist.npz'}", "test")
    assert provenance.fingerprint(other.images, other.labels) == \
        provenance.fingerprint(mnist_test.images, mnist_test.labels)
    got = provenance.identify(f"npz:{SHARED / 'mnist.npz'}", other.images, other.labels)
    assert (got.title, got.paper_key, got.exact) == ("MNIST", "mnist", True)


@pytest.mark.skipif(not (SHARED / "cifar10-jpeg.tar.gz").is_file(),
                    reason="no ../shared/data/cifar10-jpeg.tar.gz")
def test_cifar10_jpeg_copy_is_the_paper_test_set_but_not_exact():
    source = f"folder:{SHARED / 'cifar10-jpeg.tar.gz'}"
    test = data.load(source, "test")
    got = provenance.identify(source, test.images, test.labels)
    assert (got.title, got.paper_key, got.exact) == ("CIFAR-10 (JPEG copy)", "cifar10", False)
    assert "not exact" in got.note
    # The training images of the same classes are another set: no paper figures for them.
    train = data.load(source, "train")
    idx = np.random.default_rng(0).choice(len(train), 10000, replace=False)
    other = provenance.identify(source, train.images[idx], train.labels[idx])
    assert other.paper_key is None and other.title == source


def test_fingerprint_ignores_order_but_sees_every_pixel_and_label(mnist_test):
    x, y = mnist_test.images, mnist_test.labels
    ref = provenance.fingerprint(x, y)
    perm = np.random.default_rng(0).permutation(len(y))
    assert provenance.fingerprint(x[perm], y[perm]) == ref
    assert provenance.fingerprint(x[..., 0], y.astype(np.uint8)) == ref  # (N, H, W), uint8
    x2 = x.copy()
    x2[1234, 5, 6, 0] ^= 1
    assert provenance.fingerprint(x2, y) != ref
    y2 = y.copy()
    y2[[0, 1]] = y2[[1, 0]] if y2[0] != y2[1] else (y2[0] + 1) % 10
    assert provenance.fingerprint(x, y2) != ref


def test_other_data_sets_get_their_source_as_title_and_no_paper(mnist_test):
    inverted = 255 - mnist_test.images  # 28x28 grey digits, 10 classes, but not MNIST's test set
    got = provenance.identify("idx:/data/other", inverted, mnist_test.labels)
    assert (got.title, got.paper_key, got.exact) == ("idx:/data/other", None, False)
    assert "not a known test set" in got.note
    # MNIST itself, cut to its first 200 test images, is not the paper's test set either.
    cut = provenance.identify("mnist", mnist_test.images[:200], mnist_test.labels[:200])
    assert (cut.title, cut.paper_key) == ("MNIST (200 test images)", None)
    assert "data.test_size" in cut.note


def test_a_re_encoded_copy_is_recognised_but_not_verified(mnist_test):
    def jpeg(a: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(a[..., 0]).save(buf, "JPEG", quality=95)
        return np.asarray(Image.open(buf))[..., None]

    copy = np.stack([jpeg(a) for a in mnist_test.images])
    got = provenance.identify("npz:digits.npz", copy, mnist_test.labels)
    assert (got.paper_key, got.exact) == ("mnist", False)
    assert got.title == "MNIST (copy, not pixel-verified)"
    assert "npz:digits.npz" in got.note and "not verified" in got.note
    # The same pixels under shuffled labels are not the test set.
    shuffled = np.random.default_rng(1).permutation(mnist_test.labels)
    assert provenance.identify("npz:digits.npz", copy, shuffled).paper_key is None


def test_identity_in_records_and_legacy_records():
    ident = provenance.DataIdentity("CIFAR-10 (JPEG copy)", "cifar10", False, "a note", "ab")
    assert provenance.from_record({"dataset": "cifar10", **ident.to_record()}) == ident
    assert json.loads(json.dumps(ident.to_record())) == ident.to_record()
    legacy = provenance.from_record({"dataset": "mnist"})
    assert (legacy.title, legacy.paper_key) == ("MNIST", "mnist")
    assert "before test splits were identified" in legacy.note
    assert provenance.from_record({"dataset": "folder"}).paper_key is None


def test_machine_record(monkeypatch):
    m = provenance.machine(wall_time_s=537.26, command="python -m pipelines.compare")
    for key in ("cpu", "cpu_vector_flags", "cpu_cores", "devices", "jax", "jaxlib", "python"):
        assert key in m
    assert m["wall_time_s"] == 537.3 and m["devices"] and m["devices"][0].startswith("1 x ")
    json.dumps(m)
    line = provenance.describe_machine({"cpu": "Xeon X", "cpu_cores": 2,
                                        "cpu_vector_flags": ["avx2", "fma"], "jax": "0.9",
                                        "devices": ["1 x cpu"]})
    assert line == "Xeon X (2 cores; avx2 fma), jax 0.9 on 1 x cpu"


def test_inputs_carry_the_identity_of_their_test_split(tiny_npz_module):
    from scae import config
    from scae.data import inputs

    c = config.base_config("mnist").data  # a config named "mnist" ...
    c.source = f"npz:{tiny_npz_module}"  # ... run on 50 of MNIST's test digits
    c.validation_size = 50
    got = inputs.build(c, seed=0).identity
    assert (got.title, got.paper_key) == (c.source, None)


@pytest.mark.parametrize("flags, expected", [
    ("fpu avx avx2 fma", False),                       # AVX2 only (Zen 3)
    ("avx2 avx512f avx512_bf16", True),                # AVX-512 BF16 (Zen 4)
    ("avx2 avx512f amx_tile amx_bf16", True),          # AMX (Sapphire Rapids and later)
])
def test_cpu_has_bf16_reads_the_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(provenance, "_cpuinfo", lambda: f"model name\t: X\nflags\t\t: {flags}\n")
    assert provenance.cpu_has_bf16() is expected


def test_cpu_has_bf16_on_arm_and_without_cpuinfo(monkeypatch):
    monkeypatch.setattr(provenance, "_cpuinfo", lambda: "Features\t: fp asimd sve bf16 i8mm\n")
    assert provenance.cpu_has_bf16() is True
    monkeypatch.setattr(provenance, "_cpuinfo", lambda: None)
    assert provenance.cpu_has_bf16() is None
    assert provenance.cpu_model()  # platform's word instead


@pytest.mark.parametrize("dtype, has_bf16, warned", [
    ("bfloat16", False, True), ("bfloat16", True, False), ("bfloat16", None, False),
    ("float32", False, False),
])
def test_commands_warn_of_bf16_without_bf16_instructions(monkeypatch, capsys, dtype, has_bf16,
                                                        warned):
    from pipelines import common
    from scae import config as cfglib

    config = cfglib.base_config("mnist")
    config.model.compute_dtype = dtype
    monkeypatch.setattr(provenance, "cpu_has_bf16", lambda: has_bf16)
    common.warn_emulated_bf16(config)
    err = capsys.readouterr().err
    assert ("without bf16 instructions" in err) is warned
