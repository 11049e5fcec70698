"""Installs the `maskrcnn` package.

    pip install -r requirements.txt
    pip install --no-build-isolation -e ".[dev]"

The native ROIAlign / NMS extension `maskrcnn.ops._C` (sources in maskrcnn/ops/csrc, see
docs/native.md) is optional and is built here, in one of three ways:

* CppExtension, C++ CPU kernels: the default (CPU-only torch, or no CUDA toolkit found);
* CUDAExtension, CPU and CUDA kernels (adds csrc/cuda/*.cpp, *.cu and the WITH_CUDA define): when
  torch was built with CUDA and a CUDA toolkit is found (nvcc on PATH or CUDA_HOME), or when
  FORCE_CUDA=1. TORCH_CUDA_ARCH_LIST picks the GPU architectures; unset, torch detects the visible
  GPUs, and with none visible (a build machine, a container build) DEFAULT_CUDA_ARCH_LIST is used;
* nothing, when MASKRCNN_BUILD_NATIVE=0.

The CPU kernels are compiled and linked with the OpenMP flags of torch's own build (-fopenmp with
GCC on Linux): at::parallel_for is an inline OpenMP loop, and without them it runs serially.

A failed CUDA build falls back to the CPU build and says so ("CPU-only: CUDA build failed: <first
compiler error>"), unless MASKRCNN_REQUIRE_CUDA=1, which turns a CUDA build that fails or cannot
start into an install error. A failed CPU build warns and installs the pure-PyTorch package anyway
(the ops then run their PyTorch references). The outcome is written to
maskrcnn/ops/_native_build.json; `python -m maskrcnn.doctor` reports it.
--no-build-isolation matters: without it pip would download a fresh torch just to build.

The helpers below are plain functions so that tests/ops/test_native_build.py and
tests/ops/test_cuda_build.py can import this file (setup() runs only as a script, which is also how
pip runs it).
"""
import glob
import json
import os
import re
import sys
import tempfile
import time
import traceback

from setuptools import find_packages, setup

NATIVE_MODULE = "maskrcnn.ops._C"
CSRC = os.path.join("maskrcnn", "ops", "csrc")
BUILD_RECORD = "_native_build.json"  # written next to the compiled module

# GPU architectures built when torch has CUDA but no GPU is visible and TORCH_CUDA_ARCH_LIST is
# unset (torch's own detection would fail: it only looks at visible GPUs). 7.5: T4 / RTX 20xx;
# 8.0: A100, and (binary compatible within a major version) A10, L4, RTX 30xx/40xx; 9.0: H100 /
# H200; +PTX: compute_90 code that the driver compiles for newer GPUs (Blackwell).
DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;9.0+PTX"

CXX_FLAGS = ["-O3", "-g0"]  # -g0: no debug info (Python's CFLAGS ask for -g): faster, smaller
NVCC_FLAGS = ["-O3"]


class CudaRequired(SystemExit):
    """MASKRCNN_REQUIRE_CUDA=1 and the CUDA kernels were not built: the install fails."""


def env_flag(name, environ=None):
    return (environ if environ is not None else os.environ).get(name, "0").strip() == "1"


def cuda_arch_list(environ, visible_gpus):
    """(TORCH_CUDA_ARCH_LIST to build for or None to let torch detect the GPUs, where it came from).

    An explicit TORCH_CUDA_ARCH_LIST always wins; without one, torch's detection needs a visible GPU,
    and with none the stated default is used instead of letting torch fail."""
    chosen = environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if chosen:
        return chosen, "TORCH_CUDA_ARCH_LIST"
    if visible_gpus > 0:
        return None, f"detected by torch from the {visible_gpus} visible GPU(s)"
    return DEFAULT_CUDA_ARCH_LIST, "default: no GPU visible and TORCH_CUDA_ARCH_LIST unset"


def openmp_flags(parallel_info, platform):
    """(compile flags, link flags, note) that make at::parallel_for parallel in the extension.

    ``parallel_info`` is ``torch.__config__.parallel_info()``. With torch's OpenMP backend,
    at::parallel_for expands inline to ``#pragma omp parallel``, which a compiler without its OpenMP
    flag ignores; the extension must also link the OpenMP runtime (on Linux the flag links
    libgomp.so.1, and the dynamic loader reuses the copy torch already loaded, same soname).
    With torch's native thread pool the loop runs inside libtorch and needs no flag."""
    if "parallel backend: OpenMP" not in parallel_info:
        return [], [], "torch's own thread pool: no OpenMP flags needed"
    if platform.startswith("linux"):
        return ["-fopenmp"], ["-fopenmp"], "OpenMP (-fopenmp), as torch's build"
    if platform == "win32":
        return ["/openmp"], [], "OpenMP (/openmp), as torch's build"
    return [], [], (f"OpenMP flags not set on {platform}: the CPU kernels run on one thread")


_ERROR_LINE = re.compile(r"(\berror\b|\bError\b|undefined reference|fatal|: not found)")


