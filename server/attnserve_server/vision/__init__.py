"""Image classification: decode (Pillow), preprocess (per the model's metadata), classify (ONNX Runtime)."""
