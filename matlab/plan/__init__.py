"""The plan of a slice: which tensors of the base it keeps and how each is cut (`SlicePlan`,
its `tensor_spec` the one source of cuts for the slicer, the elastic core, adapters and
formats), the GGUF format of each of its tensors, and its exact parameter counts and bytes."""

from matlab.plan.slice_plan import Ranges, SlicePlan, TensorSpec

__all__ = ["Ranges", "SlicePlan", "TensorSpec"]
