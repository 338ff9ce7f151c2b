"""Task heads on zoo backbones: SSDLite and YOLO detection, LR-ASPP and DeepLabV3 segmentation.

Importing this package registers the task models (``mobilenets.list_models(task="detect" | "segment")``).
"""
from . import deeplabv3, lraspp, ssdlite, yolo  # noqa: F401  (run the @register_model decorators)
from .deeplabv3 import DeepLabV3
from .lraspp import LRASPP
from .ssdlite import SSDLite
from .yolo import YOLO

__all__ = ["DeepLabV3", "LRASPP", "SSDLite", "YOLO"]
