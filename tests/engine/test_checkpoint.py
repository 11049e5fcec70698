"""Training-state checkpoints: round trip under weights_only, RNG states, exact resume, atomic writes."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from maskrcnn.config import config_from_dict, load_config
from maskrcnn.checkpoint import CheckpointError
from maskrcnn.engine.checkpoint import (
    LAST_CHECKPOINT_FILE,
    CheckpointWriteError,
    atomic_write,
    checkpoint_path,
    find_last_checkpoint,
    find_resume_checkpoint,
    remove_interrupted_writes,
    get_rng_states,
    load_checkpoint,
    save_checkpoint,
    set_rng_states,
)
from maskrcnn.engine.solver import LrSchedule, build_lr_scheduler, build_optimizer
from maskrcnn.engine.stages import plan_stages


class Net(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(4, 8)
        self.drop = nn.Dropout(0.3)  # draws from the torch RNG every step
        self.fc2 = nn.Linear(8, 1)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def _training_objects(seed):
    model = Net(seed)
    schedule = LrSchedule(base_lr=0.05, max_iter=12, stages=tuple(plan_stages([], 12, 0.05)), steps=(6,), warmup_iters=3)
    optimizer = build_optimizer(model, base_lr=0.05, momentum=0.9, weight_decay=1e-3)
    scheduler = build_lr_scheduler(optimizer, schedule)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return model, optimizer, scheduler, scaler


def _train(model, optimizer, scheduler, scaler, start, stop, on_iteration=None):
    """Iterations start..stop-1; data come from python, numpy and torch RNGs, so all three must resume."""
    losses = []
    for iteration in range(start, stop):
        x = torch.randn(16, 4) + float(np.random.rand()) + random.random()
        y = x.sum(dim=1, keepdim=True)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(loss.item())
        if on_iteration is not None:
            on_iteration(iteration + 1)
    return losses


def _seed_all(seed):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)


def test_resume_gives_the_same_losses(tmp_path):
    _seed_all(1)
    objects = _training_objects(seed=0)

    def save_at_7(done):
        if done == 7:
            save_checkpoint(checkpoint_path(str(tmp_path), done), model=objects[0], optimizer=objects[1],
                            scheduler=objects[2], grad_scaler=objects[3], iteration=done)

    uninterrupted = _train(*objects, 0, 12, on_iteration=save_at_7)

    _seed_all(999)  # a new process: other RNG states and other initial weights
    model, optimizer, scheduler, scaler = _training_objects(seed=123)
    state = load_checkpoint(find_last_checkpoint(str(tmp_path)), model=model, optimizer=optimizer,
                            scheduler=scheduler, grad_scaler=scaler)
    assert state["iteration"] == 7
    resumed = _train(model, optimizer, scheduler, scaler, state["iteration"], 12)
    assert resumed == uninterrupted[7:]  # bit for bit
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005, rel=1e-12)  # past the step at 6
    torch.testing.assert_close(model.state_dict(), objects[0].state_dict(), rtol=0, atol=0)


def test_file_loads_with_weights_only_and_keeps_everything(tmp_path):
    cfg = load_config(overrides=["solver.base_lr=0.005", "solver.stages=[{name: heads, iters: 3}]"])
    model, optimizer, scheduler, scaler = _training_objects(seed=0)
    _train(model, optimizer, scheduler, scaler, 0, 2)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    random.gauss(0, 1)  # and one in Python's
    path = save_checkpoint(str(tmp_path / "model_0000002.pth"), model=model, optimizer=optimizer, scheduler=scheduler,
                           grad_scaler=scaler, iteration=2, config=cfg, class_names=["top", "skirt"],
                           extra={"sampler_epoch": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["iteration"] == 2 and raw["class_names"] == ["top", "skirt"] and raw["extra"] == {"sampler_epoch": 3}
    assert isinstance(raw["config"], dict) and config_from_dict(raw["config"]) == cfg
    assert raw["grad_scaler"]["scale"] == 1024.0
    assert raw["scheduler"]["last_epoch"] == 2
    assert len(raw["rng_states"]) == 1 and raw["rng_states"][0]["numpy"]["has_gauss"] == 1
    assert raw["rng_states"][0]["python"]["gauss_next"] is not None


def test_rng_states_round_trip():
    _seed_all(5)
    np.random.randn()  # odd number of Gaussians: one is cached
    random.gauss(0, 1)
    states = get_rng_states()
    first = (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3).tolist())
    _seed_all(6)
    set_rng_states(states)
    second = (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3).tolist())
    assert first == second


def test_last_checkpoint_pointer_and_scan(tmp_path):
    folder = str(tmp_path)
    assert find_last_checkpoint(folder) is None
    assert find_last_checkpoint(str(tmp_path / "missing")) is None
    model = nn.Linear(2, 2)
    save_checkpoint(checkpoint_path(folder, 20), model=model, iteration=20)
    save_checkpoint(checkpoint_path(folder, 10), model=model, iteration=10)  # the pointer names the latest save
    assert open(tmp_path / LAST_CHECKPOINT_FILE).read() == "model_0000010.pth"
    assert find_last_checkpoint(folder) == checkpoint_path(folder, 10)
    os.remove(checkpoint_path(folder, 10))  # stale pointer: scan for the highest iteration
    save_checkpoint(checkpoint_path(folder, 5), model=model, iteration=5, update_last=False)
    assert find_last_checkpoint(folder) == checkpoint_path(folder, 20)
    os.remove(tmp_path / LAST_CHECKPOINT_FILE)
    assert find_last_checkpoint(folder) == checkpoint_path(folder, 20)
    assert sorted(os.listdir(folder)) == ["model_0000005.pth", "model_0000020.pth"]  # no temporary files left


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "model_0000001.pth")
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half of a new file")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(path, fail)
    assert open(path, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["model_0000001.pth"]


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    folder = str(tmp_path)
    model = nn.Linear(2, 2)
    save_checkpoint(checkpoint_path(folder, 1), model=model, iteration=1)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"the first bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match=f"no space left on device while writing .*model_0000002.pth$"):
        save_checkpoint(checkpoint_path(folder, 2), model=model, iteration=2)
    assert sorted(os.listdir(folder)) == ["last_checkpoint", "model_0000001.pth"]  # no partial or temporary file
    assert open(tmp_path / LAST_CHECKPOINT_FILE).read() == "model_0000001.pth"


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    folder = str(tmp_path)
    assert find_resume_checkpoint(folder) == (None, None)
    model = nn.Linear(2, 2)
    for iteration in (1, 2, 3):
        save_checkpoint(checkpoint_path(folder, iteration), model=model, iteration=iteration)
    with open(checkpoint_path(folder, 3), "r+b") as f:
        f.truncate(100)  # cut short, e.g. by a full disk
    open(checkpoint_path(folder, 2), "wb").close()  # empty
    path, state = find_resume_checkpoint(folder)
    assert path == checkpoint_path(folder, 1) and state["iteration"] == 1
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"warning: {checkpoint_path(folder, 3)}: not a loadable checkpoint (truncated or corrupted: its zip archive "
        "is incomplete); trying the next older checkpoint",
        f"warning: {checkpoint_path(folder, 2)}: not a loadable checkpoint (empty: 0 bytes); trying the next "
        "older checkpoint"]
    os.remove(checkpoint_path(folder, 1))
    with pytest.raises(CheckpointError, match=r"no loadable checkpoint to resume from \(unreadable: "
                                              r"model_0000003.pth, model_0000002.pth\)"):
        find_resume_checkpoint(folder, verbose=False)


def test_interrupted_writes_leave_temporaries_that_are_removed(tmp_path):
    (tmp_path / ".model_0000004.pth.123.tmp").write_bytes(b"half")
    (tmp_path / ".last_checkpoint.77.tmp").write_bytes(b"m")
    (tmp_path / "model_0000002.pth").write_bytes(b"kept")
    (tmp_path / ".hidden").write_bytes(b"not ours")
    removed = remove_interrupted_writes(str(tmp_path))
    assert [os.path.basename(p) for p in removed] == [".last_checkpoint.77.tmp", ".model_0000004.pth.123.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "model_0000002.pth"]


def test_wrapped_model_saves_bare_names(tmp_path):
    model = nn.Linear(3, 2)
    path = save_checkpoint(str(tmp_path / "model_0000001.pth"), model=nn.DataParallel(model), iteration=1)
    assert set(torch.load(path, weights_only=True)["model"]) == {"weight", "bias"}
    other = nn.Linear(3, 2)
    load_checkpoint(path, model=nn.DataParallel(other), restore_rng=False)
    torch.testing.assert_close(other.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_load_errors(tmp_path):
    plain = str(tmp_path / "weights.pth")
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="weights.pth: not a loadable checkpoint .not a maskrcnn training state"):
        load_checkpoint(plain)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_checkpoint(str(tmp_path / "nowhere.pth"))
    model = nn.Linear(2, 2)
    path = save_checkpoint(str(tmp_path / "model_0000003.pth"), model=model, iteration=3)
    with pytest.raises(ValueError, match="has no optimizer state"):
        load_checkpoint(path, optimizer=build_optimizer(model, base_lr=0.1))
    with pytest.raises(ValueError, match="RNG states for 1 rank"):
        load_checkpoint(path, rank=1)
    assert load_checkpoint(path, rank=1, restore_rng=False)["iteration"] == 3
    with pytest.raises(CheckpointError, match=r"model_0000003.pth: its model does not fit the one the config builds "
                                              r".*size mismatch for weight"):
        load_checkpoint(path, model=nn.Linear(3, 2))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rng_states_restore_from_a_checkpoint_mapped_to_the_gpu(tmp_path):
    # The trainer loads with map_location=device; generators need their states back on the CPU.
    torch.cuda.manual_seed_all(3)
    path = save_checkpoint(str(tmp_path / "model_0000001.pth"), model=nn.Linear(2, 2), iteration=1)
    first = (torch.rand(2).tolist(), torch.rand(2, device="cuda").tolist(), np.random.rand(2).tolist())
    torch.cuda.manual_seed_all(4)
    state = load_checkpoint(path, map_location="cuda")
    assert state["rng_states"][0]["torch"].device.type == "cuda"
    second = (torch.rand(2).tolist(), torch.rand(2, device="cuda").tolist(), np.random.rand(2).tolist())
    assert first == second
