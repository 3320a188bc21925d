"""YAML that people write (rules, workflows, experiments, targets, profiles, notification
channels), parsed like `yaml.safe_load` but refusing documents whose aliases expand too far or
whose nesting is too deep.

A few hundred bytes of nested aliases (a "billion laughs" file) describe a value of billions of
nodes: PyYAML builds it as shared references in no time, but whatever walks it afterwards
(validation, an error message that shows the value) never finishes. The size is counted on the
parsed node graph before anything is built, in time proportional to the file. PyYAML composes
one nested collection per level of recursion, so a few hundred `[` end in a RecursionError: the
depth is counted while composing and refused long before that. Not for: reading files and
reporting their problems (see `input_files`), JSON, or data that programs exchange.
"""

from __future__ import annotations

from typing import Any

import yaml

# Far above any hand-written file here (the largest shipped one has a few hundred nodes).
MAX_EXPANDED_NODES = 100_000
# Shipped files nest 5 levels deep; each level costs the composer two Python frames, so this
# stays far from the interpreter's recursion limit wherever the loader is called from.
MAX_DEPTH = 100


class AliasBomb(yaml.YAMLError):
    """The document's aliases expand beyond MAX_EXPANDED_NODES."""


class TooDeep(yaml.MarkedYAMLError):
    """The document nests collections deeper than MAX_DEPTH (the mark says where)."""


class _DepthBoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses to go deeper than MAX_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise TooDeep(
                    problem=f"nested deeper than {MAX_DEPTH} levels; refused",
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node) -> int:
    sizes: dict[int, int] = {}
    # Post-order without recursion: a deep document must not exhaust the Python stack either.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done and children:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(child), 0) for child in children)
        sizes[id(node)] = min(total, MAX_EXPANDED_NODES + 1)  # saturate: no huge integers
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _checked(node: yaml.Node) -> yaml.Node:
    size = _expanded_size(node)
    if size > MAX_EXPANDED_NODES:
        raise AliasBomb(
            f"its aliases expand to more than {MAX_EXPANDED_NODES:,} values; refused "
            "(write the repeated parts out, or split the file)"
        )
    return node


def safe_load(text: str) -> Any:
    """Like `yaml.safe_load`, with aliases and depth bounded (AliasBomb, TooDeep: both are
    yaml.YAMLError)."""
    loader = _DepthBoundedLoader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else loader.construct_document(_checked(node))
    finally:
        loader.dispose()


def safe_load_all(text: str) -> list[Any]:
    """Like `yaml.safe_load_all` (as a list), with aliases and depth bounded."""
    loader = _DepthBoundedLoader(text)
    documents = []
    try:
        while loader.check_node():
            documents.append(loader.construct_document(_checked(loader.get_node())))
    finally:
        loader.dispose()
    return documents
