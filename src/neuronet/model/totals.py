"""The running means of an epoch: the loss (per output too) and the metric accumulators, by log key."""

from __future__ import annotations

import numpy as np

from .data_adapter import DataList


class Totals:
    """Sample-weighted epoch means of the loss and the metrics' results.

    ``metric_fns`` maps a log key to a metric factory, or to ``(output index, factory)`` for a model of
    several outputs (its predictions and targets are lists). ``state()``/``load_state()`` give the
    accumulated numbers as float vectors that add up over parts of the data (ranks, a resumed epoch).
    """

    def __init__(self, metric_fns: dict, ops, loss_keys: tuple[str, ...] = ("loss",)):
        self.ops = ops
        self.loss_sums = dict.fromkeys(loss_keys, 0.0)
        self.loss_count = 0
        self.metrics = {}
        for name, spec in metric_fns.items():
            index, make = spec if isinstance(spec, tuple) else (None, spec)
            self.metrics[name] = (index, make())

    def add_loss(self, loss: float, n: int, parts=()) -> None:
        """The batch's mean ``loss`` over ``n`` samples; ``parts``: each output's (the other loss keys)."""
        self.loss_count += n
        for key, value in zip(self.loss_sums, (loss, *parts), strict=False):
            self.loss_sums[key] += value * n

    def add_metrics(self, pred, target) -> None:
        to_numpy = self.ops.to_numpy
        targets = target.arrays if isinstance(target, DataList) else target
        for index, metric in self.metrics.values():
            p, t = (pred, target) if index is None else (pred[index], targets[index])
            metric.update(to_numpy(p), np.asarray(to_numpy(t)))

    def means(self) -> dict:
        n = max(self.loss_count, 1)
        return {**{key: total / n for key, total in self.loss_sums.items()},
                **{name: metric.result() for name, (_, metric) in self.metrics.items()}}

    def state(self) -> dict[str, list[float]]:
        return {"loss": [*self.loss_sums.values(), self.loss_count],
                **{name: metric.state().tolist() for name, (_, metric) in self.metrics.items()}}

    def load_state(self, state: dict) -> None:
        *sums, count = state["loss"]
        self.loss_sums = dict(zip(self.loss_sums, (float(v) for v in sums), strict=True))
        self.loss_count = int(count)
        for name, (_, metric) in self.metrics.items():
            metric.load_state(state[name])
