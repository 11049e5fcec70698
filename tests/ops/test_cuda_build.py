"""Compile check of the CUDA build of the native extension, for machines without a GPU.

CI builds the extension as a CppExtension (CPU torch), so without this check the CUDA sources
would first meet a compiler on a user's GPU machine. The check does not imitate the build: it runs
torch's own ``BuildExtension`` on the ``CUDAExtension`` that ``setup.py`` defines, up to and
including the compile step (torch writes its ninja file and ninja runs nvcc and the host compiler
on every source), and stops before linking. So the nvcc flags are exactly those of a real GPU
build, including ``torch.utils.cpp_extension.COMMON_NVCC_FLAGS`` (``-D__CUDA_NO_HALF_CONVERSIONS__``,
``-D__CUDA_NO_BFLOAT16_CONVERSIONS__``, ...), ``-std=c++20``, ``-fPIC`` and the ``-gencode`` flags
that ``setup.py``'s default arch list gives on a machine without a GPU: they cannot drift.

What has to be faked for a CPU torch wheel, and why it does not change the flags:
* ``CUDA_HOME`` (torch leaves it None when torch has no CUDA): set to the toolkit that nvcc is in;
* ``_check_cuda_version`` (compares nvcc's version with torch's CUDA version, which is None): off;
* the wheel lacks one generated header, ``c10/cuda/impl/cuda_cmake_macros.h``: a one-line stand-in
  (the content a CUDA build of torch has) is put on the include path;
* linking (needs libtorch_cuda and cudart, absent here) is not attempted.
What this cannot check: linking, and running on a GPU (bench/gpu_check.sh and the CUDA tests in
test_native_*.py do that when a GPU is present). Skipped, saying why, only when nvcc, ninja or
the toolkit's headers are absent.
"""
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

cpp_extension = pytest.importorskip("torch.utils.cpp_extension")

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "maskrcnn" / "ops" / "csrc"
GENERATED_HEADER = Path("c10", "cuda", "impl", "cuda_cmake_macros.h")


def load_setup():
    """setup.py as a module (it calls setup() only when run as a script)."""
    spec = importlib.util.spec_from_file_location("maskrcnn_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_home():
    """The toolkit folder (with include/cuda_runtime_api.h and bin/nvcc), or None."""
    candidates = [Path(os.environ[name]) for name in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(name)]
    nvcc = shutil.which("nvcc")
    if nvcc:  # /usr/local/bin/nvcc may be a wrapper script: also try the usual install folder
        candidates.append(Path(nvcc).resolve().parents[1])
    candidates.append(Path("/usr/local/cuda"))
    for candidate in candidates:
        if (candidate / "include" / "cuda_runtime_api.h").exists() and (candidate / "bin" / "nvcc").exists():
            return candidate
    return None


class CompiledEverything(Exception):
    """Raised after the compile step, so that BuildExtension does not try to link."""


def build_cuda_objects(build_dir, monkeypatch):
    """Runs torch's BuildExtension on setup.py's CUDA extension until every object is compiled.
    Returns (the compile step's keyword arguments: sources, objects, cflags, cuda_post_cflags...,
    the TORCH_CUDA_ARCH_LIST used)."""
    from setuptools import Distribution

    setup = load_setup()
    arch_list, _ = setup.cuda_arch_list({}, visible_gpus=0)  # what setup.py uses without a GPU
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch_list)
    monkeypatch.setenv("MAX_JOBS", "2")  # a shared machine
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(cuda_home()))
    monkeypatch.setattr(cpp_extension, "_check_cuda_version", lambda *args: None)
    compile_objects = cpp_extension._write_ninja_file_and_compile_objects
    seen = {}

    def compile_then_stop(**kwargs):
        seen.update(kwargs)
        compile_objects(**kwargs)  # torch's ninja file, run by ninja: the real compile
        raise CompiledEverything

    monkeypatch.setattr(cpp_extension, "_write_ninja_file_and_compile_objects", compile_then_stop)
    monkeypatch.chdir(ROOT)  # setup.py names its sources relative to the repository root
    extension = setup.native_extension(cuda=True)
    if not any(Path(p, GENERATED_HEADER).exists() for p in cpp_extension.include_paths()):
        stub = build_dir / "stub"
        (stub / GENERATED_HEADER).parent.mkdir(parents=True)
        (stub / GENERATED_HEADER).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        extension.include_dirs.append(str(stub))
    distribution = Distribution({"name": "maskrcnn_cuda_compile_check", "ext_modules": [extension],
                                 "cmdclass": {"build_ext": cpp_extension.BuildExtension}})
    command = distribution.get_command_obj("build_ext")
    command.build_temp, command.build_lib = str(build_dir / "temp"), str(build_dir / "lib")
    command.ensure_finalized()
    command.use_ninja = True  # the default wherever ninja is installed (checked below)
    with pytest.raises(CompiledEverything):
        command.run()
    return seen, arch_list


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None and cuda_home() is None,
                    reason="nvcc not found: cannot compile-check the CUDA sources")
@pytest.mark.skipif(cuda_home() is None,
                    reason="CUDA toolkit headers (include/cuda_runtime_api.h) not found")
@pytest.mark.skipif(not cpp_extension.is_ninja_available(), reason="ninja not installed")
def test_cuda_extension_compiles_under_torchs_build_extension(tmp_path, monkeypatch):
    seen, arch_list = build_cuda_objects(tmp_path, monkeypatch)

    sources = {Path(os.path.abspath(s)).relative_to(CSRC).as_posix() for s in seen["sources"]}
    assert sources >= {"bindings.cpp", "cpu/roi_align_cpu.cpp", "cpu/nms_cpu.cpp",
                       "cuda/roi_align_cuda.cpp", "cuda/nms_cuda.cpp",
                       "cuda/roi_align_kernel.cu", "cuda/nms_kernel.cu"}
    for obj in seen["objects"]:
        assert Path(obj).stat().st_size > 0, obj
    # the flags the .cu files were compiled with are torch's, not a copy of them
    nvcc_flags = " ".join(seen["cuda_post_cflags"])
    for flag in cpp_extension.COMMON_NVCC_FLAGS:
        assert flag in nvcc_flags
    assert "-std=c++20" in nvcc_flags
    for arch in arch_list.replace("+PTX", "").split(";"):
        number = arch.replace(".", "")
        assert f"-gencode=arch=compute_{number},code=sm_{number}" in nvcc_flags
    assert "-DWITH_CUDA" in " ".join(seen["cuda_cflags"] + seen["cflags"])
    openmp_compile_flags, _, _ = load_setup().openmp_flags(torch.__config__.parallel_info(), sys.platform)
    for flag in openmp_compile_flags:  # -fopenmp on Linux: the CPU kernels' threads
        assert flag in seen["post_cflags"]
