"""The callback protocol: Keras's hooks, which fit calls and schedulers and loggers implement."""

from __future__ import annotations

from typing import Any


class Callback:
    """Base class; ``self.model`` is set by ``fit`` before ``on_train_begin``."""

    model: Any = None

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None: ...
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None: ...
