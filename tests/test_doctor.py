"""`python -m maskrcnn.doctor` and the backend choice it reports, for each state of the native
extension: built (CPU only, or with CUDA), skipped at install, failed to build, never built, and
switched off by MASKRCNN_NATIVE=0."""
import os
import subprocess
import sys

import pytest
import torch

from maskrcnn import doctor
from maskrcnn.ops import _native


def run_doctor(**env):
    result = subprocess.run([sys.executable, "-m", "maskrcnn.doctor"], capture_output=True,
                            text=True, env={**os.environ, **env}, timeout=120)
    return result.returncode, result.stdout


def row(text, op, device):
    """The table row of `op` on `device`, split into (op, device, backend, why)."""
    for line in text.splitlines():
        parts = line.split(maxsplit=3)
        if parts[:2] == [op, device]:
            return tuple(parts)
    raise AssertionError(f"no row for {op} on {device} in:\n{text}")


@pytest.mark.skipif(_native._C is None, reason="native extension not built here: "
                    "the subprocess checks below need it (the monkeypatched ones do not)")
def test_doctor_on_this_installation():
    code, text = run_doctor(MASKRCNN_NATIVE="1")
    assert code == 0, text
    assert f"torch              {torch.__version__}" in text
    kinds = "C++ CPU and CUDA kernels" if _native._C.with_cuda else "C++ CPU kernels only"
    assert f"native extension   built: {kinds}" in text
    for op in ("roi_align", "nms"):
        assert row(text, op, "cpu") == (op, "cpu", "native", "C++ CPU kernel")
        if not torch.cuda.is_available():
            assert row(text, op, "cuda") == (op, "cuda", "-", "no CUDA device")
    assert "smoke test cpu     native vs reference: ok" in text


@pytest.mark.skipif(_native._C is None, reason="native extension not built here")
def test_doctor_reports_the_switch():
    code, text = run_doctor(MASKRCNN_NATIVE="0")
    assert code == 0, text
    assert "MASKRCNN_NATIVE    '0' (reference forced)" in text
    for op in ("roi_align", "nms"):
        assert row(text, op, "cpu") == (op, "cpu", "reference",
                                        "MASKRCNN_NATIVE=0 in the environment")


@pytest.mark.parametrize("record, expected", [
    ({"status": "skipped", "reason": "MASKRCNN_BUILD_NATIVE=0 when it was installed"},
     "not available: the build was skipped (MASKRCNN_BUILD_NATIVE=0 when it was installed)"),
    ({"status": "failed", "reason": "RuntimeError: Error compiling objects for extension"},
     "not available: the build failed (RuntimeError: Error compiling objects for extension)"),
    ({"status": "built", "torch": "2.0.0"}, "not available: built for torch 2.0.0 but does not "
                                             "import: ImportError: undefined symbol"),
    (None, "not available: not built (install with `pip install --no-build-isolation -e .` to "
           "compile it); ImportError: undefined symbol"),
])
def test_every_op_falls_back_when_the_extension_is_missing(monkeypatch, record, expected):
    monkeypatch.setattr(_native, "_C", None)
    monkeypatch.setattr(_native, "IMPORT_ERROR", "ImportError: undefined symbol")
    monkeypatch.setattr(_native, "BUILD_RECORD", record)
    monkeypatch.delenv("MASKRCNN_NATIVE", raising=False)
    assert _native.extension_status() == expected
    assert _native.native_devices() == ()
    text, healthy = doctor.report()
    assert healthy and "smoke test" not in text
    for op in ("roi_align", "nms"):
        assert row(text, op, "cpu") == (op, "cpu", "reference", "native extension " + expected)


class FakeExtension:
    def __init__(self, with_cuda):
        self.with_cuda = with_cuda
        self.__file__ = "/somewhere/_C.cpython-311-x86_64-linux-gnu.so"


@pytest.mark.parametrize("with_cuda", [False, True])
def test_backend_choice_per_device(monkeypatch, with_cuda):
    monkeypatch.setattr(_native, "_C", FakeExtension(with_cuda))
    monkeypatch.delenv("MASKRCNN_NATIVE", raising=False)
    kinds = "C++ CPU and CUDA kernels" if with_cuda else "C++ CPU kernels only"
    assert _native.extension_status() == f"built: {kinds} (_C.cpython-311-x86_64-linux-gnu.so)"
    assert _native.choose_backend("cpu") == ("native", "C++ CPU kernel")
    if with_cuda:
        assert _native.choose_backend(torch.device("cuda", 1)) == ("native", "CUDA kernel")
    else:
        assert _native.choose_backend("cuda:0") == (
            "reference", "the native extension has cpu kernels only, not cuda")
    assert _native.choose_backend("mps")[0] == "reference"
    for value in ("0", "false", "OFF"):
        monkeypatch.setenv("MASKRCNN_NATIVE", value)
        assert _native.choose_backend("cpu") == ("reference", f"MASKRCNN_NATIVE={value} in the "
                                                              "environment")


def test_build_line_shows_the_record(monkeypatch):
    monkeypatch.setattr(_native, "BUILD_RECORD", {
        "status": "built", "variant": "cpu", "build_seconds": 41.5, "torch": "2.13.0+cpu",
        "notes": ["CUDA build failed (RuntimeError: x); retried with the CPU kernels only"]})
    assert doctor._build_line() == ("built, cpu variant, 41.5 s, for torch 2.13.0+cpu, CUDA build "
                                    "failed (RuntimeError: x); retried with the CPU kernels only")
