"""mobilenets: MobileNet V1 to V5 as published -- model zoo, training, detection/segmentation heads and
fast CPU deployment.

    >>> import mobilenets
    >>> model = mobilenets.create_model("mobilenet_v3_small", num_classes=10, in_chans=1)
    >>> mobilenets.profile(model, input_size=(1, 224, 224)).macs
"""
from . import heads  # noqa: F401  (register the task models)
from .archs import v1, v2, v3, v4, v5  # noqa: F401,I001  (register the zoo: run their @register_model decorators)
from .errors import UserError
from .profile import profile
from .registry import create_model, list_models
from .weights import load_weights

__all__ = ["create_model", "list_models", "load_weights", "profile", "UserError"]
__version__ = "0.1.0"
