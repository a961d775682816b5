"""Where a LightM-UNet train step spends its time: the torch profiler over one AdamW step (2D 128 x 128, batch 2,
published widths), with the forward scopes of the Mamba block's causal convolution and selective scan named.

    python examples/profile_light_m_unet_step.py
"""
import time

import torch
from torch.autograd.profiler import record_function

import nnunet_mamba.blocks.mamba as mamba_module
from nnunet_mamba.architectures import build_network, synthetic_configuration

torch.set_num_threads(2)


def named_scope(name, function):
    def scoped(*args, **kwargs):
        with record_function(name):
            return function(*args, **kwargs)
    return scoped


# the block looks both up in its module at call time
mamba_module.causal_depthwise_conv1d = named_scope("causal_conv1d", mamba_module.causal_depthwise_conv1d)
mamba_module.selective_scan = named_scope("selective_scan", mamba_module.selective_scan)

network = build_network("light_m_unet", synthetic_configuration((128, 128)), 1, 3, False)
optimizer = torch.optim.AdamW(network.parameters())
images, labels = torch.randn(2, 1, 128, 128), torch.randint(0, 3, (2, 128, 128))


def train_step():
    loss = torch.nn.functional.cross_entropy(network(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


for _ in range(2):
    train_step()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
    started = time.perf_counter()
    train_step()
    seconds = time.perf_counter() - started
events = profile.key_averages()
print(f"train step {seconds * 1000:.0f} ms")
print(events.table(sort_by="self_cpu_time_total", row_limit=14))
for scope in ("causal_conv1d", "selective_scan"):
    for event in events:
        if event.key == scope:
            print(f"{scope}: forward {event.cpu_time_total / 1000:.1f} ms (with what it calls)")
