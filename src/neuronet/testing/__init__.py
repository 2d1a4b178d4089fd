"""Test helpers shipped with the library, so users can check their own layers the way we check ours."""

from .alloc import step_allocations
from .gradcheck import check_gradients, numerical_gradient
from .torch_ref import compare_with_torch

__all__ = ["check_gradients", "compare_with_torch", "numerical_gradient", "step_allocations"]
