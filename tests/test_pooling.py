"""Max-pooling by strided views (nnunet_mamba/blocks/pooling.py): PyTorch's values in inference, PyTorch's pooling
wherever a gradient is recorded."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_mamba.blocks import pooling
from nnunet_mamba.blocks.pooling import MaxPool2d, MaxPool3d, max_pool

CASES = [((2, 3, 8, 12), (2, 2)), ((1, 4, 9, 7), (2, 3)), ((2, 2, 6, 8, 10), (2, 2, 2)),
         ((1, 3, 5, 9, 8), (1, 2, 2)), ((1, 2, 7, 5, 11), (3, 1, 2))]


def _reference(x, stride):
    return (F.max_pool2d if x.dim() == 4 else F.max_pool3d)(x, stride, stride)


def _refuse_pytorch_pooling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("PyTorch's pooling was called")
    monkeypatch.setattr(pooling.F, "max_pool2d", refuse)
    monkeypatch.setattr(pooling.F, "max_pool3d", refuse)


@pytest.mark.parametrize("shape,stride", CASES)
def test_inference_takes_the_strided_views_and_gives_pytorchs_values(shape, stride, monkeypatch):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x.view(-1)[::7] = 0.0  # ties
    x.view(-1)[3] = float("inf")
    x.view(-1)[-2] = float("-inf")
    x.view(-1)[11] = float("nan")
    expected, expected_double = _reference(x, stride), _reference(x.double(), stride)
    _refuse_pytorch_pooling(monkeypatch)
    with torch.no_grad():
        pooled, pooled_double = max_pool(x, stride), max_pool(x.double(), stride)
    assert pooled.shape == expected.shape  # a partial last window dropped (floor mode)
    assert torch.equal(pooled.isnan(), expected.isnan()) and expected.isnan().any()
    assert torch.equal(pooled.nan_to_num(0.0), expected.nan_to_num(0.0))
    assert torch.equal(pooled_double.nan_to_num(0.0), expected_double.nan_to_num(0.0))


@pytest.mark.parametrize("dims", [2, 3])
def test_training_keeps_pytorchs_gradient_which_goes_to_the_first_maximum_of_a_window(dims):
    shape = (2, 3, 6, 8) if dims == 2 else (1, 2, 4, 6, 6)
    stride = (2,) * dims
    values = torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(1)).float()  # ties in every window
    grad = torch.randn(_reference(values, stride).shape, generator=torch.Generator().manual_seed(2))
    ours, theirs = values.clone().requires_grad_(), values.clone().requires_grad_()
    max_pool(ours, stride).backward(grad)
    _reference(theirs, stride).backward(grad)
    assert torch.equal(ours.grad, theirs.grad)
    # the split that torch.maximum's gradient would make is not what pooling does: the ties tell them apart
    split = values.clone().requires_grad_()
    pooling._max_of_strided_views(split, stride).backward(grad)
    assert not torch.equal(split.grad, theirs.grad)


def test_the_modules_are_pytorchs_pooling_modules_and_refuse_other_windows(monkeypatch):
    module = MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
    assert isinstance(module, nn.MaxPool3d) and isinstance(MaxPool2d(2, 2), nn.MaxPool2d)
    x = torch.randn(1, 2, 3, 4, 6)
    expected = F.max_pool3d(x, (1, 2, 2), (1, 2, 2))
    _refuse_pytorch_pooling(monkeypatch)
    with torch.no_grad():
        assert torch.equal(module(x), expected)
    with pytest.raises(ValueError, match=r"MaxPool2d pools windows as large as their stride.*kernel_size 3, stride 2"):
        MaxPool2d(kernel_size=3, stride=2)
    with pytest.raises(ValueError, match="padding 1"):
        MaxPool3d(kernel_size=2, stride=2, padding=1)
    with pytest.raises(ValueError, match=r"max_pool takes .* got shape \(2, 3\) and stride \(2,\)"):
        max_pool(torch.zeros(2, 3), (2,))


def test_pytorchs_pooling_runs_where_the_fast_path_would_differ_or_cannot_be_seen():
    x = torch.randn(1, 2, 4, 6, 6)
    seen = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Recorder():  # FLOP counters are dispatch modes: they see the pooling itself
        max_pool(x, (2, 2, 2))
    assert any("max_pool3d" in name for name in seen) and not any("maximum" in name for name in seen)
    traced = torch.jit.trace(lambda t: max_pool(t, (2, 2, 2)), x)
    assert "max_pool3d" in str(traced.graph)
    # CPU autocast runs 3D max-pooling in float32: so does ours there
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pooled, expected = max_pool(x.bfloat16(), (2, 2, 2)), F.max_pool3d(x.bfloat16(), 2, 2)
    assert pooled.dtype == expected.dtype == torch.float32 and torch.equal(pooled, expected)
    # a window larger than the map: PyTorch's error, in inference as in training
    with torch.no_grad(), pytest.raises(RuntimeError):
        max_pool(torch.randn(1, 2, 1, 6, 6), (2, 2, 2))


def test_inference_mode_takes_the_fast_path_and_the_modules_default_their_stride_to_the_kernel(monkeypatch):
    x = torch.randn(2, 3, 8, 8)
    expected = F.max_pool2d(x, 2)
    module = MaxPool2d(2)  # stride None: the kernel's
    assert module.stride == 2
    _refuse_pytorch_pooling(monkeypatch)
    with torch.inference_mode():
        assert torch.equal(module(x), expected)
    assert max_pool(x, (1, 1)) is x  # pooling nothing
