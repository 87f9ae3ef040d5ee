"""Where the models run: devices and CPU offload."""
from .offload import ModelOffload, SequentialOffload, accelerator_device

__all__ = ["ModelOffload", "SequentialOffload", "accelerator_device"]
