"""attnserve-server: serves a model repository of ONNX transformer models over gRPC."""

__version__ = "0.1.0"
