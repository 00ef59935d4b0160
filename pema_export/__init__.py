"""pema-export: prune an on-device text model's vocabulary to an app's corpus and export a verified ONNX bundle."""

__version__ = "0.1.0"
