"""Models: timm encoder, task heads, and the multi-task model that combines them."""

from .encoder import Encoder, encoder_names
from .factory import build_model
from .heads import HEADS, ASPPHead, ClassifierHead
from .multitask import MultiTaskModel

__all__ = [
    "ASPPHead",
    "ClassifierHead",
    "Encoder",
    "HEADS",
    "MultiTaskModel",
    "build_model",
    "encoder_names",
]
