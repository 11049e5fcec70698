"""setup.py's decisions about the native build, and how a missing CUDA build is reported, checked
without a GPU: the CUDA architecture list, the OpenMP flags, the CUDA -> CPU fallback and its
record (including MASKRCNN_REQUIRE_CUDA=1), the first compiler error, the import-time warning and
the doctor's line. (The compile itself: test_cuda_build.py; the threads: test_native_threads.py.)"""
import importlib.util
from pathlib import Path

import pytest
import torch

from maskrcnn import doctor
from maskrcnn.ops import _native

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module (setup() runs only when it is executed as a script)."""
    spec = importlib.util.spec_from_file_location("maskrcnn_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- CUDA architectures -------------------------------------------------------------------------

def test_arch_list_without_a_gpu_is_the_stated_default(setup_py):
    assert setup_py.DEFAULT_CUDA_ARCH_LIST == "7.5;8.0;9.0+PTX"
    arch, source = setup_py.cuda_arch_list({}, visible_gpus=0)
    assert arch == "7.5;8.0;9.0+PTX" and source.startswith("default")
    # torch turns it into these -gencode flags (no GPU needed once the list is given)
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_CUDA_ARCH_LIST", arch)
        assert _get_cuda_arch_flags() == sorted([
            "-gencode=arch=compute_75,code=sm_75", "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"])


def test_arch_list_from_the_environment_wins_and_visible_gpus_are_left_to_torch(setup_py):
    assert setup_py.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "8.6"}, visible_gpus=0) == (
        "8.6", "TORCH_CUDA_ARCH_LIST")
    assert setup_py.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": " 9.0 "}, visible_gpus=2)[0] == "9.0"
    arch, source = setup_py.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": ""}, visible_gpus=1)
    assert arch is None and "1 visible GPU" in source


# --- OpenMP -------------------------------------------------------------------------------------

def test_openmp_flags_follow_torchs_parallel_backend(setup_py):
    openmp_torch = "ATen/Parallel:\n\tat::get_num_threads() : 2\nATen parallel backend: OpenMP\n"
    native_torch = "ATen/Parallel:\n\tat::get_num_threads() : 2\nATen parallel backend: native thread pool\n"
    assert setup_py.openmp_flags(openmp_torch, "linux")[:2] == (["-fopenmp"], ["-fopenmp"])
    assert setup_py.openmp_flags(openmp_torch, "win32")[:2] == (["/openmp"], [])
    assert setup_py.openmp_flags(native_torch, "linux")[:2] == ([], [])
    compile_flags, link_flags, note = setup_py.openmp_flags(openmp_torch, "darwin")
    assert (compile_flags, link_flags) == ([], []) and "one thread" in note


def test_this_torch_gets_openmp_flags_on_linux(setup_py):
    info = torch.__config__.parallel_info()
    if "parallel backend: OpenMP" not in info or not __import__("sys").platform.startswith("linux"):
        pytest.skip("torch here does not use OpenMP on Linux")
    extension = setup_py.native_extension(cuda=False)
    assert "-fopenmp" in extension.extra_compile_args["cxx"]
    assert "-fopenmp" in extension.extra_link_args


# --- the CUDA -> CPU fallback and its record ------------------------------------------------------

NVCC_OUTPUT = """[1/7] c++ -Wno-error=deprecated -c bindings.cpp
[2/7] /usr/local/cuda/bin/nvcc -c roi_align_kernel.cu
/src/maskrcnn/ops/csrc/cuda/roi_align_kernel.cu(37): error: no suitable conversion function from "const __half" to "float" exists
          detected during:
