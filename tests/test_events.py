"""Training writes TensorBoard event files into its workdir as it goes (config.tensorboard),
read back here with tensorboardX's protobuf: the tags each run promises."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import scae
from scae.train import optim

QUIET = lambda _: None  # noqa: E731


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file in ``folder`` (TFRecord framing: length,
    its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_pretraining_and_finetuning_write_event_files_as_they_train(tmp_path):
    x = scae.load_data("mnist", "train")
    images, labels = x.images[:200], x.labels[:200]
    scae.pretrain(images, preset="smoke", pretrain__layers=2, workdir=tmp_path / "p", log=QUIET)
    got = scalars(tmp_path / "p" / "pretrain" / "events")
    for k in (1, 2):
        for tag in ("train_mse", "val_mse", "img_per_s"):
            assert got[f"layer{k}/{tag}"], f"layer{k}/{tag}"
    assert all(v > 0 for _, v in got["layer1/val_mse"])
    # The rate of the last step before each evaluation, on the config's schedule.
    config = scae.make_config("mnist", "smoke", pretrain__layers=2)
    total = got["layer1/learning_rate"][-1][0]
    assert [v for _, v in got["layer1/learning_rate"]] == pytest.approx(
        [optim.rate(config.pretrain, total, 1.0, step - 1)
         for step, _ in got["layer1/learning_rate"]], rel=1e-6)
    scae.finetune(images[:100], labels[:100], images[100:], labels[100:], arm="random",
                  seeds=(0, 1), preset="smoke", workdir=tmp_path / "f", log=QUIET)
    (cell,) = (tmp_path / "f" / "events").iterdir()
    got = scalars(cell)
    assert len(got["val_error/seed0"]) == len(got["val_error/seed1"]) >= 1
    assert got["img_per_s"]
    assert all(v > 0 for _, v in got["learning_rate"])


def test_config_tensorboard_false_writes_none(tmp_path):
    images = scae.load_data("mnist", "train").images[:100]
    scae.pretrain(images, preset="smoke", pretrain__layers=1, tensorboard=False,
                  workdir=tmp_path, log=QUIET)
    assert (tmp_path / "pretrain" / "metrics.jsonl").exists()
    assert not (tmp_path / "pretrain" / "events").exists()
