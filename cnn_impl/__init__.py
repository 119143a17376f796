"""Our CNN architectures for small images, beside the torchvision and timm CNNs the model registry
(bench/models.py) builds: CIFAR-style ResNets and ResNet-9 at any width. The ViT is vit_impl."""

from .cifar_resnet import CifarResNet
from .resnet9 import ResNet9

__all__ = ["CifarResNet", "ResNet9"]
