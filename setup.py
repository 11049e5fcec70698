"""Installs the `maskrcnn` package.

    pip install -r requirements.txt
    pip install --no-build-isolation -e ".[dev]"

The native ROIAlign / NMS extension `maskrcnn.ops._C` (sources in maskrcnn/ops/csrc, see
docs/native.md) is optional and is built here, in one of three ways:

* CppExtension, C++ CPU kernels: the default (CPU-only torch, or no CUDA toolkit found);
* CUDAExtension, CPU and CUDA kernels (adds csrc/cuda/*.cu and the WITH_CUDA define): when torch
  was built with CUDA and a CUDA toolkit is found (nvcc on PATH or CUDA_HOME), or when
  FORCE_CUDA=1 (e.g. building in a container without a GPU); TORCH_CUDA_ARCH_LIST picks the GPU
  architectures;
* nothing, when MASKRCNN_BUILD_NATIVE=0.

A failed CUDA build falls back to the CPU build; a failed CPU build warns and installs the
pure-PyTorch package anyway (the ops then run their PyTorch references). Either way the outcome is
written to maskrcnn/ops/_native_build.json, and `python -m maskrcnn.doctor` reports it.
--no-build-isolation matters: without it pip would download a fresh torch just to build.
"""
import glob
import json
import os
import time
import traceback

from setuptools import find_packages, setup

NATIVE_MODULE = "maskrcnn.ops._C"
CSRC = os.path.join("maskrcnn", "ops", "csrc")
BUILD_RECORD = "_native_build.json"  # written next to the compiled module


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


def _native_build_options():
    """setup() keyword arguments for the native extension (empty when it is not built)."""
    if os.environ.get("MASKRCNN_BUILD_NATIVE", "1").strip() == "0":
        _remove_stale_inplace_builds()
        _write_build_record(
            os.path.join("maskrcnn", "ops"),
            {"status": "skipped", "reason": "MASKRCNN_BUILD_NATIVE=0 when it was installed"},
        )
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as error:
        _warn(f"torch is not importable ({error}); installing without native ops. Install torch "
              "first and use `pip install --no-build-isolation`.")
        _write_build_record(os.path.join("maskrcnn", "ops"),
                            {"status": "failed", "reason": f"torch not importable: {error}"})
        return {}

    cpu_sources = [os.path.join(CSRC, "bindings.cpp")] + sorted(
        glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cpp"))) + sorted(
        glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    # -g0: no debug info (Python's CFLAGS ask for -g), which builds faster and smaller
    cxx_flags = ["-O3", "-g0"]

    def cpu_extension():
        return CppExtension(NATIVE_MODULE, cpu_sources, extra_compile_args={"cxx": cxx_flags})

    force_cuda = os.environ.get("FORCE_CUDA", "0").strip() == "1"
    want_cuda = force_cuda or (torch.version.cuda is not None and CUDA_HOME is not None)
    notes = []
    extension, variant = None, "cpu"
    if want_cuda and torch.version.cuda is None:
        notes.append(f"FORCE_CUDA=1, but torch {torch.__version__} was built without CUDA; "
                     "built the CPU kernels only")
        _warn(notes[-1])
    elif want_cuda:
        try:
            extension = CUDAExtension(
                NATIVE_MODULE,
                cpu_sources + cuda_sources,
                define_macros=[("WITH_CUDA", None)],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            )
            variant = "cuda"
        except Exception as error:  # e.g. FORCE_CUDA=1 and no toolkit: no CUDA_HOME
            notes.append(f"CUDA build not possible ({error}); built the CPU kernels only")
            _warn(notes[-1])
    if extension is None:
        extension = cpu_extension()

    class OptionalBuildExtension(BuildExtension):
        """BuildExtension that never fails the install: CUDA -> CPU -> pure PyTorch."""

        def run(self):
            started = time.time()
            inplace = self.inplace  # setuptools clears it while building and restores it after,
            compiler = self.compiler  # and run() replaces the compiler's name by the compiler
            record = {"torch": torch.__version__, "variant": variant, "notes": notes}
            try:
                super().run()
                record["status"] = "built"
            except Exception as error:
                self.inplace, self.compiler = inplace, compiler  # as they were, for a second run
                if variant == "cuda":
                    notes.append(f"CUDA build failed ({_last_line(error)}); retried with the CPU "
                                 "kernels only")
                    _warn(notes[-1] + "\n" + traceback.format_exc())
                    # the same Extension object (setuptools has annotated it), with the CPU settings
                    (extension,) = self.extensions
                    cpu_settings = vars(cpu_extension())
                    vars(extension).update({k: v for k, v in cpu_settings.items()
                                            if not k.startswith("_")})
                    record["variant"] = "cpu"
                    try:
                        super().run()
                        record["status"] = "built"
                    except Exception as cpu_error:
                        self.inplace = inplace
                        self._record_failure(record, cpu_error)
                else:
                    self._record_failure(record, error)
            record["build_seconds"] = round(time.time() - started, 1)
            _write_build_record(os.path.dirname(self.get_ext_fullpath(NATIVE_MODULE)), record)

        def _record_failure(self, record, error):
            record["status"] = "failed"
            record["reason"] = _last_line(error)
            _warn("the build failed; installing the pure-PyTorch ops instead. "
                  "Rerun pip with -v for the compiler output.\n" + traceback.format_exc())
            if self.inplace:
                _remove_stale_inplace_builds()

    return {"ext_modules": [extension], "cmdclass": {"build_ext": OptionalBuildExtension}}


def _last_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


setup(
    name="maskrcnn",
    version="0.1.0",
    description="A from-scratch, pure-PyTorch Mask R-CNN for fashion instance segmentation",
    packages=find_packages(include=["maskrcnn", "maskrcnn.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "pillow", "pycocotools", "pyyaml"],
    extras_require={"serve": ["fastapi>=0.100", "uvicorn>=0.22", "python-multipart>=0.0.9"],
                    "dev": ["pytest", "selenium>=4.6", "fastapi>=0.100", "uvicorn>=0.22", "python-multipart>=0.0.9"]},
    package_data={"maskrcnn": ["ops/csrc/**/*", "ops/" + BUILD_RECORD, "serve/static/*"]},
    **_native_build_options(),
)
