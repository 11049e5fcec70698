"""Reference numbers from torchvision 0.28 (copied from ../shared/reference; see its README)."""
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _load(name):
    return torch.load(FIXTURES / name, weights_only=True)


@pytest.fixture(scope="session")
def boxes_ref():
    return _load("boxes.pt")


@pytest.fixture(scope="session")
def nms_ref():
    return _load("nms.pt")


@pytest.fixture(scope="session")
def roi_align_ref():
    return _load("roi_align.pt")
