"""Read a YAML file as untrusted input: bounded in size, nesting and alias expansion.

``yaml.safe_load`` never runs code, but it will read /dev/zero forever, block on a FIFO, recurse
until Python's stack gives out on ``[[[[...]]]]``, and hand back an alias "bomb" (nine anchors
each listing the previous one nine times) whose expansion is 10^9 nodes that the first
``json.dumps`` or validator walks. Here:

* only regular files are opened, and at most ``MAX_SUITE_BYTES`` are read; the bytes must be
  UTF-8 text (a BOM is allowed) without NUL;
* nesting deeper than ``MAX_YAML_DEPTH`` is refused while parsing;
* the node graph's size after alias expansion is counted (shared nodes once per use, without
  expanding anything) and refused above ``MAX_YAML_NODES``, as is an alias that contains itself;
* a mapping that repeats a key is an error (YAML says keys are unique; PyYAML keeps the last);
* ``1e-3`` is a float (YAML 1.1 would leave it a string).

Every failure is a ``SuiteError`` with one line naming the file and, where known, the line.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from revbench.errors import SuiteError
from revbench.limits import MAX_SUITE_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, quote

_MERGE = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """Raised inside the loader; turned into a SuiteError naming the file."""


class Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting, refuses duplicate keys and reads ``1e-3`` as a float."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(
                    f"nesting deeper than {MAX_YAML_DEPTH} levels at line {mark.line + 1}"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node.value, str):
                    continue
                key = key_node.value
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise _Refused(
                        f"duplicate key {quote(key)} at line {line}; a key may appear once"
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def expanded_size(root: Node, limit: int = MAX_YAML_NODES) -> int:
    """Nodes in ``root`` with every alias expanded, counted without expanding (each distinct
    node's size once, memoised); raises ``_Refused`` above ``limit`` or on a cycle."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise _Refused("an alias refers to a node that contains it (recursive anchor)")
        on_path.add(key)
        total = 1
        if isinstance(node, SequenceNode):
            for child in node.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        on_path.discard(key)
        sizes[key] = total
        if total > limit:
            raise _Refused(f"more than {limit:,} values once aliases are expanded (an alias bomb?)")
        return total

    return size(root)


def read_text(path: Path, max_bytes: int = MAX_SUITE_BYTES) -> str:
    """The UTF-8 text of ``path``, a regular file of at most ``max_bytes``."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SuiteError(f"{path}: cannot read suite file ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise SuiteError(f"{path}: is a folder; give a suite .yaml file")
    if not stat.S_ISREG(st.st_mode):
        raise SuiteError(
            f"{path}: not a regular file (a device, FIFO or socket); give a .yaml file"
        )
    if st.st_size > max_bytes:
        raise SuiteError(
            f"{path}: {st.st_size:,} bytes is larger than a suite may be ({max_bytes:,} bytes)"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as e:
        raise SuiteError(f"{path}: cannot read suite file ({e.strerror})") from None
    if len(data) > max_bytes:
        raise SuiteError(f"{path}: larger than a suite may be ({max_bytes:,} bytes)")
    if b"\x00" in data:
        raise SuiteError(f"{path}: binary data (a NUL byte), not a YAML text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SuiteError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save the file as UTF-8"
        ) from None


def load(path: Path) -> Any:
    """The YAML document in ``path`` (see the module docstring for the bounds)."""
    text = read_text(path)
    try:
        loader = Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            expanded_size(root)
            return loader.construct_document(root)
        finally:
            loader.dispose()
    except _Refused as e:
        raise SuiteError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SuiteError(f"{path}: invalid YAML{where}: {problem[:120]}") from None
    except RecursionError:
        raise SuiteError(f"{path}: nested too deeply to read") from None
