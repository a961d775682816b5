"""PyTorch's CPU max-pooling against nnunet_mamba's strided-view pooling (``blocks/pooling.py``) on LightM-UNet's
pooled maps, in turns in one process, inference (no gradient recorded):

    python examples/max_pool_timing.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

from nnunet_mamba.blocks.pooling import max_pool

# (map shape, stride): LightM-UNet's first pooling in 2D (128 x 128, batch 2) and 3D (64^3), a deeper 3D one, and an
# anisotropic plan's in-plane-only pooling
CASES = (((2, 64, 128, 128), (2, 2)), ((1, 64, 64, 64, 64), (2, 2, 2)), ((1, 128, 32, 32, 32), (2, 2, 2)),
         ((1, 32, 32, 64, 64), (1, 2, 2)))


def main() -> None:
    torch.set_num_threads(2)
    for shape, stride in CASES:
        x = torch.randn(shape)
        pytorch = F.max_pool2d if x.dim() == 4 else F.max_pool3d
        times = {"pytorch": [], "ours": []}
        with torch.no_grad():
            assert torch.equal(pytorch(x, stride, stride), max_pool(x, stride))
            calls = (("pytorch", lambda: pytorch(x, stride, stride)), ("ours", lambda: max_pool(x, stride)))
            for _ in range(9):
                for name, pool in calls:
                    start = time.perf_counter()
                    pool()
                    times[name].append(time.perf_counter() - start)
        theirs, ours = (statistics.median(times[name]) * 1e3 for name in ("pytorch", "ours"))
        print(f"{shape} stride {stride}: PyTorch {theirs:.2f} ms, strided views {ours:.2f} ms, {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
