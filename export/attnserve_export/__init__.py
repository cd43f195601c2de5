"""attnserve-export: train transformer models in PyTorch and export them to an attnserve model repository."""

__version__ = "0.1.0"
