"""YAML that people write (rules, workflows, experiments, targets, profiles, notification
channels), parsed like `yaml.safe_load` but refusing documents whose aliases expand too far or
refer to themselves, whose nesting is too deep, or whose mappings repeat a key.

A few hundred bytes of nested aliases (a "billion laughs" file) describe a value of billions of
nodes: PyYAML builds it as shared references in no time, but whatever walks it afterwards
(validation, an error message that shows the value) never finishes. The size is counted on the
parsed node graph before anything is built, in time proportional to the file. An alias inside
the collection it names (`a: &a [*a]`) makes a value that contains itself, which no walk ever
finishes: it is refused while composing. PyYAML composes one nested collection per level of
recursion, so a few hundred `[` end in a RecursionError: the depth is counted while composing
and refused long before that. PyYAML keeps the last of two equal keys and drops the first
silently (a second `checks: []` empties a rule's checks): a repeated key is refused, naming both
lines. Not for: reading files and reporting their problems (see `input_files`), JSON, or data
that programs exchange.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from common.validation import bounded

# Far above any hand-written file here (the largest shipped one has a few hundred nodes).
MAX_EXPANDED_NODES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"
# Shipped files nest 5 levels deep; each level costs the composer two Python frames, so this
# stays far from the interpreter's recursion limit wherever the loader is called from.
MAX_DEPTH = 100


class AliasBomb(yaml.YAMLError):
    """The document's aliases expand beyond MAX_EXPANDED_NODES."""


class TooDeep(yaml.MarkedYAMLError):
    """The document nests collections deeper than MAX_DEPTH (the mark says where)."""


class _DepthBoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses to go deeper than MAX_DEPTH, an alias to a collection
    that is still being composed (one that contains the alias), and a repeated mapping key."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # Anchors of the collections being composed: an alias to one of them is a cycle.
        self._open_anchors: dict[str, yaml.Mark] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise TooDeep(
                    problem=f"nested deeper than {MAX_DEPTH} levels; refused",
                    problem_mark=self.peek_event().start_mark,
                )
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in self._open_anchors:
                    line = self._open_anchors[event.anchor].line + 1
                    raise yaml.composer.ComposerError(
                        problem=f"recursive alias *{bounded(event.anchor, 40)}: it is inside "
                        f"the collection it names (anchored on line {line}); refused",
                        problem_mark=event.start_mark,
                    )
                return super().compose_node(parent, index)
            if event.anchor is None:
                return super().compose_node(parent, index)
            self._open_anchors[event.anchor] = event.start_mark
            try:
                return super().compose_node(parent, index)
            finally:
                del self._open_anchors[event.anchor]
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first_seen: dict[Any, int] = {}
        for position, (key_node, _) in enumerate(node.value):
            # Merge keys are not data (`<<: *defaults` twice merges both); a collection as a
            # key cannot be hashed, which the constructor refuses on its own.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            # Compared as built (`1` and `1.0`, `true` and `yes` are one dict key), so exactly
            # what the built mapping would lose is refused.
            key = self.construct_object(key_node, deep=True)
            # By position, not node: a key written again as an alias (`*k : 2`) is the very
            # node of its first appearance.
            first = first_seen.setdefault(key, position)
            if first != position:
                first_line = node.value[first][0].start_mark.line + 1
                raise yaml.composer.ComposerError(
                    problem=f"duplicate key {bounded(repr(key), 40)} (first on line "
                    f"{first_line}); each key may appear once in a mapping",
                    problem_mark=key_node.start_mark,
                )
        return node


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """SafeLoader's integer, or a YAMLError naming the line for one too long to convert
    (Python's own error names no place, and tells the writer to call a function)."""
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            problem=f"an integer of {len(node.value)} characters; expected at most "
            f"{sys.get_int_max_str_digits()} digits",
            problem_mark=node.start_mark,
        ) from None


_DepthBoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _expanded_size(root: yaml.Node) -> int:
    sizes: dict[int, int] = {}
    # Post-order without recursion: a deep document must not exhaust the Python stack either.
    # It ends because the composer refused cycles: a node that is its own descendant would be
    # pushed again forever.
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
