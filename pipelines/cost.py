"""What a study costs before it runs: each phase's training work in images and FLOPs, and its
time at the step rates a benchmark record measured, on one device or several.

  python -m pipelines.cost --config=configs/mnist.py:paper
  python -m pipelines.cost --config=configs/cifar10.py:paper \\
      --rates=results/bench_h100/benchmark_fp32.jsonl --devices=8
  python -m pipelines.cost --config=configs/cifar10_sweep.py \\
      --rates=results/bench_h100/benchmark_fp32.jsonl

Prints a Markdown table, one row per phase (a CAE layer of the stacks, a fine-tuning cell of
seeds; for a sweep config, every point's stacks and arms and the full-label schedules, as
pipelines.sweep trains them), and the study's total. ``--rates`` is a
``pipelines.benchmark --all`` record (the committed ones are under results/bench_*); the
time counts the training steps alone (scae.study.cost). Writes nothing. The README's
``<!-- scae:cost -->`` block (the paper presets and the CIFAR-10 sweep on every committed
benchmark record) is rewritten by ``pipelines.publish``.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from pipelines import common
from scae.errors import InputError
from scae.study import cost

_RATES = flags.DEFINE_string("rates", None, "A pipelines.benchmark --all record (JSON lines) "
                             "whose step rates time the phases.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Devices the seeds of each phase spread over.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", None, "Images in the data source's training "
                                   "split (known for mnist and cifar10).")


def phase_table(phases: list[cost.PhaseCost], measured: dict | None, devices: int) -> str:
    """The phases as a Markdown table, with their time where ``measured`` rates are given."""
    head = "| phase | seeds | images per seed (steps' worth) | PFLOP |"
    rule = "| --- | ---: | ---: | ---: |"
    if measured is not None:
        head, rule = head + f" time on {devices} device(s) |", rule + " ---: |"
    rows = [head, rule]
    for ph in phases:
        row = f"| {ph.name} | {ph.seeds} | {ph.images:,} | {ph.flops / 1e15:.3f} |"
        if measured is not None:
            row += f" {cost.duration(cost.seconds([ph], measured, devices))} |"
        rows.append(row)
    total = f"| **study** | | | **{sum(p.flops for p in phases) / 1e15:.2f}** |"
    if measured is not None:
        total += f" **{cost.duration(cost.seconds(phases, measured, devices))}** |"
    return "\n".join(rows + [total])


def main(config, workdir) -> None:
    if config is None:
        raise InputError("--config: required, e.g. --config=configs/mnist.py:paper")
    if _DEVICES.value < 1:
        raise InputError(f"--devices: expected >= 1, got {_DEVICES.value}")
    if config.dataset not in cost.TRAIN_SIZES and _TRAIN_SIZE.value is None:
        raise InputError(f"--train_size: required for data set {config.dataset!r}")
    phases = cost.study(config, _TRAIN_SIZE.value)
    measured = None
    if _RATES.value:
        measured = cost.rates_of(Path(_RATES.value), config.dataset)
        missing = sorted({(p.workload, p.layer) for p in phases} - set(measured))
        if missing:
            raise InputError(f"{_RATES.value}: no {config.dataset} rate for "
                             + ", ".join(f"{w} layer {k}" if k else w for w, k in missing))
    print(phase_table(phases, measured, _DEVICES.value))


if __name__ == "__main__":
    common.run(main, needs_config=False, needs_workdir=False)
