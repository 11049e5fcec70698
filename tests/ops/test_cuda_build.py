"""Compile checks of the CUDA half of the native extension, for machines without a GPU.

CI builds the extension as a CppExtension (no CUDA), so without these checks the CUDA sources
would first meet a compiler on a user's GPU machine. Here:

* every ``csrc/cuda/*.cu`` kernel file is compiled to an object file by ``nvcc`` for sm_90
  (plain CUDA C++: it needs only the toolkit);
* the ATen glue (``csrc/cuda/*.cpp``) and ``bindings.cpp`` are checked with ``-DWITH_CUDA`` by
  the host compiler (``-fsyntax-only``, which parses and instantiates everything but emits no
  code). The CPU torch wheel lacks one generated header, ``c10/cuda/impl/cuda_cmake_macros.h``;
  the check supplies a one-line stand-in with the same content when it is missing.

What these cannot check: linking against libtorch_cuda / cudart, and running on a GPU (the CUDA
tests in test_native_*.py do that when a GPU is present).
Each check is skipped, saying why, only when its compiler or the CUDA headers are absent.
"""
import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

torch_extension = pytest.importorskip("torch.utils.cpp_extension")

CSRC = Path(__file__).resolve().parents[2] / "maskrcnn" / "ops" / "csrc"
NVCC = shutil.which("nvcc")
CXX = shutil.which("c++") or shutil.which("g++")
GENERATED_HEADER = Path("c10", "cuda", "impl", "cuda_cmake_macros.h")


def cuda_include_dir():
    """The toolkit's include folder (where cuda_runtime_api.h is), found from nvcc or CUDA_HOME."""
    candidates = [Path(NVCC).resolve().parents[1] / "include"] if NVCC else []
    candidates += [Path(os.environ[name]) / "include" for name in ("CUDA_HOME", "CUDA_PATH")
                   if os.environ.get(name)]
    candidates.append(Path("/usr/local/cuda/include"))
    for candidate in candidates:
        if (candidate / "cuda_runtime_api.h").exists():
            return candidate
    return None


def run_all(commands):
    """Runs the commands two at a time; fails listing every command that did not succeed."""
    def run(command):
        return command, subprocess.run(command, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, commands))
    failures = [f"$ {' '.join(c)}\n{r.stdout}{r.stderr}" for c, r in results if r.returncode != 0]
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH: cannot compile-check the .cu files")
def test_cuda_kernel_files_compile_with_nvcc(tmp_path):
    sources = sorted((CSRC / "cuda").glob("*.cu"))
    assert {s.name for s in sources} >= {"roi_align_kernel.cu", "nms_kernel.cu"}
    includes = [f"-I{p}" for p in torch_extension.include_paths()]
    commands = [[NVCC, "-c", "-std=c++20", "-O3", "-gencode=arch=compute_90,code=sm_90", *includes,
                 str(source), "-o", str(tmp_path / f"{source.stem}.o")] for source in sources]
    run_all(commands)
    for source in sources:
        assert (tmp_path / f"{source.stem}.o").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.skipif(CXX is None, reason="no C++ compiler (c++ / g++) on PATH")
@pytest.mark.skipif(cuda_include_dir() is None,
                    reason="CUDA toolkit headers (cuda_runtime_api.h) not found: cannot check the "
                           "CUDA glue")
def test_cuda_glue_and_bindings_compile_with_cuda_enabled(tmp_path):
    torch_includes = torch_extension.include_paths()
    stub_dir = tmp_path / "stub"
    if not any((Path(p) / GENERATED_HEADER).exists() for p in torch_includes):
        # the CPU wheel omits this generated header; a CUDA build of torch has it with this content
        (stub_dir / GENERATED_HEADER).parent.mkdir(parents=True)
        (stub_dir / GENERATED_HEADER).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    flags = ["-std=c++20", "-fsyntax-only", "-DWITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
             "-DTORCH_API_INCLUDE_EXTENSION_H"]
    includes = []
    for folder in (*torch_includes, stub_dir, cuda_include_dir(), sysconfig.get_paths()["include"]):
        includes += ["-isystem", str(folder)]
    sources = sorted((CSRC / "cuda").glob("*.cpp")) + [CSRC / "bindings.cpp"]
    assert {s.name for s in sources} >= {"roi_align_cuda.cpp", "nms_cuda.cpp", "bindings.cpp"}
    run_all([[CXX, *flags, *includes, str(source)] for source in sources])