/src/maskrcnn/ops/csrc/cuda/roi_align_kernel.cu(76): error: no suitable constructor exists
2 errors detected in the compilation of "roi_align_kernel.cu".
ninja: build stopped: subcommand failed.
"""


def test_first_error_line_is_the_compilers(setup_py):
    error = RuntimeError("Error compiling objects for extension")
    assert setup_py.first_error_line(NVCC_OUTPUT, error) == (
        '/src/maskrcnn/ops/csrc/cuda/roi_align_kernel.cu(37): error: no suitable conversion function '
        'from "const __half" to "float" exists')
    assert setup_py.first_error_line("[1/3] /nonexistent/c++ -c x.cpp\n/bin/sh: 1: /nonexistent/c++: not found\n",
                                     error) == "/bin/sh: 1: /nonexistent/c++: not found"
    assert setup_py.first_error_line("[1/1] c++ -c x.cpp\n", error) == (
        "RuntimeError: Error compiling objects for extension")


def fake_build(setup_py, failing):
    """A build(variant) that fails for the variants in ``failing``; records the calls."""
    calls = []

    def build(variant):
        calls.append(variant)
        if variant in failing:
            raise setup_py.BuildFailure(f"{variant}.cu(1): error: broken")

    return build, calls


def test_failed_cuda_build_falls_back_and_says_why(setup_py, capsys):
    build, calls = fake_build(setup_py, {"cuda"})
    outcome = setup_py.build_with_fallback(build, "cuda", "built for 9.0", require_cuda=False)
    assert calls == ["cuda", "cpu"]
    assert outcome == {"status": "built", "variant": "cpu",
                       "cuda": "CPU-only: CUDA build failed: cuda.cu(1): error: broken"}
    assert "CPU-only: CUDA build failed" in capsys.readouterr().out


def test_require_cuda_turns_a_failed_cuda_build_into_an_error(setup_py):
    build, calls = fake_build(setup_py, {"cuda"})
    with pytest.raises(setup_py.CudaRequired, match="CPU-only: CUDA build failed: cuda.cu"):
        setup_py.build_with_fallback(build, "cuda", "built for 9.0", require_cuda=True)
    assert calls == ["cuda"]  # no silent CPU build
    assert issubclass(setup_py.CudaRequired, SystemExit)  # pip and `python setup.py` then fail


def test_successful_builds_and_a_failed_cpu_build(setup_py):
    build, calls = fake_build(setup_py, set())
    assert setup_py.build_with_fallback(build, "cuda", "built for 9.0", False) == {
        "status": "built", "variant": "cuda", "cuda": "built for 9.0"}
    build, calls = fake_build(setup_py, {"cpu"})
    no_cuda = "CPU-only: torch 2.13.0+cpu was built without CUDA"
    assert setup_py.build_with_fallback(build, "cpu", no_cuda, False) == {
        "status": "failed", "variant": "cpu", "cuda": no_cuda, "reason": "cpu.cu(1): error: broken"}
    assert calls == ["cpu"]


# --- reporting: import warning and doctor ------------------------------------------------------------

class FakeExtension:
    def __init__(self, with_cuda):
        self.with_cuda = with_cuda
        self.__file__ = "/somewhere/_C.cpython-311-x86_64-linux-gnu.so"


FAILED_CUDA = {"status": "built", "variant": "cpu", "torch": "2.11.0+cu130",
               "cuda": "CPU-only: CUDA build failed: roi_align_kernel.cu(37): error: no suitable conversion"}


def test_warning_only_where_a_gpu_meets_cpu_only_kernels():
    message = _native.cuda_kernels_missing_message(True, FakeExtension(False), FAILED_CUDA)
    assert message.startswith("maskrcnn: CUDA is available but the native extension has CPU kernels only "
                              "(CPU-only: CUDA build failed: roi_align_kernel.cu(37)")
    assert "pure-PyTorch references" in message and "MASKRCNN_REQUIRE_CUDA=1" in message
    assert _native.cuda_kernels_missing_message(False, FakeExtension(False), FAILED_CUDA) is None
    assert _native.cuda_kernels_missing_message(True, FakeExtension(True), FAILED_CUDA) is None
    assert _native.cuda_kernels_missing_message(True, None, FAILED_CUDA) is None  # the failed-build warning covers it


def test_import_warns_once_on_a_gpu_machine_with_cpu_only_kernels(monkeypatch):
    """Executes maskrcnn/ops/_native.py again, as a separate module, with a CUDA torch and a GPU
    faked: the CPU-only extension built here then warns at import."""
    if _native._C is None or _native._C.with_cuda:
        pytest.skip("needs the extension built with CPU kernels only")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    spec = importlib.util.spec_from_file_location("native_imported_again", _native.__file__)
    module = importlib.util.module_from_spec(spec)
    with pytest.warns(RuntimeWarning) as warned:
        spec.loader.exec_module(module)
    messages = [str(w.message) for w in warned if "CPU kernels only" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("maskrcnn: CUDA is available")


def test_doctor_says_so(monkeypatch):
    monkeypatch.setattr(_native, "_C", FakeExtension(False))
    monkeypatch.setattr(_native, "BUILD_RECORD", FAILED_CUDA)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(doctor, "smoke_test", lambda device: "ok (faked)")
    text, _ = doctor.report()
    warning = [line for line in text.splitlines() if line.startswith("WARNING")]
    assert warning == [f"{'WARNING':<18} " + _native.cuda_kernels_missing_message(
        True, FakeExtension(False), FAILED_CUDA).removeprefix("maskrcnn: ")]
    assert "cuda: CPU-only: CUDA build failed: roi_align_kernel.cu(37)" in doctor._build_line()
