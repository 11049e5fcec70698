"""Category maps as configuration: a class-table file, dropped categories, merges and renames -> 1..K.

A dataset's annotations carry *source* category ids (ModaNet 1-13, iMaterialist and Fashionpedia
0-45, DeepFashion2 1-13). Training needs contiguous labels 1..K with 0 for background, and a list of
K class names that goes into checkpoints and predictions. A :class:`CategoryMap` is that translation,
built from four pieces of configuration, never from code:

1. a class table: the source ids and their names, from a file under ``data/categories/`` (or the
   annotation file's own ``categories`` list);
2. ``drop``: source categories to leave out (names or source ids), e.g. iMaterialist's garment parts
   27-45; their instances are removed from the records;
3. ``merge``: ``{source name or id: new name}``; one source per new name is a rename, several are a
   merge (e.g. ModaNet's ``boots`` and ``footwear`` into ``shoe``);
4. ``class_order`` (optional): the final class names in label order. Two datasets loaded with the same
   ``class_order`` share label ids, which is how they are combined into one product taxonomy. Without
   it, classes are numbered in the order they first appear in the table.

Class-table file format (YAML or JSON; see ``data/categories/*.yaml``)::

    name: modanet
    categories:              # source id -> name, in table order
      - {id: 1, name: bag}
      - {id: 2, name: belt}
      - {id: 13, name: scarf & tie, aliases: [scarf/tie]}   # optional: other spellings of the name
    drop: []                 # optional, combined with the config's data.drop_categories
    merge: {}                # optional, combined with (and overridden by) data.merge_categories
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import yaml

__all__ = ["CategoryTable", "CategoryMap", "load_category_table", "build_category_map",
           "category_map_from_table", "resolve_category_map", "resolve_table_path", "normalize_name",
           "match_file_categories", "CATEGORY_MATCH_MODES"]

# Class tables ship in <repo>/data/categories/; this file is <repo>/maskrcnn/data/categories.py.
BUILTIN_TABLE_DIR = Path(__file__).resolve().parents[2] / "data" / "categories"


@dataclass
class CategoryTable:
    """A class table: ``categories`` is a list of ``(source_id, name)`` in table order.

    ``aliases`` maps a source id to other spellings of its name that annotation files use (ModaNet's
    files say ``scarf/tie`` where the table says ``scarf & tie``); see :func:`match_file_categories`.
    """

    categories: list
    drop: list = field(default_factory=list)
    merge: dict = field(default_factory=dict)
    path: str = ""
    aliases: dict = field(default_factory=dict)

    def accepted_names(self, source_id) -> set:
        """The normalized name and aliases of ``source_id`` (empty set for an unknown id)."""
        names = [name for sid, name in self.categories if sid == source_id]
        return {normalize_name(n) for n in names + list(self.aliases.get(source_id, []))}


@dataclass
class CategoryMap:
    """Source category id -> training label.

    Attributes:
        class_names: K names; label ``k`` (1..K) is ``class_names[k - 1]``.
        labels: ``{source_id: label}`` for every kept source category.
        dropped: source ids whose instances are removed.
        source_names: ``{source_id: source name}``, for messages.
    """

    class_names: list
    labels: dict
    dropped: set
    source_names: dict

    def label(self, source_id) -> Optional[int]:
        """The label 1..K of a source id, ``None`` if it is dropped; KeyError if it is unknown."""
        if source_id in self.labels:
            return self.labels[source_id]
        if source_id in self.dropped:
            return None
        raise KeyError(source_id)

    def describe(self) -> str:
        """One line per class: label, name, and the source categories merged into it."""
        lines = []
        for k, name in enumerate(self.class_names, start=1):
            sources = [f"{sid} {self.source_names[sid]}" for sid, lab in self.labels.items() if lab == k]
            lines.append(f"{k:3d} {name}  <- {', '.join(sources) if sources else '(not in this dataset)'}")
        if self.dropped:
            lines.append("dropped: " + ", ".join(f"{s} {self.source_names[s]}" for s in sorted(self.dropped)))
        return "\n".join(lines)


def resolve_table_path(path_or_name: str) -> Path:
    """A table path as given, relative to the current folder, or a built-in name such as ``"modanet"``.

    Looks in this order: the path itself; the path relative to the repository root (so configs can
    say ``data/categories/modanet.yaml`` from any folder); ``data/categories/<name>.yaml`` / ``.json``.
    """
    given = Path(path_or_name)
    candidates = [given, BUILTIN_TABLE_DIR.parents[1] / given]
    if given.suffix == "" and len(given.parts) == 1:
        candidates += [BUILTIN_TABLE_DIR / f"{path_or_name}.yaml", BUILTIN_TABLE_DIR / f"{path_or_name}.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    builtin = sorted(p.stem for p in BUILTIN_TABLE_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"category table not found: {path_or_name!r} (built-in tables: {builtin})")


def load_category_table(path_or_name: str) -> CategoryTable:
    """Read a class-table file (YAML or JSON, see the module docstring); errors name the file and field."""
    path = resolve_table_path(path_or_name)
    with open(path) as f:
        try:
            data = json.load(f) if path.suffix == ".json" else yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise ValueError(f"{path}: categories: expected a list of {{id, name}}")
    categories, aliases = [], {}
    for i, entry in enumerate(data["categories"]):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int)
                and isinstance(entry.get("name"), str)):
            raise ValueError(f"{path}: categories[{i}]: expected {{id: int, name: str}}, got {entry!r}")
        categories.append((entry["id"], entry["name"]))
        names = entry.get("aliases", [])
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{path}: categories[{i}].aliases: expected a list of names, got {names!r}")
        if names:
            aliases[entry["id"]] = list(names)
    drop = data.get("drop") or []
    merge = data.get("merge") or {}
    if not isinstance(drop, list):
        raise ValueError(f"{path}: drop: expected a list of names or ids")
    if not isinstance(merge, dict):
        raise ValueError(f"{path}: merge: expected a mapping {{source name: new name}}")
    return CategoryTable(categories, list(drop), dict(merge), str(path), aliases)


# ----------------------------------------------------------------------------------------------
# An annotation file's own category names against the chosen table
# ----------------------------------------------------------------------------------------------
CATEGORY_MATCH_MODES = ("id", "name")


def normalize_name(name: str) -> str:
    """A category name for comparison: lower case, runs of white space as one space, ends trimmed."""
    return " ".join(str(name).lower().split())


def match_file_categories(table: CategoryTable, file_categories: Sequence, mode: str = "id",
                          where: str = "categories") -> dict:
    """Check an annotation file's ``(id, name)`` categories against ``table``; return ``{file id: table id}``.

    ``mode="id"``: the file's ids are the table's ids, and every file category whose id is in the table
    must carry that id's name (or one of its aliases; case and spacing are ignored). ``mode="name"``:
    each file category is mapped to the table category of the same name (or alias), whatever its id.
    A disagreement raises ValueError listing every id with both names, so that a file written for
    another taxonomy (a 48-class pre-release file against the 46-class table) cannot be silently
    relabelled. File categories that are not in the table (by id, or by name with ``mode="name"``) are
    left out of the returned map: the loader reports each annotation that uses them.
    """
    if mode not in CATEGORY_MATCH_MODES:
        raise ValueError(f"data.category_match: expected one of {CATEGORY_MATCH_MODES}, got {mode!r}")
    table_names = dict(table.categories)
    if mode == "id":
        clashes = [(fid, name) for fid, name in file_categories
                   if fid in table_names and normalize_name(name) not in table.accepted_names(fid)]
        if clashes:
            listed = "; ".join(f"id {fid}: file {name!r}, table {table_names[fid]!r}" for fid, name in clashes)
            raise ValueError(
                f"{where}: {len(clashes)} category name(s) disagree with {table.path or 'the class table'} "
                f"for the same id ({listed}). The file uses another taxonomy: choose its table, add the "
                f"names as aliases in the table, or set data.category_match=name to map by name")
        return {fid: fid for fid, _ in file_categories if fid in table_names}
    by_name = {}
    for sid, _ in table.categories:
        for name in table.accepted_names(sid):
            by_name[name] = sid
    return {fid: by_name[normalize_name(name)] for fid, name in file_categories if normalize_name(name) in by_name}


def _source_id_of(key, by_id: Mapping, by_name: Mapping, what: str) -> int:
    """Resolve a drop/merge entry (a source name or a source id) to a source id."""
    if isinstance(key, bool):
        raise ValueError(f"{what}: {key!r} is neither a category name nor an id")
    if isinstance(key, int):
        if key not in by_id:
            raise ValueError(f"{what}: unknown category id {key}; ids are {sorted(by_id)}")
        return key
    if isinstance(key, str) and key in by_name:
        return by_name[key]
    close = difflib.get_close_matches(str(key), list(by_name), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{what}: unknown category {key!r}{hint}")


def build_category_map(
    categories: Sequence,
    drop: Iterable = (),
    merge: Optional[Mapping] = None,
    class_order: Optional[Sequence[str]] = None,
    where: str = "categories",
) -> CategoryMap:
    """Build the source-id -> label map.

    Args:
        categories: ``(source_id, name)`` pairs in table order (a :class:`CategoryTable`'s list).
        drop: source names or ids to leave out.
        merge: ``{source name or id: new name}`` renames; several sources to one name merge them.
        class_order: final names in label order (label = position + 1); it must contain every kept
            class and may contain more (classes that this dataset does not have).
        where: names the table in error messages.

    Returns:
        a :class:`CategoryMap`. Raises ValueError for duplicate ids or names, unknown drop/merge
        entries (with the closest name), and classes missing from ``class_order``.
    """
    by_id, by_name = {}, {}
    for source_id, name in categories:
        if source_id in by_id:
            raise ValueError(f"{where}: duplicate category id {source_id}")
        if name in by_name:
            raise ValueError(f"{where}: duplicate category name {name!r}")
        by_id[source_id], by_name[name] = name, source_id
    dropped = {_source_id_of(key, by_id, by_name, f"{where}: drop") for key in drop}
    renamed = {}
    for key, new_name in (merge or {}).items():
        if not isinstance(new_name, str) or not new_name:
            raise ValueError(f"{where}: merge[{key!r}]: expected a non-empty new name, got {new_name!r}")
        renamed[_source_id_of(key, by_id, by_name, f"{where}: merge")] = new_name

    final_name = {sid: renamed.get(sid, name) for sid, name in by_id.items() if sid not in dropped}
    if class_order is None:
        class_names = list(dict.fromkeys(final_name.values()))  # first appearance, table order
    else:
        class_names = list(class_order)
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"{where}: class_order has duplicate names")
        missing = [n for n in dict.fromkeys(final_name.values()) if n not in class_names]
        if missing:
            raise ValueError(f"{where}: class_order lacks {missing} (drop them or add them)")
    index = {name: k for k, name in enumerate(class_names, start=1)}
    labels = {sid: index[name] for sid, name in final_name.items()}
    return CategoryMap(class_names, labels, dropped, dict(by_id))


def category_map_from_table(
    table: CategoryTable,
    drop: Iterable = (),
    merge: Optional[Mapping] = None,
    class_order: Optional[Sequence[str]] = None,
) -> CategoryMap:
    """A table file's own drop/merge combined with the config's (the config's merge wins per key)."""
    merged = dict(table.merge)
    merged.update(merge or {})
    return build_category_map(table.categories, list(table.drop) + list(drop), merged, class_order,
                              where=table.path or "categories")



def resolve_category_map(
    categories,
    default_table: CategoryTable,
    drop: Iterable = (),
    merge: Optional[Mapping] = None,
    class_order: Optional[Sequence[str]] = None,
):
    """The ``categories`` option of every adapter -> ``(CategoryTable, CategoryMap)``.

    ``categories`` is None or "" (use ``default_table``: the annotation file's own categories or the
    format's built-in table), a table path or built-in name (``"imaterialist27"``), or a CategoryTable.
    """
    if categories is None or categories == "":
        table = default_table
    elif isinstance(categories, CategoryTable):
        table = categories
    else:
        table = load_category_table(str(categories))
    return table, category_map_from_table(table, drop, merge, class_order)
