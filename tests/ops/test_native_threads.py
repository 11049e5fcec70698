"""The C++ CPU kernels really run on the threads torch.set_num_threads asks for, and their results
do not depend on how many there are.

at::parallel_for is an inline OpenMP loop in this torch build; an extension compiled or linked
without -fopenmp runs it serially (one thread did ~91 % of the work before setup.py passed the
flag). Wall time cannot show this on a loaded shared machine, so the check reads the CPU time of
every thread of this process from /proc/self/task/*/stat (OpenMP's threads are not Python
threads) before and after a workload, and compares the shares: with n threads, the n busiest
threads must each have done at least a quarter of what the busiest did. A serial kernel gives the
second thread about nothing. CPU time counts work done, not waiting, so other processes' load
does not change the shares; the workloads are repeated until they add up to a second of CPU time
(/proc counts in 10 ms ticks).

What is parallel over what (docs/native.md): ROIAlign forward over ROIs, backward over channel
ranges, both with the layout transposes over tiles; NMS is a greedy scan, serial by nature, so
only its thread-count independence is checked.
"""
import os
import sys

import pytest
import torch

from native_support import require_native_extension

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="per-thread CPU time is read from Linux's /proc")

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MIN_CPU_SECONDS = 1.0  # per measurement: 100 ticks, so a 25 % share is far above the tick size
MIN_SHARE = 0.25


def thread_cpu_seconds():
    """{thread id: user + system CPU seconds} for every thread of this process."""
    seconds = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as file:
                stat = file.read()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # fields 3.. of proc(5); the name may hold spaces
        seconds[tid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND  # utime, stime
    return seconds


def cpu_seconds_per_thread(work):
    """Runs ``work()`` until the process has spent MIN_CPU_SECONDS on it (at most 50 times);
    returns each thread's CPU seconds over that time, busiest first."""
    before = thread_cpu_seconds()
    for _ in range(50):
        work()
        after = thread_cpu_seconds()
        spent = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
        if sum(spent) >= MIN_CPU_SECONDS:
            break
    return spent


def workload(seed=0):
    """A P2-sized map of one 600x800 image batch (2 images, 256 channels) and 1500 ROIs."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(2, 256, 150, 200, generator=generator)
    corners = torch.rand(1500, 2, generator=generator) * torch.tensor([700.0, 500.0])
    sizes = 16 + torch.rand(1500, 2, generator=generator) * 200
    batch = torch.randint(0, 2, (1500, 1), generator=generator).float()
    rois = torch.cat([batch, corners, corners + sizes], dim=1)
    grad = torch.rand(1500, 256, 7, 7, generator=generator)
    return features, rois, grad


@pytest.fixture
def threads():
    """Sets torch's thread count for one test and restores it after."""
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


@pytest.mark.slow
@pytest.mark.parametrize("num_threads", [2, 4])
@pytest.mark.parametrize("step", ["forward", "backward"])
def test_roi_align_shares_its_work_between_threads(threads, num_threads, step):
    extension = require_native_extension()
    features, rois, grad = workload()
    threads(num_threads)
    if step == "forward":
        def work():
            extension.roi_align_forward(features, rois, 0.25, 7, 7, 2, False)
    else:
        def work():
            extension.roi_align_backward(grad, rois, 0.25, 7, 7, 2, 256, 150, 200, 2, False)
    spent = cpu_seconds_per_thread(work)
    busiest, others = spent[0], spent[1:num_threads]
    shares = [round(t / busiest, 2) for t in others]
    print(f"{step}, {num_threads} threads: busiest {busiest:.2f} s CPU, others' shares {shares}")
    assert len(others) == num_threads - 1 and min(others) >= MIN_SHARE * busiest, (
        f"ROIAlign {step} with {num_threads} threads: CPU seconds per thread {spent[:num_threads + 1]}"
        "; the extension's at::parallel_for runs serially (built without -fopenmp?)")


@pytest.mark.slow
def test_results_are_bit_identical_for_1_2_and_4_threads(threads):
    extension = require_native_extension()
    features, rois, grad = workload(seed=1)
    features, rois, grad = features[:, :64], rois[:400], grad[:400, :64]  # smaller: 3 runs each
    generator = torch.Generator().manual_seed(2)
    boxes = rois[:, 1:].repeat(5, 1) + torch.rand(2000, 4, generator=generator) * 8
    scores = torch.rand(2000, generator=generator)
    results = {}
    for num_threads in (1, 2, 4):
        threads(num_threads)
        results[num_threads] = (
            extension.roi_align_forward(features, rois, 0.25, 7, 7, 2, False),
            extension.roi_align_backward(grad, rois, 0.25, 7, 7, 2, 64, 150, 200, 2, False),
            extension.roi_align_forward(features.double(), rois.double(), 0.25, 14, 14, 0, True),
            extension.nms(boxes, scores, 0.5),
        )
    for num_threads in (2, 4):
        for name, one, many in zip(("forward", "backward", "forward float64 adaptive", "nms"),
                                   results[1], results[num_threads]):
            assert torch.equal(one, many), f"{name} differs between 1 and {num_threads} threads"
    assert 0 < len(results[1][3]) < 2000  # NMS kept some boxes and suppressed others
