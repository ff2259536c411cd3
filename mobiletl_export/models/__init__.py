"""Model zoo: MobileNetV2, MobileNetV3 (large/small), EfficientNet-Lite0, described by `spec` records."""

from .spec import IRB, ConvBN, Head, ModelStructure, SqueezeExcite
from .zoo import MODEL_NAMES, WeightsError, create_model, imagenet_weights_path, load_weights

__all__ = ["IRB", "ConvBN", "Head", "ModelStructure", "SqueezeExcite", "MODEL_NAMES", "WeightsError",
           "create_model", "imagenet_weights_path", "load_weights"]
