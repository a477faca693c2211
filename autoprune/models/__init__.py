"""Models by name: the package's CIFAR models, torchvision classifiers and timm models.

``get_model("resnet56")`` builds the package's CIFAR ResNet-56; ``get_model("torchvision:resnet50")`` (or any
torchvision classifier name that is not a package name) builds the torchvision model without weights;
``get_model("timm:vit_tiny_patch16_224", img_size=32, patch_size=4)`` builds a timm model (``pretrained=False``; timm
is optional: ``pip install timm``).
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

import torch.nn as nn
import torchvision

from .._lineage import Lineage, set_lineage
from .cifar_resnet import CifarResNet, ShortcutA, resnet20, resnet32, resnet44, resnet56, resnet110
from .vgg import CifarVGG, vgg16_bn

__all__ = ["get_model", "available_models", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
           "vgg16_bn", "CifarResNet", "CifarVGG", "ShortcutA"]

_PACKAGE: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20, "resnet32": resnet32, "resnet44": resnet44, "resnet56": resnet56,
    "resnet110": resnet110, "vgg16_bn_cifar": vgg16_bn,
}


def _timm(name: str, **kwargs: Any) -> nn.Module:
    try:
        import timm  # lazy: timm is optional (the dev extra installs it) and slow to import
    except ModuleNotFoundError:
        raise ValueError(f"model 'timm:{name}' needs timm: pip install timm") from None
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown timm model {name!r}.{hint}")
    kwargs.setdefault("pretrained", False)
    return timm.create_model(name, **kwargs)


def available_models() -> list[str]:
    """Package model names (torchvision names are accepted too, as ``torchvision:NAME``)."""
    return sorted(_PACKAGE)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name: a package CIFAR model, or ``torchvision:NAME`` / a bare torchvision name."""
    model = _build(name, **kwargs)
    # Plain data naming how to rebuild the model: autoprune.save stores it instead of pickled code.
    return set_lineage(model, Lineage(arch={"name": name, "kwargs": dict(kwargs)}))


def _build(name: str, **kwargs: Any) -> nn.Module:
    if name in _PACKAGE:
        return _PACKAGE[name](**kwargs)
    if name.startswith("timm:"):
        return _timm(name.split(":", 1)[1], **kwargs)
    tv_name = name.split(":", 1)[1] if name.startswith("torchvision:") else name
    tv_names = torchvision.models.list_models(module=torchvision.models)
    if tv_name not in tv_names:
        close = difflib.get_close_matches(tv_name, list(_PACKAGE) + tv_names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}: not a package model ({', '.join(available_models())}) "
                         f"nor a torchvision classifier.{hint}")
    kwargs.setdefault("weights", None)
    if tv_name in ("googlenet", "inception_v3") and kwargs.get("weights") is None:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", False)
    return torchvision.models.get_model(tv_name, **kwargs)
