"""The model's architecture as a graph for the browser: nodes with output shapes and parameter counts,
residual branches as edges that skip ahead, DOT text for ``st.graphviz_chart``.

:func:`architecture` asks the adapter once (``torch.fx`` tracing or the Keras functional graph, falling back
to the order of the layers) and returns picklable values; :func:`to_dot` only formats. Models of
:data:`COLLAPSE_FROM` layers or more are drawn with their blocks collapsed (one node per block, runs of
identical blocks as one node "× n"); a name search expands the blocks that hold a match.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from .adapters.base import ModelAdapter

COLLAPSE_FROM = 200  # layers
MAX_GROUPS = 60  # blocks shown when collapsed
SELECTED_FILL = "#ffd54f"
MATCH_FILL = "#90caf9"
OP_FILL = "#eeeeee"
LAYER_FILL = "#ffffff"
SKIP_COLOUR = "#d81b60"  # residual branches


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    kind: str
    layer: bool  # False: an operation between layers (add, flatten, ...), or the input/output
    output_shape: tuple[int, ...] | None
    parameters: int


@dataclasses.dataclass(frozen=True)
class Architecture:
    nodes: tuple[Node, ...]  # forward order
    edges: tuple[tuple[str, str], ...]
    traced: bool  # False: drawn from the order of the layers; branches are not known

    @property
    def layer_count(self) -> int:
        return sum(1 for n in self.nodes if n.layer)

    def skips(self) -> set[tuple[str, str]]:
        """Edges that jump over nodes in forward order: residual and other branches."""
        position = {n.name: i for i, n in enumerate(self.nodes)}
        return {(a, b) for a, b in self.edges if a in position and b in position and position[b] - position[a] > 1}

    def node_for(self, layer: str | None) -> str | None:
        """The graph node that draws ``layer``: itself, or for a block that is not a leaf (a PyTorch
        ``Sequential`` or residual block, a nested Keras model) the last node inside it."""
        if layer is None:
            return None
        names = [n.name for n in self.nodes]
        if layer in names:
            return layer
        inside = [n for n in names if n.startswith((f"{layer}.", f"{layer}/"))]
        return inside[-1] if inside else None

    def search(self, text: str) -> list[str]:
        """Layer names containing ``text`` (case-insensitive), in forward order."""
        needle = text.strip().lower()
        if not needle:
            return []
        return [n.name for n in self.nodes if n.layer and needle in n.name.lower()]


def architecture(adapter: ModelAdapter) -> Architecture:
    graph = adapter.layer_graph()
    shapes = {layer.name: layer.output_shape for layer in adapter.layers()}
    nodes = tuple(
        Node(n.name, n.kind, n.layer, shapes.get(n.name), int(n.parameters)) for n in graph.nodes
    )
    return Architecture(nodes, tuple(graph.edges), graph.traced)


# ---------------------------------------------------------------------------- collapsing blocks
def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[./_]", name) if t]


def _prefix(name: str, depth: int) -> str:
    return "·".join(_tokens(name)[:depth])


def block_keys(arch: Architecture) -> dict[str, str]:
    """Node name -> block name, at the deepest level of the names' hierarchy (``layer3.1.conv2`` is in block
    ``layer3·1`` at depth 2) where the graph, with runs of identical blocks drawn once, keeps at most
    MAX_GROUPS nodes and three or more layers a node. An operation between layers belongs to the block
    of the layer it feeds."""
    layer_nodes = [n for n in arch.nodes if n.layer]
    limit = max(1, min(MAX_GROUPS, len(layer_nodes) // 3))
    best = {n.name: _prefix(n.name, 1) for n in layer_nodes}
    for depth in range(2, 1 + max((len(_tokens(n.name)) for n in layer_nodes), default=1)):
        keys = {n.name: _prefix(n.name, depth) for n in layer_nodes}
        members: dict[str, list[Node]] = {}
        for n in layer_nodes:
            members.setdefault(keys[n.name], []).append(n)
        if len(_runs(members, set())) > limit:
            break
        best = keys
    following: dict[str, list[str]] = {}
    for a, b in arch.edges:
        following.setdefault(a, []).append(b)
    preceding: dict[str, list[str]] = {}
    for a, b in arch.edges:
        preceding.setdefault(b, []).append(a)
    for node in arch.nodes:
        if node.layer:
            continue
        if node.name in ("input", "output"):
            best[node.name] = node.name
            continue
        nearby = [n for n in following.get(node.name, []) + preceding.get(node.name, []) if n in best]
        best[node.name] = best[nearby[0]] if nearby else node.name
    return best


# ---------------------------------------------------------------------------- DOT
def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(node: Node) -> str:
    if node.name in ("input", "output") and not node.layer:
        return node.name
    parts = [node.name, node.kind]
    if node.output_shape is not None:
        parts.append(" × ".join(map(str, node.output_shape)))
    if node.parameters:
        parts.append(f"{node.parameters:,} params")
    return "\n".join(parts)


def to_dot(
    arch: Architecture,
    *,
    selected: str | None = None,
    search: str = "",
    collapse: bool | None = None,
) -> str:
    """DOT text, top to bottom. ``selected`` is drawn filled (the CAM layer; a block: its last node), search
    matches highlighted;
    ``collapse`` (default: at COLLAPSE_FROM layers or more) draws one node per block, except blocks that
    hold the selected layer or a search match."""
    collapse = arch.layer_count >= COLLAPSE_FROM if collapse is None else collapse
    selected = arch.node_for(selected)
    matches = set(arch.search(search))
    skips = arch.skips()
    lines = [
        "digraph model {",
        '  graph [rankdir=TB, nodesep=0.25, ranksep=0.3, fontname="Helvetica"];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, margin="0.08,0.03"];',
        '  edge [arrowsize=0.6, color="#616161"];',
    ]
    shown: dict[str, str] = {}  # node name -> the DOT node that draws it
    if not collapse:
        for node in arch.nodes:
            shown[node.name] = node.name
            lines.append(f"  {_quote(node.name)} [{_attributes(node, selected, matches)}];")
    else:
        keys = block_keys(arch)
        keep = {keys.get(name) for name in matches | ({selected} if selected else set())}
        members: dict[str, list[Node]] = {}
        for node in arch.nodes:
            members.setdefault(keys.get(node.name, node.name), []).append(node)
        runs = _runs(members, keep)
        for run in runs:
            if len(run) == 1 and (run[0] in keep or len(members[run[0]]) == 1):
                for node in members[run[0]]:
                    shown[node.name] = node.name
                    lines.append(f"  {_quote(node.name)} [{_attributes(node, selected, matches)}];")
                continue
            block = f"block:{run[0]}"
            nodes = [n for key in run for n in members[key]]
            layers = [n for n in nodes if n.layer]
            kinds = _kind_summary(layers)
            title = run[0] if len(run) == 1 else f"{run[0]} … {run[-1]}  (× {len(run)} identical blocks)"
            last = next((n for n in reversed(nodes) if n.output_shape is not None), None)
            label = [title, f"{len(layers)} layers: {kinds}"]
            if last is not None:
                label.append(" × ".join(map(str, last.output_shape)))
            params = sum(n.parameters for n in nodes)
            if params:
                label.append(f"{params:,} params")
            for node in nodes:
                shown[node.name] = block
            lines.append(f'  {_quote(block)} [label={_quote(chr(10).join(label))}, fillcolor="#e3f2fd", shape=box3d];')
    drawn = set()
    for a, b in arch.edges:
        src, dst = shown.get(a), shown.get(b)
        if src is None or dst is None or src == dst or (src, dst) in drawn:
            continue
        drawn.add((src, dst))
        style = f' [color="{SKIP_COLOUR}", penwidth=1.4]' if (a, b) in skips else ""
        lines.append(f"  {_quote(src)} -> {_quote(dst)}{style};")
    lines.append("}")
    return "\n".join(lines)


def _attributes(node: Node, selected: str | None, matches: set[str]) -> str:
    fill = SELECTED_FILL if node.name == selected else MATCH_FILL if node.name in matches else LAYER_FILL if node.layer else OP_FILL
    shape = "" if node.layer else ", shape=ellipse"
    pen = ", penwidth=2.5" if node.name == selected else ""
    return f'label={_quote(_label(node))}, fillcolor="{fill}"{shape}{pen}, tooltip={_quote(node.name)}'


def _signature(nodes: Sequence[Node]) -> tuple:
    return tuple((n.kind, n.output_shape, n.parameters) for n in nodes if n.layer)


def _runs(members: dict[str, list[Node]], keep: set) -> list[list[str]]:
    """Consecutive blocks with the same layers (kinds, shapes, sizes) grouped into runs."""
    runs: list[list[str]] = []
    for key, nodes in members.items():
        if runs and key not in keep and runs[-1][-1] not in keep and len(nodes) > 1 and _signature(members[runs[-1][-1]]) == _signature(nodes):
            runs[-1].append(key)
        else:
            runs.append([key])
    return runs


def _kind_summary(layers: Sequence[Node]) -> str:
    counts: dict[str, int] = {}
    for n in layers:
        counts[n.kind] = counts.get(n.kind, 0) + 1
    return ", ".join(f"{kind} × {c}" if c > 1 else kind for kind, c in counts.items())
