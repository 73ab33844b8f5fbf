"""Reading the small files users hand the project (LLM catalogs, price files, dataset specs) with bounds.

Such a file is refused before it is parsed when it is larger than :data:`MAX_USER_FILE_BYTES`, and a YAML file is
refused after composing, before anything is built from it, when its aliases would expand it by more than
:data:`MAX_ALIAS_EXPANSION` nodes (a "billion laughs" document of a few KB expands to billions) or refer to
themselves. So a hostile or mistaken file fails in milliseconds, in one line that names it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_ALIAS_EXPANSION", "MAX_USER_FILE_BYTES", "UserFileError", "load_user_yaml", "read_user_text"]

#: The largest catalog, price or spec file read (a catalog of thousands of LLMs takes a fraction of it).
MAX_USER_FILE_BYTES = 1024 * 1024
#: How many nodes YAML aliases (``*name``, ``<<: *name``) may add to a document once expanded.
MAX_ALIAS_EXPANSION = 100_000


class UserFileError(ValueError):
    """A user's file refused before use; ``path`` and ``problem`` hold what the one-line message says."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


def check_size(path: str | os.PathLike[str], limit: int = MAX_USER_FILE_BYTES) -> Path:
    """``path`` when it is a file of at most ``limit`` bytes; else :class:`UserFileError` (``OSError`` when it
    cannot be read)."""
    path = Path(path)
    size = path.stat().st_size
    if size > limit:
        raise UserFileError(path, f"file of {size:,} bytes is above the limit of {limit:,} bytes")
    return path


def read_user_text(path: str | os.PathLike[str], limit: int = MAX_USER_FILE_BYTES) -> str:
    """The text of the file at ``path`` (UTF-8), refused above ``limit`` bytes before it is read."""
    path = check_size(path, limit)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserFileError(path, f"not UTF-8 text (byte {exc.start})") from None


def load_user_yaml(path: str | os.PathLike[str], limit: int = MAX_USER_FILE_BYTES) -> Any:
    """The YAML (or JSON) document at ``path`` as ``yaml.safe_load`` builds it, or ``None`` for an empty one.

    Refused with :class:`UserFileError`: a file above ``limit`` bytes, invalid YAML, nesting too deep, aliases that
    refer to themselves or would add more than :data:`MAX_ALIAS_EXPANSION` nodes.
    """
    return parse_user_yaml(read_user_text(path, limit), path)


def parse_user_yaml(text: str, path: str | os.PathLike[str]) -> Any:
    """:func:`load_user_yaml` of ``text`` already read from ``path`` (named in errors), with the same limits on
    aliases and nesting."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(path, node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UserFileError(path, f"not valid YAML: {_first_line(exc)}") from None
    except RecursionError:
        raise UserFileError(path, "YAML nested too deeply") from None
    finally:
        loader.dispose()


def _first_line(exc: BaseException) -> str:
    line = " ".join(str(exc).split())
    return line if len(line) <= 120 else line[:117] + "..."


def _check_expansion(path: str | os.PathLike[str], root: yaml.Node) -> None:
    """Raise when ``root``'s aliases refer to themselves or would add more than :data:`MAX_ALIAS_EXPANSION`
    nodes: the size of the expanded tree is counted once per distinct node (memoised), never built."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise UserFileError(path, "a YAML alias refers to the node that holds it (a recursive document)")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += expanded(child)
            if total - len(sizes) > MAX_ALIAS_EXPANSION:
                expansion = f"more than {MAX_ALIAS_EXPANSION:,} nodes"
                raise UserFileError(path, f"YAML aliases expand the document by {expansion} (an alias bomb?)")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    expanded(root)
