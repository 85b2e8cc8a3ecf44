"""Pure array kernels: convolution, pooling, ReLU, flatten and linear, forward and backward.

Every kernel is a function of arrays and nothing else:

    out, cache = <op>_forward(x, ...)        # cache holds what backward needs
    dx, ... = <op>_backward(dout, cache)

The backward kernels return the exact derivatives of whatever scalar `dout` is the gradient
of; nothing is divided by the batch size here (the loss takes the batch mean, once).

Layout is NCHW, weights are (C_out, C_in, kH, kW), as in PyTorch. Kernels trust their callers:
shapes and dtypes are checked by the layers in `cnnumpy.layers`, whose docstrings hold the
formulas and `Shape:` blocks. Outputs keep the dtype of the inputs (float32 stays float32).

Memory layout. Inside, the image kernels work channels-last: a batch is held in memory as
(N, H, W, C), so that a pixel's channels are contiguous, the column matrix of a convolution is
a copy of contiguous runs and its matrix product writes the output in place, without
transposes. The 4-d arrays the kernels return are NCHW *views* of such memory: shape
(N, C, H, W) and NCHW indexing, only the strides differ (PyTorch calls this the
`channels_last` memory format). Passed from kernel to kernel, they need no conversion; a kernel
given an ordinary NCHW array reads it through a transposed view or converts it once.

Memory. Large arrays (outputs, masks, columns, gradients) come from `cnnumpy.workspace`,
which recycles the memory of earlier arrays that nothing references any more instead of
asking the operating system for new pages at every step.

One windowing pair serves convolution and pooling:
`windows` is a strided view of every kH x kW window of an image (NCHW or channels-last), and
`col2im` is its adjoint: it adds each window's gradient back onto the pixels the window was
read from (`col2im_by_offset` takes the window gradients one kernel offset at a time).

Modules, one family each: `windowing` (layout, padding, windows and their adjoint, shared by
convolution and pooling), `conv`, `winograd` (3x3 convolutions by Winograd's F(2x2, 3x3),
which `conv` chooses for many channels), `pooling`, `normalization` (with `fused`, its
passes compiled by Numba when installed), `linear` (ReLU, dropout,
flatten, fully connected), and `channelwise` (elementwise passes against a per-channel
vector, in long runs of memory, and column sums of narrow matrices).
"""

from .windowing import (batch_blocks, col2im, col2im_by_offset, pad2d, pair, to_channels_last,
                        to_nchw, unpad2d, windows)
from .conv import (COLUMNS_BYTES, ROWS_BYTES, conv2d, conv2d_backward, conv2d_by_kernel_rows,
                   conv2d_forward, conv2d_holds_input, im2col, image_chunks,
                   use_channels_last_columns)
from .winograd import conv2d_winograd
from .pooling import (POOL_BLOCK_BYTES, adaptive_avgpool2d_backward, adaptive_avgpool2d_forward,
                      adaptive_bounds, avgpool2d_backward, avgpool2d_forward, maxpool2d,
                      maxpool2d_backward, maxpool2d_forward)
from . import fused
from .normalization import (BatchNormCache, batchnorm_backward, batchnorm_folded, batchnorm_forward,
                            batchnorm_infer)
from .linear import (dropout_backward, dropout_forward, dropout_mask, flatten_backward,
                     flatten_forward, linear_backward, linear_forward, matmul_wide_via_transpose,
                     relu, relu_backward, relu_forward)
