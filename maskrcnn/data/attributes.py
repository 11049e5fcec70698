"""Fine-grained attributes ("sleeveless", "floral", "midi"): the attribute table and per-object targets.

Two of the fashion datasets annotate attributes beside the category of each object:

* **Fashionpedia** (COCO JSON): each annotation has ``attribute_ids`` (a list of ints) and the file has
  a top-level ``attributes`` list of ``{"id", "name", "supercategory"}`` (294 entries, supercategories
  such as "length", "nickname", "textile pattern", "opening type").
* **iMaterialist 2019** (CSV): the ``ClassId`` column carries them as suffixes, ``"6_28_77"`` is category
  6 with attributes 28 and 77 (``imaterialist.parse_class_id``); ``label_descriptions.json`` has the
  ``attributes`` list (92 entries, ``{"id", "name", "supercategory", "level"}``).

ModaNet and DeepFashion2 have none. The synthetic set writes one or two attributes per object, drawn
independently of the garment class: its fabric pattern (plain, striped, checked, dotted, mottled) and, when
the fabric is clearly dark or light, its colour tone (dark, light).

The adapters keep each annotation's *source* attribute ids (``annotation["attribute_ids"]``). An
:class:`AttributeTable` decides which of them the model predicts and in which order: attribute ``a``
(0-based, ``0 <= a < A``) is ``table.names[a]`` and has source id ``table.source_ids[a]``. The table
comes from configuration (``data.attributes``): ``"file"`` reads the dataset's own list (the COCO file's
``attributes``, or iMaterialist's ``label_descriptions.json``), anything else is a table file (YAML or
JSON with the same ``attributes`` list, e.g. ``data/categories/synthetic_attributes.yaml``).
``data.attribute_supercategories`` keeps only the attributes of the named supercategories and
``data.drop_attributes`` leaves out single attributes (names or source ids), as ``data.drop_categories``
does for classes; the order is the table's (a table file sets its own). There is no merge: a column of the
model is one source id, which the COCO results file writes back as it is (``attribute_ids``).

Targets (:func:`attribute_targets`), per image with ``N`` kept objects: ``attributes (N, A)`` float32
multi-hot and ``attributes_known (N,)`` bool. An object whose ``attribute_ids`` is empty or absent is
*unknown*, not "has none": both datasets leave attributes unannotated for most parts and accessories, so
such objects are ignored by the attribute loss and the attribute evaluation rather than taught "no".
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import yaml

from .categories import resolve_table_path


@dataclass
class AttributeTable:
    """The attributes a model predicts: ``names[a]`` has source id ``source_ids[a]``, ``a`` in 0..A-1."""

    source_ids: List[int] = field(default_factory=list)
    names: List[str] = field(default_factory=list)
    supercategories: List[str] = field(default_factory=list)
    path: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def index(self) -> dict:
        """``{source id: position a}``."""
        return {source: a for a, source in enumerate(self.source_ids)}


def parse_attribute_list(entries, where: str) -> AttributeTable:
    """``[{"id": int, "name": str, "supercategory": str?}, ...]`` -> table; ValueError naming ``where[i]``."""
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list of {{id, name, supercategory}}, got {type(entries).__name__}")
    table = AttributeTable(path=where.split(":")[0])
    seen = set()
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and not isinstance(entry["id"], bool)
                and isinstance(entry.get("name"), str)):
            raise ValueError(f"{where}[{i}]: expected {{id: int, name: str}}, got {entry!r}")
        if entry["id"] in seen:
            raise ValueError(f"{where}[{i}].id: {entry['id']} appears twice")
        seen.add(entry["id"])
        table.source_ids.append(entry["id"])
        table.names.append(entry["name"].strip())
        table.supercategories.append(str(entry.get("supercategory", "")).strip())
    return table


def read_attribute_table(path_or_name: str) -> AttributeTable:
    """A table file (YAML or JSON with a top-level ``attributes`` list), or a dataset file that holds one
    (a Fashionpedia-style COCO JSON, iMaterialist's ``label_descriptions.json``)."""
    path = resolve_table_path(path_or_name)
    try:
        with open(path) as f:
            data = json.load(f) if path.suffix == ".json" else yaml.safe_load(f)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(data, dict) or "attributes" not in data:
        raise ValueError(f"{path}: attributes: missing (expected a top-level list of {{id, name, supercategory}})")
    return parse_attribute_list(data["attributes"], f"{path}: attributes")


def select_supercategories(table: AttributeTable, keep: Sequence[str]) -> AttributeTable:
    """Only the attributes whose supercategory is in ``keep`` (all when ``keep`` is empty), order kept."""
    if not keep:
        return table
    unknown = sorted(set(keep) - set(table.supercategories))
    if unknown:
        raise ValueError(f"data.attribute_supercategories: {unknown} not in {table.path or 'the table'} "
                         f"(it has {sorted(set(table.supercategories))})")
    rows = [i for i, s in enumerate(table.supercategories) if s in set(keep)]
    return AttributeTable([table.source_ids[i] for i in rows], [table.names[i] for i in rows],
                          [table.supercategories[i] for i in rows], table.path)


def drop_attributes(table: AttributeTable, drop: Sequence) -> AttributeTable:
    """The table without the attributes named in ``drop`` (names or source ids), order kept; ValueError
    naming ``data.drop_attributes`` for an entry the table does not have."""
    if not drop:
        return table
    by_name, by_id = set(table.names), set(table.source_ids)
    unknown = [d for d in drop if not (d in by_id if isinstance(d, int) and not isinstance(d, bool) else d in by_name)]
    if unknown:
        raise ValueError(f"data.drop_attributes: {unknown} not in {table.path or 'the table'} "
                         f"(names such as {table.names[:5]}, or source ids)")
    rows = [i for i, (source, name) in enumerate(zip(table.source_ids, table.names))
            if source not in drop and name not in drop]
    return AttributeTable([table.source_ids[i] for i in rows], [table.names[i] for i in rows],
                          [table.supercategories[i] for i in rows], table.path)


def attribute_table_for(setting: str, annotations: str, data_format: str, label_descriptions: str = "",
                        supercategories: Sequence[str] = (), drop: Sequence = ()) -> Optional[AttributeTable]:
    """The table that ``data.attributes`` names (None when it is empty: attributes off), narrowed to
    ``supercategories`` and without ``drop``.

    ``"file"`` means the dataset's own list: the COCO annotation file itself, or for iMaterialist the
    ``label_descriptions.json`` (given, or beside ``train.csv``). Anything else is a table file or a
    built-in table's name (``data/categories/<name>.yaml``, e.g. ``synthetic_attributes``)."""
    if not setting:
        return None
    if setting == "file":
        if data_format == "coco":
            source = annotations
        elif data_format == "imaterialist":
            source = label_descriptions or str(Path(annotations).with_name("label_descriptions.json"))
        else:
            raise ValueError(f"data.attributes: 'file' needs a format whose files list attributes (coco, "
                             f"imaterialist); {data_format!r} has none")
        table = read_attribute_table(source)
    else:
        table = read_attribute_table(setting)
    return drop_attributes(select_supercategories(table, list(supercategories)), list(drop))


def attribute_targets(attribute_lists: Iterable[Optional[Sequence[int]]], table_index: dict, num_attributes: int
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Multi-hot targets of ``N`` objects.

    Args:
        attribute_lists: each object's source ``attribute_ids`` (None or empty: unknown).
        table_index: ``AttributeTable.index()``; source ids not in it (another supercategory) are ignored.
        num_attributes: ``A``.
    Returns:
        ``attributes (N, A)`` float32 in {0, 1} and ``attributes_known (N,)`` bool.
    """
    lists = [list(ids or []) for ids in attribute_lists]
    targets = torch.zeros((len(lists), num_attributes), dtype=torch.float32)
    known = torch.tensor([len(ids) > 0 for ids in lists], dtype=torch.bool)
    for n, ids in enumerate(lists):
        columns = [table_index[i] for i in ids if i in table_index]
        targets[n, columns] = 1.0
    return targets, known


def unknown_attribute_ids(records: Iterable[dict], table: AttributeTable) -> dict:
    """``{source id: count}`` of attribute ids in the records that the table does not list (the checker
    reports them; after a supercategory selection they are expected)."""
    index, counts = table.index(), {}
    for record in records:
        for ann in record["annotations"]:
            for i in ann.get("attribute_ids") or []:
                if i not in index:
                    counts[i] = counts.get(i, 0) + 1
    return counts


def training_attribute_names(num_attributes: int, train_set, setting: str) -> List[str]:
    """The names the attribute head is trained for: the training set's table, which must have
    ``model.num_attributes`` entries (ValueError naming both keys otherwise)."""
    names = list(getattr(train_set, "attribute_names", []) or [])
    if len(names) != num_attributes:
        where = f"data.attributes={setting!r}" if setting else "data.attributes is empty"
        raise ValueError(f"model.num_attributes={num_attributes}, but {where} gives {len(names)} attributes"
                         + (f": {names[:10]}{' ...' if len(names) > 10 else ''}" if names else ""))
    return names
