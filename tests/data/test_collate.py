"""collate / to_device / make_train_loader / train_batches: lists not stacks, order kept, and the same batches
whatever the number of worker processes."""
import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data.collate import collate, make_train_loader, to_device, train_batches
from maskrcnn.data.dataset import FashionDataset
from maskrcnn.data.transforms import Compose, ColorJitter, RandomAffine, RandomHorizontalFlip


def test_collate_keeps_lists_and_order():
    samples = [(torch.rand(3, 4, 5), {"image_id": 1}), (torch.rand(3, 7, 2), {"image_id": 2})]
    images, targets = collate(samples)
    assert isinstance(images, list) and isinstance(targets, list)
    assert images[0] is samples[0][0] and images[1] is samples[1][0]
    assert [t["image_id"] for t in targets] == [1, 2]


def test_to_device_moves_tensors_and_keeps_other_values():
    target = {"boxes": torch.zeros(2, 4), "labels": torch.ones(2, dtype=torch.int64), "image_id": 3}
    images, targets = to_device([torch.rand(3, 2, 2)], [target], torch.device("cpu"))
    assert targets[0]["image_id"] == 3 and torch.equal(targets[0]["labels"], target["labels"])
    assert images[0].device.type == "cpu"


def tiny_dataset(tmp_path, count=9):
    """count images alternating landscape (16x24) and portrait (24x16), one square instance each."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        height, width = (16, 24) if i % 2 == 0 else (24, 16)
        path = tmp_path / f"{i}.png"
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(path)
        records.append({"file_name": str(path), "image_id": i + 1, "height": height, "width": width,
                        "annotations": [{"bbox": [2.0, 3.0, 12.0, 13.0], "category_id": 1 + i % 3, "iscrowd": 0,
                                         "segmentation": [[2, 3, 12, 3, 12, 13, 2, 13]]}]})
    augmentations = Compose([RandomHorizontalFlip(0.5), RandomAffine(0.5, 20, (0.9, 1.1), 0.05, 5, 0.2),
                             ColorJitter(0.5, 0.2, 0.2, 0.2)])
    return FashionDataset(records, augmentations=augmentations, seed=11)


def flatten(batches):
    return [(e, [i.clone() for i in images], [t["image_id"] for t in targets], [t["boxes"] for t in targets])
            for e, images, targets in batches]


def take(loader, count):
    stream = train_batches(loader)
    return flatten(next(stream) for _ in range(count))


def test_loader_batches_group_aspect_ratios_and_advance_epochs(tmp_path):
    dataset = tiny_dataset(tmp_path)
    loader = make_train_loader(dataset, images_per_rank=2, num_workers=0, seed=4)
    assert len(loader) == 5  # 9 images padded to 10
    batches = take(loader, 12)
    assert [b[0] for b in batches] == [0] * 5 + [1] * 5 + [2] * 2
    for _, images, ids, boxes in batches:
        assert len(images) == 2
        shapes = {tuple(im.shape) for im in images}
        assert len(shapes) <= 2
    epoch0 = sorted(i for b in batches[:5] for i in b[2])
    assert set(epoch0) == set(range(1, 10))
    assert [b[2] for b in batches[:5]] != [b[2] for b in batches[5:10]]  # reshuffled
    mixed = [b for b in batches[:5] if len({tuple(im.shape) for im in b[1]}) > 1]
    assert len(mixed) <= 1


def test_same_batches_with_and_without_worker_processes(tmp_path):
    dataset = tiny_dataset(tmp_path)
    in_process = take(make_train_loader(dataset, images_per_rank=2, num_workers=0, seed=4), 7)
    with_workers = take(make_train_loader(dataset, images_per_rank=2, num_workers=2, seed=4), 7)
    for a, b in zip(in_process, with_workers):
        assert a[0] == b[0] and a[2] == b[2]
        assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
        assert all(torch.equal(x, y) for x, y in zip(a[3], b[3]))


def test_distributed_loaders_split_the_epoch(tmp_path):
    dataset = tiny_dataset(tmp_path, count=8)
    ids = []
    for rank in range(2):
        loader = make_train_loader(dataset, images_per_rank=2, num_workers=0, seed=4, rank=rank, world_size=2)
        assert len(loader) == 2
        ids.append([i for b in take(loader, 2) for i in b[2]])
    assert not set(ids[0]) & set(ids[1]) and set(ids[0]) | set(ids[1]) == set(range(1, 9))


def test_build_train_loader_wires_the_config(tmp_path):
    from maskrcnn.config import load_config
    from maskrcnn.data.collate import build_train_loader

    records = tiny_dataset(tmp_path).records
    cfg = load_config(overrides=["solver.ims_per_batch=4", "dataloader.num_workers=0", "data.strict=true",
                                 "data.augment.hflip.prob=1.0", "seed=5"])
    loader = build_train_loader(cfg, records, world_size=2, rank=1)
    assert loader.batch_sampler.batch_size == 2 and loader.batch_sampler.rank == 1
    assert loader.dataset.strict and loader.dataset.seed == 5
    assert [type(a).__name__ for a in loader.dataset.augmentations.augmentations] == ["RandomHorizontalFlip"]
    _, images, targets = next(train_batches(loader))
    assert len(images) == 2
    # hflip always on: the square [2, 12) x [3, 13) lands at [W - 12, W - 2)
    for image, target in zip(images, targets):
        width = image.shape[-1]
        assert target["boxes"].tolist() == [[width - 12, 3, width - 2, 13]]
    with pytest.raises(ValueError, match="ims_per_batch=4"):
        build_train_loader(cfg, records, world_size=3)
