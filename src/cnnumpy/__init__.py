"""cnnumpy: convolutional neural networks in plain NumPy, with exact gradients.

    import numpy as np, cnnumpy as cn
    model = cn.SimpleCNN(input_shape=(1, 28, 28), num_classes=10)
    logits = model.forward(np.random.rand(8, 1, 28, 28).astype(np.float32))   # (8, 10)
    dx = model.backward(np.ones_like(logits) / 8)                               # (8, 1, 28, 28)
"""

from . import distributed, functional, trace, workspace
from .gradcheck import GradientCheckError, gradient_check
from .layers import (AdaptiveAvgPool2D, Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D,
                     Dropout, Flatten, GlobalAvgPool2D, Layer, Linear, MaxPool2D, Module, ReLU)
from . import models, summary
from .models import Residual, Sequential, SimpleCNN
from .shapes import Field, conv_output_size, receptive_field, receptive_fields
from .losses import CrossEntropyLoss, softmax_cross_entropy, softmax_cross_entropy_backward
from .optim import SGD, Adam, AdamW, Optimizer
from .schedules import Constant, OneCycle, Schedule, StepDecay, WarmupCosine, build_schedule
from .registry import build_model, register_model
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .train import History, evaluate, fit, predict_proba
from . import insight
from .parallel import BatchParallel
from . import interop

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "BatchParallel", "Checkpoint", "Constant", "CrossEntropyLoss", "History", "OneCycle",
    "Optimizer", "SGD", "Schedule", "StepDecay", "WarmupCosine", "build_model", "build_schedule",
    "evaluate", "fit", "load_checkpoint", "predict_proba", "register_model", "save_checkpoint",
    "softmax_cross_entropy", "softmax_cross_entropy_backward",
    "AdaptiveAvgPool2D", "Add", "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv2D", "Dropout",
    "Field", "Flatten", "GlobalAvgPool2D", "GradientCheckError", "Layer", "Linear",
    "MaxPool2D", "Module", "ReLU", "Residual", "Sequential", "SimpleCNN", "conv_output_size", "distributed",
    "functional", "insight", "interop", "models", "summary", "trace", "workspace",
    "gradient_check", "receptive_field", "receptive_fields", "__version__",
]
