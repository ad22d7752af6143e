"""Node tree -> data for plain documents, ~5x faster than PyYAML's constructor.

PyYAML's constructor goes through a generator and several dict bookkeeping steps per node:
for 10,000 schedules (120,000 nodes) that was ~0.25 s, as long as libyaml's parse itself.
Most config files are plain maps, lists and scalars, which this builds in one recursion. Any
node it does not know how to build exactly as PyYAML would (a merge key ``<<``, a tagged or
self-referencing collection, a non-scalar key) raises ``Unusual``; the caller then lets
PyYAML's constructor build the whole document, so results and errors stay PyYAML's.
"""

from __future__ import annotations

from typing import Any

import yaml

STR_TAG = "tag:yaml.org,2002:str"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
# Keys PyYAML's flatten_mapping rewrites: never built here.
_SPECIAL_KEY_TAGS = frozenset({"tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"})


class Unusual(Exception):
    """The document needs PyYAML's own constructor."""


class QuickResolve:
    """A loader mixin that remembers which tag each scalar text resolved to.

    libyaml's composer calls back into ``Resolver.resolve`` once per scalar, which tries the
    patterns for the text's first character each time: ~60% of composing 10,000 schedules,
    where the same keys and values (``name``, ``timezone``, ``Europe/Berlin``) recur. Path
    resolvers (none are registered) depend on more than the text: then nothing is cached.
    """

    yaml_path_resolvers: dict[Any, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scalar_tags: dict[tuple[str, Any], str] = {}

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> Any:
        if self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)  # type: ignore[misc]
        if kind is not yaml.ScalarNode:  # Resolver.resolve's answer without path resolvers
            return MAP_TAG if kind is yaml.MappingNode else SEQ_TAG
        key = (value, implicit)
        tag = self._scalar_tags.get(key)
        if tag is None:
            tag = self._scalar_tags[key] = super().resolve(  # type: ignore[misc]
                kind, value, implicit)
        return tag


class PlainBuilder:
    """Builds data from a composed node tree, flagging mappings with equal keys.

    Scalars other than plain strings (numbers, booleans, null, dates) are built by
    ``constructor``, the loader that composed the tree, so they resolve exactly as before.
    """

    def __init__(self, constructor: yaml.constructor.BaseConstructor) -> None:
        self._constructor = constructor
        self._built: dict[int, Any] = {}  # id(node) -> data: an alias is the same object
        self._open: set[int] = set()
        self.duplicate_keys = False

    def build(self, node: yaml.Node) -> Any:
        if node.__class__ is yaml.ScalarNode:
            if node.tag == STR_TAG:
                return node.value
            return self._constructor.construct_object(node, deep=True)
        key = id(node)
        if key in self._built:
            return self._built[key]
        if key in self._open:
            raise Unusual("recursive alias")
        self._open.add(key)
        value: Any
        if node.__class__ is yaml.SequenceNode and node.tag == SEQ_TAG:
            value = [self.build(item) for item in node.value]
        elif node.__class__ is yaml.MappingNode and node.tag == MAP_TAG:
            value = self._mapping(node)
        else:
            raise Unusual(node.tag)
        self._open.discard(key)
        self._built[key] = value
        return value

    def _mapping(self, node: yaml.MappingNode) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        texts: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.__class__ is not yaml.ScalarNode or key_node.tag in _SPECIAL_KEY_TAGS:
                raise Unusual("merge or non-scalar key")
            text = key_node.value
            key = text if key_node.tag == STR_TAG else self.build(key_node)
            texts.add(text)
            out[key] = self.build(value_node)
        # The same test as yaml_lines._DuplicateFlag: equal key text, or keys equal once built
        # (1 and 0x1 are both 1). PyYAML would silently keep the last one.
        if len(texts) != len(node.value) or len(out) != len(node.value):
            self.duplicate_keys = True
        return out
