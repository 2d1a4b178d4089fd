"""Test helpers shipped with the library, so users can check their own layers the way we check ours."""

from .alloc import assert_step_allocates_nothing, step_allocations
from .check import ALL_CHECKS, check_layer
from .gradcheck import check_gradients, numerical_gradient
from .meta import meta_device
from .torch_ref import compare_with_torch

__all__ = ["ALL_CHECKS", "assert_step_allocates_nothing", "check_gradients", "check_layer",
           "compare_with_torch", "meta_device", "numerical_gradient", "step_allocations"]
