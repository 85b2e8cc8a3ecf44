"""Models: containers (`Sequential`, `Residual`), the lesson's `SimpleCNN`, and the zoo of
classic architectures with torchvision's structure and module names (`alexnet`, `vgg11` ...
`vgg19_bn`, `resnet18`, `resnet34`, `resnet50`) and He et al.'s CIFAR ResNets (`resnet20`,
`resnet32`, `resnet56`).

    model = cnnumpy.models.resnet18(num_classes=1000)
    net = cnnumpy.models.resnet20(input_shape=(1, 28, 28), num_classes=10)
"""

from .containers import Residual, Sequential
from .simple import SimpleCNN
from .alexnet import AlexNet, alexnet
from .vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from .fold import Identity, fold_batchnorm
from .resnet import CifarResNet, ResNet, resnet18, resnet20, resnet32, resnet34, resnet50, resnet56

__all__ = ["AlexNet", "CifarResNet", "ResNet", "Residual", "Sequential", "SimpleCNN", "VGG",
           "Identity", "alexnet", "fold_batchnorm", "resnet18", "resnet20", "resnet32", "resnet34", "resnet50", "resnet56",
           "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
