"""The Inception family of CNNs, rebuilt as full PyTorch models with ablation knobs.

>>> from inception_models import create_model, list_models
>>> model = create_model("inception_v3", num_classes=10, norm="bn")
"""

from inception_models.base import InceptionNet, InceptionOutputs
from inception_models.registry import ModelInfo, create_model, list_models, model_info, register_model

# Importing the model modules registers their builders.
from inception_models import googlenet, bn_inception, inception_v3  # noqa: E402,F401
from inception_models import inception_v4, inception_resnet, xception, small_inception  # noqa: E402,F401

__all__ = [
    "InceptionNet",
    "InceptionOutputs",
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
