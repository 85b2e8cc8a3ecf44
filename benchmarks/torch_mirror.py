"""A PyTorch module that computes what a cnnumpy model computes, with its weights: built by
walking the cnnumpy module tree (Conv2D -> nn.Conv2d, BatchNorm2D -> nn.BatchNorm2d, a
Residual -> a module adding its two paths, ...). For the benchmarks, which time both
frameworks on one architecture.

    torch_model = mirror(cnnumpy_model)          # same weights and buffers, float32
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import cnnumpy as cn


class _Residual(nn.Module):
    def __init__(self, main: nn.Sequential, shortcut: nn.Module | None, relu: bool):
        super().__init__()
        self.main, self.shortcut, self.relu = main, shortcut or nn.Identity(), relu

    def forward(self, x):
        out = self.main(x) + self.shortcut(x)
        return torch.relu(out) if self.relu else out


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _leaf(layer) -> nn.Module:
    if isinstance(layer, cn.Conv2D):
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, bias=layer.bias)
        with torch.no_grad():
            conv.weight.copy_(_tensor(layer.W))
            if layer.bias:
                conv.bias.copy_(_tensor(layer.b))
        return conv
    if isinstance(layer, (cn.BatchNorm2D, cn.BatchNorm1D)):
        kind = nn.BatchNorm2d if isinstance(layer, cn.BatchNorm2D) else nn.BatchNorm1d
        bn = kind(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                  affine=layer.affine)
        with torch.no_grad():
            if layer.affine:
                bn.weight.copy_(_tensor(layer.gamma))
                bn.bias.copy_(_tensor(layer.beta))
            bn.running_mean.copy_(_tensor(layer.running_mean))
            bn.running_var.copy_(_tensor(layer.running_var))
        return bn
    if isinstance(layer, cn.Linear):
        linear = nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            linear.weight.copy_(_tensor(layer.W))
            linear.bias.copy_(_tensor(layer.b))
        return linear
    if isinstance(layer, cn.MaxPool2D):
        return nn.MaxPool2d(layer.pool_size, layer.stride, layer.padding)
    if isinstance(layer, cn.AvgPool2D):
        return nn.AvgPool2d(layer.pool_size, layer.stride, layer.padding)
    if isinstance(layer, cn.AdaptiveAvgPool2D):
        return nn.AdaptiveAvgPool2d(layer.output_size)
    if isinstance(layer, cn.ReLU):
        return nn.ReLU()
    if isinstance(layer, cn.Flatten):
        return nn.Flatten()
    if isinstance(layer, cn.Dropout):
        return nn.Dropout(layer.p)
    if isinstance(layer, cn.ZeroPad2D):
        return nn.ZeroPad2d((layer.padding[1],) * 2 + (layer.padding[0],) * 2)
    raise TypeError(f"no PyTorch mirror for {type(layer).__name__}")


def mirror(module) -> nn.Module:
    """The PyTorch module of a cnnumpy module tree (see the module docstring)."""
    if isinstance(module, cn.Residual):
        main = nn.Sequential(*(mirror(child) for _, child in module.main_path))
        shortcut = None if module.downsample is None else mirror(module.downsample)
        return _Residual(main, shortcut, module.relu is not None)
    if isinstance(module, cn.Sequential):
        return nn.Sequential(*(mirror(child) for child in module.layers.values()))
    return _leaf(module)
