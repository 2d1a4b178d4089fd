"""Fixtures of the optimizer tests against torch.optim."""

import pytest
import torch


@pytest.fixture
def float64_default_dtype():
    """torch keeps NAdam's mu_product as a tensor of the default dtype: float64, like our scalars."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
