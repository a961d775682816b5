"""The scan backends' table (nnunet_mamba.ops.backends) is the one list: the dispatcher, the CLI, doctor and the
README read it; a forced backend that cannot run says the table's install hint; tools' overrides are scoped."""
import os
import re
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nnunet_mamba import discovery
from nnunet_mamba.cli import build_parser, main
from nnunet_mamba.ops import (BACKEND_CHOICES, BACKENDS, SCAN_ENV_VAR, available_backends, requested_backend,
                              resolve_backend, scan_backend_override, scan_cuda, scan_numba, scan_triton,
                              selective_scan, selective_scan_ref)
from nnunet_mamba.ops._optional import LazyImport, Unavailable
from support import make_inputs

REPO = Path(__file__).resolve().parents[1]
NAMES = tuple(backend.name for backend in BACKENDS)


@pytest.fixture
def statuses(monkeypatch):
    """Set which optional backends can run, by name; the others keep their real status."""
    functions = {"cuda": (scan_cuda, "cuda_kernel_status"), "triton": (scan_triton, "triton_status"),
                 "numba": (scan_numba, "numba_status")}

    def pretend(**available):
        for name, ok in available.items():
            module, function = functions[name]
            result = (True, "") if ok else (False, f"{name} pretends to be missing")
            monkeypatch.setattr(module, function, lambda *args, result=result: result)

    return pretend


def test_the_choices_are_the_tables_names():
    assert NAMES == ("cuda", "triton", "numba", "torch")  # the order is 'auto''s preference
    assert BACKEND_CHOICES == ("auto",) + NAMES
    parser = build_parser()
    for name in BACKEND_CHOICES:
        assert parser.parse_args(["benchmark", "network", "--backends", name]).backends == [name]
    with pytest.raises(SystemExit):
        parser.parse_args(["benchmark", "network", "--backends", "fastest"])


def test_the_dispatcher_accepts_exactly_the_tables_names(monkeypatch):
    for name in BACKEND_CHOICES:
        monkeypatch.setenv(SCAN_ENV_VAR, f" {name.upper()} ")
        assert requested_backend() == name
    monkeypatch.setenv(SCAN_ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=re.escape(f"must be one of {', '.join(BACKEND_CHOICES)}.")):
        requested_backend()


def test_doctor_reports_every_backend_of_the_table_in_order(monkeypatch, capsys, statuses):
    statuses(numba=False)
    monkeypatch.delenv(SCAN_ENV_VAR, raising=False)
    monkeypatch.setenv(discovery.EXT_TRAINER_ENV_VAR, str(discovery.trainers_folder()))
    monkeypatch.setattr(discovery, "find_with_nnunet", lambda name: (object, ""))
    main(["doctor"])
    out = capsys.readouterr().out
    section = out.split("\nselective scan")[1].split("\n\n")[0]
    assert tuple(re.findall(r"^  (\w+): (?:yes|no)", section, flags=re.M)) == NAMES
    assert "  numba: no - numba pretends to be missing" in section
    numba = next(backend for backend in BACKENDS if backend.name == "numba")
    assert ("note: on cpu tensors the 'torch' backend runs; 'auto' would prefer 'numba': "
            f"{numba.install_hint}") in section


def test_doctor_names_triton_as_the_gpu_choice_without_mamba_ssm(monkeypatch, capsys, statuses):
    statuses(cuda=False, triton=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "a GPU")
    monkeypatch.delenv(SCAN_ENV_VAR, raising=False)
    monkeypatch.setenv(discovery.EXT_TRAINER_ENV_VAR, str(discovery.trainers_folder()))
    monkeypatch.setattr(discovery, "find_with_nnunet", lambda name: (object, ""))
    main(["doctor"])
    section = capsys.readouterr().out.split("\nselective scan")[1].split("\n\n")[0]
    cuda = next(backend for backend in BACKENDS if backend.name == "cuda")
    assert "tensors on cuda use the 'triton' backend" in section
    assert f"note: on cuda tensors the 'triton' backend runs; 'auto' would prefer 'cuda': {cuda.install_hint}" \
        in section
    assert "pure-PyTorch scan runs" not in section


def test_the_readme_lists_the_tables_backends_in_order():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Selective-scan backends")[1].split("\n## ")[0]
    assert tuple(re.findall(r"^\| `(\w+)` \|", section, flags=re.M)) == NAMES
    assert f"NNUNET_MAMBA_SCAN={'|'.join(BACKEND_CHOICES)}" in section


@pytest.mark.parametrize("backend", [backend for backend in BACKENDS if backend.install_hint], ids=lambda b: b.name)
def test_a_forced_backend_that_cannot_run_raises_the_tables_install_hint(backend, statuses):
    statuses(**{backend.name: False})
    device = torch.device(backend.device_types[0])
    with pytest.raises(RuntimeError) as raised:
        resolve_backend(device, backend.name, dtype=torch.float32)
    message = str(raised.value)
    assert message.startswith(f"Selective-scan backend '{backend.name}' was forced but {backend.name} pretends to "
                              f"be missing. {backend.install_hint}, or set {SCAN_ENV_VAR}=torch")