def first_error_line(compiler_output, error):
    """The first line of the compiler's output that reports an error, else the exception's text."""
    for line in compiler_output.splitlines():
        if " -c " in line or "Error compiling objects" in line:
            continue  # a command line (its flags may say -Wno-error=...), or torch's summary
        if _ERROR_LINE.search(line):
            return line.strip()
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


class BuildFailure(Exception):
    """One build attempt failed; ``first_error`` is the line that says why."""

    def __init__(self, first_error):
        super().__init__(first_error)
        self.first_error = first_error


def build_with_fallback(build, variant, cuda_state, require_cuda):
    """Runs ``build("cuda")`` then, if that fails, ``build("cpu")``; returns the record's outcome.

    ``build(variant)`` raises :class:`BuildFailure`. ``cuda_state`` says what became of CUDA before
    any compiling (e.g. "CPU-only: torch ... has no CUDA"). With ``require_cuda`` a failed CUDA
    build raises :class:`CudaRequired` instead of falling back.
    Returns {"status": "built" | "failed", "variant": "cuda" | "cpu", "cuda": ..., ["reason": ...]}."""
    if variant == "cuda":
        try:
            build("cuda")
            return {"status": "built", "variant": "cuda", "cuda": cuda_state}
        except BuildFailure as failure:
            cuda_state = f"CPU-only: CUDA build failed: {failure.first_error}"
            if require_cuda:
                raise CudaRequired(f"error: {cuda_state} (MASKRCNN_REQUIRE_CUDA=1)")
            _warn(cuda_state + "; building the CPU kernels only")
    try:
        build("cpu")
        return {"status": "built", "variant": "cpu", "cuda": cuda_state}
    except BuildFailure as failure:
        return {"status": "failed", "variant": "cpu", "cuda": cuda_state,
                "reason": failure.first_error}


