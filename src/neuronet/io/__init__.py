"""Model files and exporters: ``.nnet`` (native), ONNX, GGUF and PyTorch state dicts."""

from .gguf import export_gguf, load_gguf
from .nnet import NnetFormatError, load, save
from .onnx import export_onnx
from .torch_interop import to_torch_state_dict

__all__ = ["NnetFormatError", "export_gguf", "export_onnx", "load", "load_gguf", "save",
           "to_torch_state_dict"]
