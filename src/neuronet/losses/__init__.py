"""Losses: ``loss.forward(pred, target) -> float``, then ``loss.backward() -> dL/dpred``.

Each reduces like PyTorch's ``reduction="mean"`` and its gradient matches PyTorch's. Classes are on
the last axis: logits (..., C) with integer targets (...) or class probabilities (..., C), the mean
taken over every leading position. Losses of several inputs take a tuple as ``pred`` and their
``backward()`` returns a tuple. A loss computes on the backend and dtype of its prediction (NumPy or
torch) and keeps its buffers in its workspace, so a steady-state step allocates nothing sizeable.

One module per family, as in ``layers/``: ``base`` (the protocol and the LOSSES registry), ``pointwise``,
``classification``, ``ranking``.
"""

from .base import LOSSES, Loss
from .classification import CrossEntropyLoss, NLLLoss
from .pointwise import BCELoss, BCEWithLogitsLoss, HuberLoss, KLDivLoss, L1Loss, MSELoss
from .ranking import MarginRankingLoss, MultiMarginLoss, TripletMarginLoss

__all__ = ["LOSSES", "Loss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "HuberLoss", "KLDivLoss",
           "L1Loss", "MSELoss", "MarginRankingLoss", "MultiMarginLoss", "NLLLoss", "TripletMarginLoss"]
