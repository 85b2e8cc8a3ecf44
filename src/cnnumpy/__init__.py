"""cnnumpy: convolutional neural networks in plain NumPy, with exact gradients.

    import numpy as np, cnnumpy as cn
    model = cn.SimpleCNN(input_shape=(1, 28, 28), num_classes=10)
    logits = model.forward(np.random.rand(8, 1, 28, 28).astype(np.float32))   # (8, 10)
    dx = model.backward(np.ones_like(logits) / 8)                               # (8, 1, 28, 28)
"""

from . import functional
from .gradcheck import GradientCheckError, gradient_check
from .layers import AvgPool2D, Conv2D, Flatten, Layer, Linear, MaxPool2D, Module, ReLU
from .models import Sequential, SimpleCNN
from .shapes import Field, conv_output_size, receptive_field, receptive_fields

__version__ = "0.1.0"

__all__ = [
    "AvgPool2D", "Conv2D", "Field", "Flatten", "GradientCheckError", "Layer", "Linear",
    "MaxPool2D", "Module", "ReLU", "Sequential", "SimpleCNN", "conv_output_size", "functional",
    "gradient_check", "receptive_field", "receptive_fields", "__version__",
]
