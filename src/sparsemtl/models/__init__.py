"""Models: timm encoder, task heads, and the multi-task model that combines them."""

from .complexity import analytic_conv_macs, count_macs, count_parameters
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
    "analytic_conv_macs",
    "build_model",
    "count_macs",
    "count_parameters",
    "encoder_names",
]
