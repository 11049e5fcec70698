"""torch.distributed helpers: a real 2-process gloo group on CPU, the single-process fallbacks, batch split.

The two processes are started the way ``torchrun`` starts them: with RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT in the environment, read by ``init_distributed``.
"""
import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from maskrcnn.engine import distributed as du
from maskrcnn.engine.evaluation import gather_predictions


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prediction(image_id, score):
    return {"image_id": image_id, "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1]),
            "scores": torch.tensor([score]), "masks": torch.ones(1, 1, 6, 6)}


def _worker(rank, world_size, port, out_dir):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    info = du.init_distributed("cpu", timeout_minutes=1)
    result = {
        "info": [info.rank, info.world_size, info.local_rank, str(info.device), info.backend],
        "helpers": [du.get_rank(), du.get_world_size(), du.get_local_rank(), du.is_main_process()],
        # rank 1 contributes an empty list, as a rank whose images produced nothing would
        "gathered": du.all_gather_object({"rank": rank, "items": list(range(3 * (1 - rank)))}),
        "mean": du.reduce_mean({"loss": torch.tensor(rank + 1.0), "loss_mask": torch.tensor(4.0 * rank)}),
        "broadcast": du.broadcast_object("rank 0 decides" if rank == 0 else None),
    }
    # Evaluation gathering: rank 0 saw images 1 and 2; rank 1 saw none at all, then image 2 again
    # (a distributed sampler pads by repeating images) in a second call.
    mine = [_prediction(1, 0.9), _prediction(2, 0.8)] if rank == 0 else []
    result["predictions"] = [(p["image_id"], p["scores"]) for p in gather_predictions(mine)]
    padded = [_prediction(2, 0.8)] if rank == 1 else [_prediction(1, 0.9), _prediction(2, 0.8)]
    result["padded"] = [p["image_id"] for p in gather_predictions(padded)]
    du.synchronize()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    du.destroy_distributed()


@pytest.mark.slow
def test_two_process_gloo_group(tmp_path):
    world_size = 2
    context = mp.spawn(_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size, join=False)
    deadline = time.time() + 180
    while not context.join(timeout=5):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process group did not finish within 180 s (a collective hung)")
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(world_size)]
    for rank, result in enumerate(results):
        assert result["info"] == [rank, 2, rank, "cpu", "gloo"]
        assert result["helpers"] == [rank, 2, rank, rank == 0]
        assert result["gathered"] == [{"rank": 0, "items": [0, 1, 2]}, {"rank": 1, "items": []}]
        assert result["mean"] == {"loss": 1.5, "loss_mask": 2.0}
        assert result["broadcast"] == "rank 0 decides"
        assert result["predictions"] == [[1, [0.8999999761581421]], [2, [0.800000011920929]]]
        assert result["padded"] == [1, 2]


def test_single_process_fallbacks(monkeypatch):
    for name in du.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    info = du.init_distributed("cpu")
    assert info == du.DistributedInfo(0, 1, 0, torch.device("cpu"), None)
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.is_main_process()
    assert du.all_gather_object({"a": 1}) == [{"a": 1}]
    assert du.broadcast_object(7) == 7
    assert du.reduce_mean({"b": torch.tensor(2.5), "a": torch.tensor([1.0])}) == {"a": 1.0, "b": 2.5}
    du.synchronize()  # a no-op


def test_missing_torchrun_variables_are_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(RuntimeError, match="MASTER_ADDR, MASTER_PORT not set"):
        du.init_distributed("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        du.init_distributed("cpu")


def test_per_rank_batch_size():
    assert du.per_rank_batch_size(16, 8) == 2
    assert du.per_rank_batch_size(16, 1) == 16
    assert du.per_rank_batch_size(4, 4) == 1
    with pytest.raises(ValueError, match=r"solver.ims_per_batch=16 .* not divisible by the 3 processes.* 15 or 18"):
        du.per_rank_batch_size(16, 3)
    with pytest.raises(ValueError, match="solver.ims_per_batch=2 .* 4 processes; use a multiple of 4, e.g. 4$"):
        du.per_rank_batch_size(2, 4)
    with pytest.raises(ValueError, match="must be positive"):
        du.per_rank_batch_size(0, 2)


def test_resolve_device():
    assert du.resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert du.resolve_device("auto", local_rank=1) == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            du.resolve_device("cuda")
