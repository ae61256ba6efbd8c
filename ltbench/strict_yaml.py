"""YAML for files a user hands ltbench: safe, no duplicate keys, aliases bounded (issue 21).

PyYAML's ``safe_load`` keeps the last of two equal keys (so ``epochs: 100`` followed later by
``epochs: 1`` silently trains one epoch), and it resolves aliases by reference, so a 1.4 KB file of
nested aliases (a "billion laughs") loads at once but expands to ~10^9 nodes wherever the value is
later walked or formatted whole. :func:`load` refuses both, as a ``yaml.YAMLError`` whose first line
says what and where. Merge keys (``<<: *base``) still override as YAML defines.
"""
from __future__ import annotations

import yaml

MAX_NODES = 100_000  # nodes after expanding every alias; a benchmark file has a few hundred


class _StrictLoader(yaml.SafeLoader):
    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} on line {key_node.start_mark.line + 1} "
                        f"(first on line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_NODES` nodes (or refer to themselves)."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            if size[key] > MAX_NODES:
                raise yaml.constructor.ConstructorError(
                    None, None, f"aliases expand to more than {MAX_NODES:,} values (line {node.start_mark.line + 1}); "
                    "refusing to read it (write the values out, or use fewer nested aliases)", node.start_mark)
            continue
        if key in size:
            continue
        if key in open_:
            raise yaml.constructor.ConstructorError(
                None, None, f"an alias that contains itself (line {node.start_mark.line + 1})", node.start_mark)
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load(text: str):
    """``yaml.safe_load(text)`` without duplicate keys and with aliases bounded; ``yaml.YAMLError`` otherwise."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
