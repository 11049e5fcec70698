"""The HTTP server under load: requests per second and latency percentiles, 8 clients on loopback.

    python bench/serve.py                                  # a random-init demo-sized model, max batch 1 vs 4
    python bench/serve.py --weights output/synthetic_demo/model_0001000.pth --max-batch 1 4 --rounds 3

- **server**: ``python -m maskrcnn.serve`` on 127.0.0.1 (a free port), one process per ``--max-batch`` value,
  all started before any measurement; ``--threads`` torch threads each (default 1);
- **model**: ``--weights``, or the architecture of ``configs/synthetic_demo.yaml`` (ResNet-18 FPN at 128
  pixels, 8 classes) with random weights and a fixed seed. Random weights score every detection alike, so
  their requests ask for ``score_thresh=0&max_detections=10`` (about the 10 items per image the trained demo
  model finds on the synthetic set); a trained checkpoint is asked with its own defaults;
- **images**: ``--images`` synthetic 128x128 photos (``maskrcnn.data.synthetic.render_image``), JPEG;
- **load**: ``--clients`` threads (default 8), each posting the images in turn (multipart, as a browser does)
  and waiting for the JSON answer before sending the next; a round ends after ``--requests`` answers or
  ``--seconds``, whichever comes first. Rounds alternate between the servers (``--rounds`` each), so a
  machine whose load changes affects each setting alike; the numbers are over all rounds of a setting;
- **reported**: answers per second (answers / wall time of the rounds), latency p50 / p90 / p99 / max
  (client side: request sent to answer read), the mean batch the server ran (``/healthz`` counters), and
  the load average during the run (other jobs on a shared machine slow everything down: compare settings
  measured together, not numbers from different runs).

Nothing is asserted. It prints a Markdown table (docs/benchmarks.md, section "Serving").
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests", "serve"))  # the test suite's server runner and client

from serve_support import multipart, running_server  # noqa: E402


def demo_sized_checkpoint(path: str) -> str:
    """configs/synthetic_demo.yaml's model with random weights (seed 0), saved as training saves it."""
    import torch

    from maskrcnn.config import load_config
    from maskrcnn.data.synthetic import CLASS_NAMES
    from maskrcnn.modeling import build_model

    cfg = load_config(os.path.join(REPO, "configs", "synthetic_demo.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": list(CLASS_NAMES)}, path)
    return path


def synthetic_jpegs(count: int, size: int = 128) -> List[bytes]:
    from PIL import Image

    from maskrcnn.data.synthetic import render_image

    rng = np.random.default_rng(0)
    pictures = []
    for _ in range(count):
        image, _objects = render_image(rng, size, size)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        pictures.append(buffer.getvalue())
    return pictures


def run_round(server, bodies, query: str, clients: int, requests: int, seconds: float) -> Dict[str, object]:
    """``clients`` threads posting until ``requests`` answers or ``seconds``; latencies and wall time."""
    latencies, failures, lock = [], [], threading.Lock()
    stop_at = time.monotonic() + seconds
    sent = [0]

    def client(k: int) -> None:
        position = k
        while True:
            with lock:
                if sent[0] >= requests or time.monotonic() >= stop_at:
                    return
                sent[0] += 1
            body, content_type = bodies[position % len(bodies)]
            position += clients
            started = time.perf_counter()
            status, _, answer = server.post("/predict" + query, body, content_type, timeout=300)
            elapsed = time.perf_counter() - started
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    failures.append((status, answer[:200]))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "failures": failures, "wall": time.perf_counter() - started}


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="checkpoint (default: a random-init demo-sized model)")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 4], help="settings compared (default 1 4)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=120, help="answers per round (default 120)")
    parser.add_argument("--seconds", type=float, default=60.0, help="longest round (default 60 s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per setting, alternating (default 2)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server (default 1)")
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="bench_serve_")
    weights = args.weights or demo_sized_checkpoint(os.path.join(folder, "demo_sized_random.pth"))
    query = "" if args.weights else "?score_thresh=0&max_detections=10"
    bodies = [multipart("image", f"photo_{k}.jpg", data, "image/jpeg") for k, data in
              enumerate(synthetic_jpegs(args.images))]
    loads = [os.getloadavg()[0]]
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the start; {args.clients} clients; "
          f"weights {os.path.basename(weights)}; query {query or '(defaults)'}", flush=True)

    with_servers = [running_server(weights, "--threads", str(args.threads), "--max-batch", str(batch),
                                   "--max-queue", str(4 * args.clients), "--timeout", "300",
                                   log_dir=folder) for batch in args.max_batch]
    servers = [context.__enter__() for context in with_servers]
    try:
        results = {batch: {"latencies": [], "failures": [], "wall": 0.0, "items": []} for batch in args.max_batch}
        for server in servers:  # warm-up: the first requests pay for lazy initialization
            for body, content_type in bodies[:3]:
                server.post("/predict" + query, body, content_type, timeout=300)
        before = {batch: server.json("/healthz")["queue"] for batch, server in zip(args.max_batch, servers)}
        for round_index in range(args.rounds):
            for batch, server in zip(args.max_batch, servers):
                outcome = run_round(server, bodies, query, args.clients, args.requests, args.seconds)
                for key in ("latencies", "failures"):
                    results[batch][key].extend(outcome[key])
                results[batch]["wall"] += outcome["wall"]
                loads.append(os.getloadavg()[0])
                print(f"round {round_index + 1} max batch {batch}: {len(outcome['latencies'])} answers in "
                      f"{outcome['wall']:.1f} s", flush=True)
        _, _, sample = servers[0].post("/predict" + query, *bodies[0])
        items = len(json.loads(sample)["items"])
        after = {batch: server.json("/healthz")["queue"] for batch, server in zip(args.max_batch, servers)}
    finally:
        for context in with_servers:
            context.__exit__(None, None, None)

    print(f"\nload average during the run: {min(loads):.1f}-{max(loads):.1f} (1-minute, {os.cpu_count()} CPUs); "
          f"{items} items in the first image's answer\n")
    print("| max batch | answers | answers/s | p50 ms | p90 ms | p99 ms | max ms | mean batch run | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.max_batch:
        result = results[batch]
        latencies = [1000 * v for v in result["latencies"]]
        images = after[batch]["images"] - before[batch]["images"]
        batches = after[batch]["batches"] - before[batch]["batches"]
        print(f"| {batch} | {len(latencies)} | {len(latencies) / result['wall']:.2f} | {percentile(latencies, 50):.0f} "
              f"| {percentile(latencies, 90):.0f} | {percentile(latencies, 99):.0f} | {max(latencies):.0f} "
              f"| {images / max(batches, 1):.2f} | {len(result['failures'])} |")
        for status, text in result["failures"][:3]:
            print(f"  error {status}: {text!r}")


if __name__ == "__main__":
    main()
