"""DistributedDataParallel as the trainer builds it does not broadcast the frozen buffers at every
forward (they never change), and works without that broadcast: a one-process gloo group."""
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from maskrcnn.engine import distributed as du
from maskrcnn.modeling.resnet import FrozenBatchNorm2d


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_options_turn_the_per_forward_broadcast_off():
    options = du.ddp_without_buffer_sync()
    assert options in ({"forward_sync_buffers": False}, {"broadcast_buffers": False})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4))
        ddp = nn.parallel.DistributedDataParallel(model, **options)
        broadcasts = ddp.broadcast_buffers  # the property both spellings set
        ddp(torch.rand(1, 3, 8, 8)).sum().backward()
        has_grad = model[0].weight.grad is not None
        # Release DDP and its module (the Reducer holds the process group) before the group is destroyed, as
        # the trainer does: freed afterwards, the gloo group's destructor can wait forever on its worker
        # threads (it hung a CI run here: ~ProcessGroupGloo joining threads from the Reducer's dealloc).
        del ddp, model
    finally:
        dist.destroy_process_group()
    assert broadcasts is False
    assert has_grad
