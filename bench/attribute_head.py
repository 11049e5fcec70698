"""Cost of the attribute head: CPU time of one training step and one inference pass of the synthetic demo
model with and without it (``model.num_attributes`` 0 vs the config's 7), interleaved, one thread.

    python bench/attribute_head.py --data datasets/synthetic --rounds 5

The data folder is the synthetic set (``python -m maskrcnn.data.synthetic --out datasets/synthetic --size 128``).
Prints the median CPU seconds per step of each model and their ratio.
"""
import argparse
import statistics
import time

import torch

from maskrcnn.config import load_config
from maskrcnn.data import FashionDataset, collate, load_dataset
from maskrcnn.data.attributes import attribute_table_for
from maskrcnn.modeling import build_model


def batch(data: str, count: int = 4):
    annotations = f"{data}/instances_train.json"
    records = load_dataset("coco", annotations, f"{data}/train")
    table = attribute_table_for("file", annotations, "coco")
    records.attribute_names, records.attribute_source_ids = table.names, table.source_ids
    dataset = FashionDataset(records)
    return collate([dataset[i] for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="datasets/synthetic")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, targets = batch(args.data)
    count = load_config("configs/synthetic_attributes.yaml").model.num_attributes  # A of the attribute demo
    models = {}
    for attributes in (0, count):
        torch.manual_seed(0)
        models[attributes] = build_model(load_config("configs/synthetic_attributes.yaml",
                                                     overrides=[f"model.num_attributes={attributes}"]))
    train, infer = {0: [], count: []}, {0: [], count: []}
    for _ in range(args.rounds):
        for attributes, model in models.items():
            model.train()
            start = time.process_time()
            sum(model(images, targets).values()).backward()
            train[attributes].append(time.process_time() - start)
            model.zero_grad(set_to_none=True)
            model.eval()
            start = time.process_time()
            with torch.inference_mode():
                model(images)
            infer[attributes].append(time.process_time() - start)
    for name, times in (("training step", train), ("inference", infer)):
        without, with_head = statistics.median(times[0]), statistics.median(times[count])
        print(f"{name} (batch of 4, 128 px): {without:.3f} s without, {with_head:.3f} s with the head "
              f"(ratio {with_head / without:.3f})")


if __name__ == "__main__":
    main()