def test_auto_takes_the_first_backend_of_the_table_that_can_run(statuses):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    statuses(cuda=True, triton=True, numba=True)
    assert [resolve_backend(cuda, "auto", dtype=torch.float32), resolve_backend(cpu, "auto")] == ["cuda", "numba"]
    statuses(cuda=False)
    assert resolve_backend(cuda, "auto", dtype=torch.float32) == "triton"
    statuses(triton=False, numba=False)
    assert [resolve_backend(cuda, "auto"), resolve_backend(cpu, "auto")] == ["torch", "torch"]


def test_a_kernel_without_its_device_is_reported_unavailable(monkeypatch, statuses):
    statuses(cuda=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_backends()["cuda"] == "the mamba-ssm kernel is there, but no CUDA device is visible"
    assert available_backends()["torch"] == ""


def test_scan_backend_override_is_scoped_and_leaves_the_environment_alone(monkeypatch):
    monkeypatch.setenv(SCAN_ENV_VAR, "auto")
    seen_by_another_thread = []
    with scan_backend_override("torch"):
        assert os.environ[SCAN_ENV_VAR] == "auto"
        assert requested_backend() == "torch"
        assert requested_backend("auto") == "auto"  # the argument still wins
        with scan_backend_override("cuda"):
            assert requested_backend() == "cuda"
        assert requested_backend() == "torch"
        thread = threading.Thread(target=lambda: seen_by_another_thread.append(requested_backend()))
        thread.start()
        thread.join()
    assert seen_by_another_thread == ["auto"]
    assert requested_backend() == "auto"
    with pytest.raises(ValueError, match="'fastest' from the scan_backend_override block"):
        with scan_backend_override("fastest"):
            pass


def test_an_overridden_backend_that_cannot_run_names_the_override():
    with scan_backend_override("cuda"), pytest.raises(RuntimeError, match=r"'cuda' was forced \(by the "
                                                                          r"scan_backend_override block\).*'cpu'"):
        selective_scan(**make_inputs(1, 4, 4, 5, 1))


def test_the_reference_is_the_recurrence_written_out():
    # two positions of one channel, N = 1, every optional part on
    u, delta, A, B, C = (torch.tensor(v, dtype=torch.float64) for v in
                         ([[[1.0, 2.0]]], [[[0.3, -0.2]]], [[-0.5]], [[[0.7, -1.1]]], [[[1.3, 0.4]]]))
    D, z, bias = torch.tensor([0.25], dtype=torch.float64), torch.tensor([[[0.5, -1.0]]], dtype=torch.float64), \
        torch.tensor([0.1], dtype=torch.float64)
    step = F.softplus(delta + 0.1)[0, 0]
    x0 = step[0] * 0.7 * 1.0
    x1 = torch.exp(step[1] * -0.5) * x0 + step[1] * -1.1 * 2.0
    expected = (torch.stack([1.3 * x0, 0.4 * x1]) + 0.25 * u[0, 0]) * F.silu(z[0, 0])
    out = selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-12, atol=1e-12)


def test_lazy_import_loads_once_and_keeps_the_reason():
    calls = []

    def load():
        calls.append(1)
        raise ImportError("libfoo.so: cannot open shared object file")

    failing = LazyImport(load, lambda error: f"foo could not be imported ({type(error).__name__}: {error})")
    for _ in range(3):
        assert failing.status() == (False, "foo could not be imported (ImportError: libfoo.so: cannot open shared "
                                           "object file)")
    assert calls == [1]

    def load_without_kernel():
        raise Unavailable("foo imports but its kernel is missing")

    said = LazyImport(load_without_kernel, lambda error: pytest.fail("an Unavailable is the reason as it is"))
    assert said.result() == (None, "foo imports but its kernel is missing")
    assert LazyImport(lambda: "module", str).status() == (True, "")


def test_the_table_reads_a_device_given_as_a_string_like_a_torch_device(statuses):
    from nnunet_mamba.ops.backends import auto_backend, check_forced, device_type

    assert [device_type("cuda:1"), device_type(torch.device("cuda", 1)), device_type("cpu")] == ["cuda", "cuda", "cpu"]
    statuses(cuda=True, triton=True, numba=True)
    assert auto_backend("cuda:0", torch.float32).name == auto_backend(torch.device("cuda", 0), torch.float32).name
    numba = next(backend for backend in BACKENDS if backend.name == "numba")
    with pytest.raises(RuntimeError, match="only runs on CPU tensors"):
        check_forced(numba, "cuda:0", torch.float32, origin="backend argument")
