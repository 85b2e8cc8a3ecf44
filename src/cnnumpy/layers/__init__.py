"""Layers: thin stateful wrappers around the kernels of `cnnumpy.functional`, one family a
module (`conv`, `pooling`, `normalization`, `activation`, `linear`, `merge`), on the base
classes of `module`.

A layer owns its parameters (`W`, `b`; BatchNorm's `gamma`, `beta`), their gradients (`dW`,
`db`, ...), its buffers (non-trained state: BatchNorm's running statistics, Dropout's random
stream) and one `cache` from its last forward pass, and nothing else. Every layer has

    out = layer(x)               # checks the input, calls the kernel, keeps the cache
    out = layer(x, keep_cache=False)   # inference: no cache, less work and memory
    dx = layer.backward(dout)    # exact gradient of the scalar `dout` came from; sets dW, db
    layer.backward(dout, input_grad=False)  # sets dW, db only; returns None (a first layer)

Walking a layer or a model (the contract optimizers and checkpoints rely on):

    module.parameters()  -> {"conv1.W": array, "conv1.b": array, ...}   live arrays
    module.gradients()   -> the same keys -> the gradients of the last backward
    module.buffers()     -> {"bn1.running_mean": array, ...}
    module.state_dict()  -> parameters and buffers; load_state_dict(arrays) copies them in

Names are dotted paths (`layer1.0.conv1.W`); a lone layer's names are just `W` and `b`.
"""

from .module import Layer, Module
from .conv import Conv2D
from .pooling import AdaptiveAvgPool2D, AvgPool2D, GlobalAvgPool2D, MaxPool2D
from .normalization import BatchNorm1D, BatchNorm2D
from .activation import Dropout, ReLU
from .linear import Flatten, Linear
from .merge import Add
from .padding import Identity, ZeroPad2D

__all__ = ["AdaptiveAvgPool2D", "Add", "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "Conv2D",
           "Dropout", "Flatten", "GlobalAvgPool2D", "Identity", "Layer", "Linear", "MaxPool2D", "Module",
           "ReLU", "ZeroPad2D"]
