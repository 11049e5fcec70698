"""What the native-kernel tests (test_native_nms.py, test_native_roi_align.py) share: the device list with
its visible CUDA skip, the check that the extension was built, and a spy that records which kernels ran."""
import pytest
import torch

from maskrcnn.ops import _native

NO_GPU = "no CUDA device (torch.cuda.is_available() is False)"
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason=NO_GPU)])]


def require_native_extension():
    """The compiled extension. Its absence fails the test, unless the build was switched off on
    purpose (MASKRCNN_BUILD_NATIVE=0), which skips it, saying so."""
    if _native._C is None:
        record = _native.BUILD_RECORD or {}
        if record.get("status") == "skipped":
            pytest.skip(f"native extension not built: {record.get('reason')}")
        pytest.fail(f"native extension {_native.extension_status()}")
    return _native._C


def needs_cuda_kernels(device):
    if device == "cuda" and not _native._C.with_cuda:
        pytest.fail("CUDA is available but the extension was built without CUDA kernels: "
                    + _native.extension_status())


class CountingExtension:
    """Stands in for maskrcnn.ops._C and records which of its functions were called."""

    def __init__(self, extension):
        self._extension = extension
        self.calls = []

    def __getattr__(self, name):
        attribute = getattr(self._extension, name)
        if not callable(attribute):
            return attribute

        def counted(*args, **kwargs):
            self.calls.append(name)
            return attribute(*args, **kwargs)

        return counted


@pytest.fixture(params=["native", "reference"])
def backend(request, monkeypatch):
    """Forces one backend of the public ops; yields (name, spy on the extension)."""
    spy = CountingExtension(_native._C)
    monkeypatch.setattr(_native, "_C", spy)
    monkeypatch.setenv("MASKRCNN_NATIVE", "1" if request.param == "native" else "0")
    return request.param, spy
