"""What only a GPU shows: the mamba-ssm kernel against our PyTorch scan, and AMP training of VM-UNet.

Skipped on machines without CUDA (CI); run on a GPU machine with `pytest tests/test_cuda.py`.
"""
import pytest
import torch
import torch.nn.functional as F

from nnunet_mamba.ops import cuda_kernel_status, resolve_backend, selective_scan, selective_scan_ref
from nnunet_mamba.ops.scan_triton import triton_status

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_kernel = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_kernel_status()[0]),
                                     reason="needs a CUDA device and the mamba-ssm kernel")


def _inputs(batch, dim, length, d_state, groups, device, with_z=True, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    tensors = {
        "u": rand(batch, dim, length),
        "delta": rand(batch, dim, length) - 2.0,
        "A": -torch.exp(rand(dim, d_state) * 0.5),
        "B": rand(batch, groups, d_state, length),
        "C": rand(batch, groups, d_state, length),
        "D": rand(dim),
        "z": rand(batch, dim, length) if with_z else None,
        "delta_bias": rand(dim) * 0.5,
    }
    return {k: (v.to(device).requires_grad_() if v is not None else None) for k, v in tensors.items()}


def _run(backend, tensors):
    """Output and gradients of ``backend`` (a name, or a scan function) on ``tensors``."""
    scan = backend if callable(backend) else lambda **kw: selective_scan(**kw, backend=backend)
    out = scan(**tensors, delta_softplus=True)
    out.backward(torch.ones_like(out) / out.numel() ** 0.5)
    grads = {k: v.grad.clone() for k, v in tensors.items() if v is not None}
    for v in tensors.values():
        if v is not None:
            v.grad = None
    return out.detach(), grads


@requires_kernel
@pytest.mark.parametrize("length,groups,with_z", [(1, 1, False), (37, 4, True), (1024, 4, False), (4096, 6, True)])
def test_cuda_kernel_matches_torch_backend(length, groups, with_z):
    tensors = _inputs(2, 48, length, 16, groups, "cuda", with_z)
    out_cuda, grads_cuda = _run("cuda", tensors)
    out_torch, grads_torch = _run("torch", tensors)
    torch.testing.assert_close(out_cuda, out_torch, rtol=1e-4, atol=1e-4)
    for name in grads_cuda:
        scale = grads_torch[name].abs().max().clamp_min(1.0)
        assert (grads_cuda[name] - grads_torch[name]).abs().max() / scale < 1e-3, name


requires_triton_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or not triton_status(torch.device("cuda"))[0],
    reason="needs a CUDA device and triton")


def _float64_reference_on_cpu(tensors):
    """The float64 sequential reference on CPU copies of ``tensors``."""
    leaves = {k: (v.detach().double().cpu().requires_grad_() if v is not None else None) for k, v in tensors.items()}
    return _run(selective_scan_ref, leaves)


@requires_triton_gpu
@pytest.mark.parametrize("length,groups,with_z", [(1, 1, False), (37, 4, True), (1024, 4, True), (4096, 6, False),
                                                  (16384, 4, True)])
def test_triton_on_gpu_matches_the_float64_reference_at_full_shapes(length, groups, with_z):
    tensors = _inputs(1, 192, length, 16, groups, "cuda", with_z)
    out, grads = _run("triton", tensors)
    ref_out, ref_grads = _float64_reference_on_cpu(tensors)
    scale = ref_out.abs().max().clamp_min(1.0)
    assert (out.double().cpu() - ref_out).abs().max() / scale < 1e-4
    for name, ref in ref_grads.items():
        assert (grads[name].double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1.0) < 1e-4, name


@requires_kernel
@requires_triton_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length,groups", [(1024, 4), (4096, 6)])
def test_triton_matches_the_mamba_ssm_kernel(length, groups, dtype):
    tensors = _inputs(2, 192, length, 16, groups, "cuda")
    tensors = {k: (v.detach().to(dtype if k in ("u", "delta", "B", "C", "z") else torch.float32).requires_grad_()
                   if v is not None else None) for k, v in tensors.items()}
    out_triton, grads_triton = _run("triton", tensors)
    out_cuda, grads_cuda = _run("cuda", tensors)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    assert (out_triton.float() - out_cuda.float()).abs().max() / out_cuda.float().abs().max() < tolerance
    for name in grads_cuda:
        reference = grads_cuda[name].float()
        assert (grads_triton[name].float() - reference).abs().max() / reference.abs().max().clamp_min(1.0) \
            < 10 * tolerance, name


@requires_cuda
def test_torch_backend_on_gpu_matches_cpu():
    cpu = _inputs(1, 32, 300, 16, 4, "cpu")
    gpu = {k: (v.detach().cuda().requires_grad_() if v is not None else None) for k, v in cpu.items()}
    out_cpu, grads_cpu = _run("torch", cpu)
    out_gpu, grads_gpu = _run("torch", gpu)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-4, atol=1e-5)
    for name in grads_cpu:
        torch.testing.assert_close(grads_gpu[name].cpu(), grads_cpu[name], rtol=1e-3, atol=1e-4)


@requires_cuda
def test_auto_backend_prefers_the_kernel_on_gpu():
    from nnunet_mamba.ops.scan_numba import numba_status

    gpu_fallback = "triton" if triton_status(torch.device("cuda"))[0] else "torch"
    assert resolve_backend(torch.device("cuda")) == ("cuda" if cuda_kernel_status()[0] else gpu_fallback)
    assert resolve_backend(torch.device("cpu")) == ("numba" if numba_status()[0] else "torch")


AMP_RELATIVE_ERROR = {torch.float16: 0.01, torch.bfloat16: 0.05}


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vm_unet_amp_training_is_stable(dtype, spatial_dims):
    from torch import nn

    from nnunet_mamba.architectures import VMUNet

    torch.manual_seed(0)
    conv_op = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
    shape = (32, 64, 64) if spatial_dims == 3 else (128, 128)
    model = VMUNet(1, 3, conv_op=conv_op, deep_supervision=False).cuda().eval()  # no random drop-path
    x = torch.randn(2, 1, *shape, device="cuda")
    target = (x > 0.5).long().squeeze(1) + (x > 1.5).long().squeeze(1)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cuda", dtype=dtype):
            mixed = model(x)
    # half-precision matmuls perturb every block a little; the logits must stay close in the L2 sense
    relative_error = ((mixed.float() - reference).norm() / reference.norm()).item()
    assert torch.isfinite(mixed).all() and relative_error < AMP_RELATIVE_ERROR[dtype], relative_error

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    losses = []
    for _ in range(8):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(x), target)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
