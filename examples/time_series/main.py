"""Forecast GOOG's next-day close with an LSTM and a GRU, against the naive "tomorrow = today" baseline.

    python examples/time_series/main.py               # 300 epochs each, about a minute
    python examples/time_series/main.py --epochs 5    # a quick smoke run

Data: $NEURONET_DATA/goog-stock/GOOG-year.csv (default <repo>/../shared/data): 252 daily closes,
2016-11-02 .. 2017-11-01. Each sample is a window of the last 10 closes; the target is the next close.
Windows are expressed relative to their last close (x - x_last, divided by the training set's std of
daily changes), so the models predict the change and the naive baseline is "change = 0". The first
80 % of days train, the last 20 % test (no shuffling across time).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import neuronet as nn

DATA = Path(os.environ.get("NEURONET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
WINDOW = 10


def windows(close: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (M, WINDOW, 1) scaled changes vs the last close, y (M, 1) scaled next change, last close (M,))."""
    idx = np.arange(WINDOW)[None, :] + np.arange(len(close) - WINDOW)[:, None]
    win, last = close[idx], close[idx[:, -1]]
    nxt = close[idx[:, -1] + 1]
    x = ((win - last[:, None]) / scale)[..., None].astype(np.float32)
    y = ((nxt - last) / scale)[:, None].astype(np.float32)
    return x, y, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=16)
    args = parser.parse_args()

    close = np.loadtxt(DATA / "goog-stock" / "GOOG-year.csv", delimiter=",", skiprows=1, usecols=4)
    split = int(0.8 * len(close))
    scale = float(np.std(np.diff(close[:split])))
    x, y, last = windows(close, scale)
    train = np.arange(len(x)) + WINDOW < split  # the target day lies in the training period
    x_tr, y_tr, x_te, y_te, last_te = x[train], y[train], x[~train], y[~train], last[~train]
    truth = last_te + y_te[:, 0] * scale
    rmse = lambda pred: float(np.sqrt(np.mean((pred - truth) ** 2)))  # noqa: E731
    mae = lambda pred: float(np.mean(np.abs(pred - truth)))  # noqa: E731
    print(f"{len(x_tr)} training windows, {len(x_te)} test windows; std of a daily change ${scale:.2f}")
    print(f"{'model':<10}{'test RMSE $':>12}{'test MAE $':>12}{'seconds':>9}")
    print(f"{'naive':<10}{rmse(last_te):>12.2f}{mae(last_te):>12.2f}{0:>9.1f}")
    for cell in (nn.LSTM, nn.GRU):
        nn.manual_seed(0)
        model = nn.Sequential(cell(1, args.hidden), nn.Dense(args.hidden, 1))
        model.compile(optimizer=nn.Adam(3e-3), loss=nn.MSELoss())
        start = time.perf_counter()
        model.fit(x_tr, y_tr, epochs=args.epochs, batch_size=32, verbose=0)
        seconds = time.perf_counter() - start
        pred = last_te + model.predict(x_te)[:, 0] * scale
        print(f"{cell.__name__:<10}{rmse(pred):>12.2f}{mae(pred):>12.2f}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