class CapturedOutput:
    """Sends what this process and its children write to stdout/stderr into a file while active,
    then copies it to the real stdout: compiler errors reach the build record and the user."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = [os.dup(1), os.dup(2)]
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()
        sys.stdout.write(self.text)
        sys.stdout.flush()
        return False


def _write_build_record(directory, record):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, BUILD_RECORD), "w") as file:
        json.dump(record, file, indent=2)
        file.write("\n")


def _warn(message):
    print(f"WARNING (maskrcnn native extension): {message}", flush=True)


def _remove_stale_inplace_builds():
    """Deletes maskrcnn/ops/_C*.so left by an earlier editable build, so that a skipped or failed
    build really leaves the pure-PyTorch ops in use."""
    for path in glob.glob(os.path.join("maskrcnn", "ops", "_C*.so")) + glob.glob(
        os.path.join("maskrcnn", "ops", "_C*.pyd")
    ):
        os.remove(path)


def native_sources():
    """(CPU sources, CUDA-only sources), relative to the repository root."""
    cpu = [os.path.join(CSRC, "bindings.cpp")] + sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cuda = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cpp"))) + sorted(
        glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    return cpu, cuda


def native_extension(cuda, openmp=None):
    """The setuptools Extension: CPU kernels, plus the CUDA ones when ``cuda``.
    ``openmp``: (compile flags, link flags), by default those of :func:`openmp_flags`."""
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    if openmp is None:
        openmp = openmp_flags(torch.__config__.parallel_info(), sys.platform)[:2]
    omp_compile, omp_link = openmp
    cpu_sources, cuda_sources = native_sources()
    if not cuda:
        return CppExtension(NATIVE_MODULE, cpu_sources, extra_link_args=list(omp_link),
                            extra_compile_args={"cxx": CXX_FLAGS + list(omp_compile)})
    return CUDAExtension(NATIVE_MODULE, cpu_sources + cuda_sources,
                         define_macros=[("WITH_CUDA", None)], extra_link_args=list(omp_link),
                         extra_compile_args={"cxx": CXX_FLAGS + list(omp_compile),
                                             "nvcc": list(NVCC_FLAGS)})


def _native_build_options():
    """setup() keyword arguments for the native extension (empty when it is not built)."""
    ops_dir = os.path.join("maskrcnn", "ops")
    require_cuda = env_flag("MASKRCNN_REQUIRE_CUDA")
    if os.environ.get("MASKRCNN_BUILD_NATIVE", "1").strip() == "0":
        if require_cuda:
            raise CudaRequired("error: MASKRCNN_REQUIRE_CUDA=1 contradicts MASKRCNN_BUILD_NATIVE=0")
        _remove_stale_inplace_builds()
        _write_build_record(ops_dir, {"status": "skipped",
                                      "reason": "MASKRCNN_BUILD_NATIVE=0 when it was installed"})
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension
    except ImportError as error:
        if require_cuda:
            raise CudaRequired(f"error: MASKRCNN_REQUIRE_CUDA=1, but torch is not importable ({error})")
        _warn(f"torch is not importable ({error}); installing without native ops. Install torch "
              "first and use `pip install --no-build-isolation`.")
        _write_build_record(ops_dir, {"status": "failed", "reason": f"torch not importable: {error}"})
        return {}

    omp_compile, omp_link, omp_note = openmp_flags(torch.__config__.parallel_info(), sys.platform)
    record = {"torch": torch.__version__, "openmp": omp_note}
    force_cuda = env_flag("FORCE_CUDA")
    variant = "cpu"
    if torch.version.cuda is None:
        cuda_state = f"CPU-only: torch {torch.__version__} was built without CUDA"
    elif CUDA_HOME is None and not force_cuda:
        cuda_state = "CPU-only: no CUDA toolkit found (nvcc not on PATH, CUDA_HOME unset)"
    else:
        arch_list, arch_source = cuda_arch_list(os.environ, torch.cuda.device_count())
        if arch_list is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list  # read by torch's BuildExtension
        record["cuda_arch_list"] = f"{arch_list or 'the visible GPUs'} ({arch_source})"
        cuda_state = f"built for {record['cuda_arch_list']}"
        variant = "cuda"
    if variant == "cpu" and require_cuda:
        raise CudaRequired(f"error: MASKRCNN_REQUIRE_CUDA=1, but the build would be {cuda_state}")
    if variant == "cpu" and force_cuda:
        _warn(f"FORCE_CUDA=1, but {cuda_state}")
    try:
        extension = native_extension(variant == "cuda", (omp_compile, omp_link))
    except Exception as error:  # e.g. FORCE_CUDA=1 and no toolkit: CUDAExtension needs CUDA_HOME
        cuda_state = f"CPU-only: CUDA build not possible: {first_error_line('', error)}"
        if require_cuda:
            raise CudaRequired(f"error: {cuda_state} (MASKRCNN_REQUIRE_CUDA=1)")
        _warn(cuda_state)
        variant, extension = "cpu", native_extension(False, (omp_compile, omp_link))

    class OptionalBuildExtension(BuildExtension):
        """BuildExtension that only fails the install when MASKRCNN_REQUIRE_CUDA=1:
        CUDA -> CPU -> pure PyTorch, each outcome written to the build record."""

        def run(self):
            started = time.time()
            inplace = self.inplace  # setuptools clears it while building and restores it after,
            compiler = self.compiler  # and run() replaces the compiler's name by the compiler

            def build(kind):
                self.inplace, self.compiler = inplace, compiler  # as they were, for a second run
                if kind == "cpu" and variant == "cuda":
                    # the same Extension object (setuptools has annotated it), with the CPU settings
                    (built,) = self.extensions
                    cpu_settings = vars(native_extension(False, (omp_compile, omp_link)))
                    vars(built).update({k: v for k, v in cpu_settings.items()
                                        if not k.startswith("_")})
                capture = CapturedOutput()
                try:
                    with capture:
                        super(OptionalBuildExtension, self).run()
                except Exception as error:
                    _warn(f"the {kind} build failed:\n" + traceback.format_exc())
                    raise BuildFailure(first_error_line(capture.text, error)) from error

            try:
                outcome = build_with_fallback(build, variant, cuda_state, require_cuda)
            except CudaRequired as error:
                self.inplace = inplace  # a failed build leaves it cleared: the record goes beside the module
                self._write(record, {"status": "failed", "variant": "cuda", "reason": str(error.code)},
                            started)
                raise
            if outcome["status"] == "failed":
                self.inplace = inplace
                _warn("the build failed; installing the pure-PyTorch ops instead. "
                      "Rerun pip with -v for the compiler output.")
                if self.inplace:
                    _remove_stale_inplace_builds()
            self._write(record, outcome, started)

        def _write(self, record, outcome, started):
            record = {**record, **outcome, "build_seconds": round(time.time() - started, 1)}
            _write_build_record(os.path.dirname(self.get_ext_fullpath(NATIVE_MODULE)), record)

    return {"ext_modules": [extension], "cmdclass": {"build_ext": OptionalBuildExtension}}


def main():
    setup(
        name="maskrcnn",
        version="0.1.0",
        description="A from-scratch, pure-PyTorch Mask R-CNN for fashion instance segmentation",
        packages=find_packages(include=["maskrcnn", "maskrcnn.*"]),
        python_requires=">=3.10",
        install_requires=["torch", "numpy", "pillow", "pycocotools", "pyyaml"],
        extras_require={"serve": ["fastapi>=0.100", "uvicorn>=0.22", "python-multipart>=0.0.9"],
                        "dev": ["pytest", "selenium>=4.6", "fastapi>=0.100", "uvicorn>=0.22",
                                "python-multipart>=0.0.9"]},
        package_data={"maskrcnn": ["ops/csrc/**/*", "ops/" + BUILD_RECORD, "serve/static/*"]},
        **_native_build_options(),
    )


if __name__ == "__main__":  # `python setup.py ...` and pip (which runs it as __main__)
    main()
