"""glibc keeps freed memory in processes that train on CPU (nnunet_mamba.cpu_allocator): a 64 MiB block
freed and allocated again faults its pages in once, not every time; the opt-out and the environment form; the
benchmark's peak-memory measurement under it; our trainers apply it when they train on CPU, and to prediction on a
machine without a GPU."""
import json
import os
import subprocess
import sys

import pytest

from nnunet_mamba import cpu_allocator

pytestmark = pytest.mark.skipif(cpu_allocator._glibc() is None, reason="glibc only (Linux)")


def _huge_pages_always() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            return "[always]" in setting.read()
    except OSError:
        return False


# with transparent huge pages on 'always' a fresh 64 MiB block faults in about 32 huge pages, not 16384 small ones
counts_small_pages = pytest.mark.skipif(_huge_pages_always(), reason="transparent huge pages set to 'always'")

PAGES_IN_64_MIB = 64 * 2 ** 20 // os.sysconf("SC_PAGE_SIZE")

# glibc's malloc itself, as PyTorch's CPU allocator calls it (numpy would ask for transparent huge pages)
GLIBC_BLOCKS = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
SIZE = 64 * 2 ** 20
"""

REFILL_SCRIPT = GLIBC_BLOCKS + """
import json, resource, sys
from nnunet_mamba.cpu_allocator import freed_memory_kept, keep_freed_memory

applied = keep_freed_memory() if sys.argv[1] == "keep" else None

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

counts = []
for _ in range(4):
    block = libc.malloc(SIZE)
    before = faults()
    ctypes.memset(block, 1, SIZE)
    counts.append(faults() - before)
    libc.free(block)
print(json.dumps({"applied": applied, "kept": freed_memory_kept(), "faults": counts}))
"""


def _environment_without_allocator_settings(**env: str) -> dict:
    """This process's environment without the opt-out (the test session sets it) or glibc's own malloc variables."""
    return {**{key: value for key, value in os.environ.items()
               if key != cpu_allocator.KEEP_FREED_MEMORY_ENV and not key.startswith("MALLOC_")}, **env}


def _refills(mode: str, **env: str) -> dict:
    result = subprocess.run([sys.executable, "-c", REFILL_SCRIPT, mode],
                            env=_environment_without_allocator_settings(**env), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@counts_small_pages
def test_glibc_defaults_map_a_freed_64_mib_block_afresh_every_time():
    # the cost the module removes: above glibc's largest mmap threshold (32 MiB) every allocation faults anew
    run = _refills("default")
    assert run["kept"] is False
    assert all(count >= 0.9 * PAGES_IN_64_MIB for count in run["faults"])


@counts_small_pages
def test_kept_freed_memory_is_reused_without_faults():
    run = _refills("keep")
    assert run["applied"] is True and run["kept"] is True
    first, *again = run["faults"]
    assert first >= 0.9 * PAGES_IN_64_MIB  # the first use still faults its pages in
    assert max(again) < 0.01 * PAGES_IN_64_MIB


@counts_small_pages
def test_opting_out_leaves_glibcs_defaults():
    run = _refills("keep", **{cpu_allocator.KEEP_FREED_MEMORY_ENV: "0"})
    assert run["applied"] is False and run["kept"] is False
    assert all(count >= 0.9 * PAGES_IN_64_MIB for count in run["faults"])


@counts_small_pages
def test_the_environment_form_gives_a_new_process_the_same_settings(monkeypatch):
    monkeypatch.delenv(cpu_allocator.KEEP_FREED_MEMORY_ENV, raising=False)
    assert cpu_allocator.subprocess_environment() == cpu_allocator.GLIBC_ENVIRONMENT
    run = _refills("default", **cpu_allocator.subprocess_environment())
    assert run["kept"] is True and max(run["faults"][1:]) < 0.01 * PAGES_IN_64_MIB
    monkeypatch.setenv(cpu_allocator.KEEP_FREED_MEMORY_ENV, "off")
    assert cpu_allocator.subprocess_environment() == {}


PEAK_SCRIPT = GLIBC_BLOCKS + """
import json
from nnunet_mamba.resident_memory import ResidentPeak
from nnunet_mamba.cpu_allocator import keep_freed_memory

assert keep_freed_memory()
block = libc.malloc(SIZE)
ctypes.memset(block, 1, SIZE)
libc.free(block)  # kept by the process: resident, free
with ResidentPeak() as peak:
    ctypes.memset(libc.malloc(SIZE), 1, SIZE)
print(json.dumps({"growth": peak.growth_bytes}))
"""


def test_the_benchmarks_peak_memory_still_counts_a_step_whose_memory_was_kept():
    # ResidentPeak hands free memory back on entry (malloc_trim), so a step reusing kept memory still counts it
    result = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], env=_environment_without_allocator_settings(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    growth = json.loads(result.stdout.splitlines()[-1])["growth"]
    if growth is None:
        pytest.skip("no /proc/self/clear_refs on this platform")
    assert growth >= 60 * 2 ** 20


@pytest.mark.slow
def test_our_trainers_keep_freed_memory_when_they_train_or_predict_on_cpu(make_trainer, monkeypatch):
    import nnunet_mamba.training.trainer_base as trainer_base

    calls = []
    monkeypatch.setattr(trainer_base, "keep_freed_memory", lambda: calls.append("kept") or True)
    trainer = make_trainer("nnUNetTrainerVMUNet")
    trainer.initialize()
    assert calls[0] == "kept"  # before the network is built
    # nnUNetv2_predict builds the network with the classmethod alone: on a machine without a GPU it keeps freed
    # memory too, where a GPU may run it, glibc's defaults stay
    for has_gpu, expected in ((False, ["kept"]), (True, [])):
        calls.clear()
        monkeypatch.setattr(trainer_base.torch.cuda, "is_available", lambda: has_gpu)
        type(trainer).build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 2, False)
        assert calls == expected, has_gpu


def test_doctor_says_which_setting_our_processes_get(monkeypatch):
    monkeypatch.delenv(cpu_allocator.KEEP_FREED_MEMORY_ENV, raising=False)
    assert cpu_allocator.describe().startswith(
        "our trainers training on CPU, and nnUNetv2_predict with them on a machine without a GPU, keep freed memory")
    monkeypatch.setenv(cpu_allocator.KEEP_FREED_MEMORY_ENV, "no")
    assert cpu_allocator.describe().startswith(f"glibc's defaults ({cpu_allocator.KEEP_FREED_MEMORY_ENV}=no)")
