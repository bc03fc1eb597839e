"""merge_branches: a sum of linear branches of one tensor x becomes one Conv (RepVGG, ACNet,
DBB, MobileOne, RepViT, FastViT, PP-YOLOE's alpha block, and any other such block).

A branch is any expression of x built from Conv (constant weights), AveragePool, BatchNormalization,
Mul/Add/Sub/Div by per-channel constants, Identity, sums and differences of branches, and x itself;
a Transpose that undoes the input's own layout Transpose (tf2onnx's NHWC identity branch) counts
too. Every branch becomes a ConvMap (onnx_fuse.fold), and the maps are summed, composed and padded
to the largest kernel. Refuses a nonlinearity, an intermediate with another reader or that is a
graph output, non-constant weights, mismatched strides/groups/dilations, kernels that do not line
up, and a merged Conv that would do more work than the branches it replaces. When only some terms
of the sum are branches (two or more), those merge and the rest is added. Branches whose pads
depend on the input size (auto_pad SAME with a stride) merge at the size the model records, or at
every size when they line up at every size (see MergeBranches._at_every_size).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from onnx_fuse import convmap, fold
from onnx_fuse.convmap import ConvMap
from onnx_fuse.fold import FoldError
from onnx_fuse.graph import Graph
from onnx_fuse.linear import read_linear
from onnx_fuse.match import (attributes, auto_pad, batchnorm_affine, conv_padding, elementwise_affine,
                             has_attribute_refs, is_op, same_padding)
from onnx_fuse.rule import Pass, Plan, Refusal

LINEAR_STEPS = ("Conv", "AveragePool", "BatchNormalization", "Mul", "Add", "Sub", "Div", "Sum",
                "Identity", "Transpose", "Concat")


@dataclass(frozen=True)
class BranchSum:
    anchor: int
    roots: tuple  # candidate tensors x, the deepest first


@dataclass
class MergePlan(Plan):
    """The merged convolution of `branches.root` that replaces the sum at `anchor`."""

    anchor: int
    branches: "Branches"
    merged: ConvMap
    weight: np.ndarray  # merged.kernel and merged.bias in the weights' dtype
    bias: np.ndarray
    auto_pad: str | None = None  # SAME_UPPER/LOWER: merged at every input size, pads left to the runtime
    residual: tuple = ()  # terms of the sum that are not branches of the root, added to the merged Conv

    def takes(self) -> tuple[int, ...]:
        return tuple(sorted(self.branches.covered | {self.anchor}))


@dataclass
class Branches:
    """What expressing the sum against one root found: the nodes it covers and what they cost."""

    root: str
    channels: int
    rank: int
    dtype: np.dtype
    covered: set = field(default_factory=set)
    cost: int = 0
    graph: Graph | None = None
    cone: set = field(default_factory=set)  # nodes that only size Concat borders (see border_value)
    assumed: tuple | None = None  # spatial lengths of the root to compute with (see _at_every_size)
    unsized: list = field(default_factory=list)  # Convs whose pads needed the root's unknown lengths

    def sizes(self):
        """The root's spatial lengths (None where unknown), from the model or shape inference."""
        if self.assumed is not None:
            return self.assumed
        shape = self.graph.known_shape(self.root)
        if shape is None or len(shape) != self.rank + 2:
            return None
        return shape[2:]


def conv_map(graph: Graph, index: int, br: Branches | None = None) -> ConvMap | Refusal:
    node = graph.node(index)
    op = read_linear(graph, index)
    if isinstance(op, Refusal):
        return op
    rank = op.weight.ndim - 2
    attrs = attributes(node)
    strides = tuple(attrs.get("strides", (1,) * rank))
    dilations = tuple(attrs.get("dilations", (1,) * rank))
    if br is not None and node.input[0] == br.root:
        sizes = br.sizes()
    else:
        shape = graph.known_shape(node.input[0])
        sizes = shape[2:] if shape else None
    pads = conv_padding(node, op.weight.shape[2:], strides, dilations, sizes)
    if pads is None:
        if br is not None and node.input[0] == br.root:
            br.unsized.append(index)
        return Refusal("Conv pads depend on the input size (auto_pad SAME with stride > 1), which the "
                       "model does not record: give it (--input-shape)")
    bias = np.zeros(op.out_channels) if op.bias is None else fold.as_f64(op.bias)
    return ConvMap(fold.as_f64(op.weight), bias, op.groups, strides, dilations, pads, sources=[node.name])


def average_pool_map(node, channels: int, rank: int) -> ConvMap | Refusal:
    attrs = attributes(node)
    kernel = tuple(attrs["kernel_shape"])
    pads = tuple(attrs.get("pads", (0,) * (2 * rank)))
    padding = auto_pad(node)
    if padding not in ("NOTSET", "VALID"):
        return Refusal("AveragePool with auto_pad SAME")
    if padding == "VALID":
        pads = (0,) * (2 * rank)
    if attrs.get("ceil_mode", 0):
        return Refusal("AveragePool with ceil_mode=1")
    if any(d != 1 for d in attrs.get("dilations", ())):
        return Refusal("AveragePool with dilations")
    if any(pads) and not attrs.get("count_include_pad", 0):
        return Refusal("AveragePool excludes the padding from its count (count_include_pad=0)")
    return convmap.average_pool_map(channels, kernel, attrs.get("strides", (1,) * rank), pads)


def is_border(graph: Graph, name: str) -> bool:
    if graph.is_constant(name):
        return True
    producer = graph.producer_of(name)
    return is_op(graph.node(producer) if producer is not None else None, "Expand") and graph.is_constant(
        graph.node(producer).input[0])


def border_value(graph: Graph, name: str, axis: int, br: Branches):
    """(value per channel (or one for all), width along `axis`, dtype) of a Concat border: a
    constant of one value per channel, or Expand(such a constant, a shape computed from the
    input's: paddle2onnx with a dynamic batch), whose width shape_value finds. The nodes computing
    that shape join br.cone: they go with the merge."""
    rank = br.rank + 2
    producer = graph.producer_of(name)
    expand = None if graph.is_constant(name) else graph.node(producer)
    value = graph.constant(expand.input[0] if expand is not None else name)
    if value.dtype.kind != "f" or value.ndim > rank or (expand is None and value.ndim != rank):
        return Refusal(f"border '{name}' is not a per-channel border")
    value = value.reshape((1,) * (rank - value.ndim) + value.shape)  # Expand aligns shapes at the right
    rows = value.reshape(value.shape[0], value.shape[1], -1)
    if np.any(rows != rows[:1, :, :1]):
        return Refusal(f"border '{name}' is not one value per channel")
    width = value.shape[axis]
    if expand is not None:
        target = graph.shape_value(expand.input[1])
        if target is None or len(target) > rank:
            return Refusal(f"the size of border '{name}' (an Expand) is not shape arithmetic onnx-fuse follows")
        target = (1,) * (rank - len(target)) + tuple(target)
        if width == 1:
            width = target[axis]
        elif target[axis] not in (1, width, None):
            return Refusal(f"border '{name}': Expand to {target[axis]} of a length {width}")
        if width is None:
            return Refusal(f"the width of border '{name}' depends on a size the model does not record")
        cone = shape_cone(graph, expand.input[1])
        if cone is None:
            return Refusal(f"the size of border '{name}' is computed by more than shape arithmetic")
        br.cone |= cone | {producer}
    return rows[0, :, 0], width, value.dtype


def shape_cone(graph: Graph, name: str, limit: int = 64) -> set | None:
    """The nodes computing the shape `name` back to constants and Shape nodes (whose input is only
    measured, not read), None past `limit` nodes."""
    cone, frontier = set(), [name]
    while frontier:
        current = frontier.pop()
        index = graph.producer_of(current)
        if index is None or index in cone or graph.is_constant(current):
            continue
        cone.add(index)
        if len(cone) > limit:
            return None
        node = graph.node(index)
        if not is_op(node, "Shape"):
            frontier.extend(n for n in node.input if n)
    return cone


def same_map(a: ConvMap, b: ConvMap) -> bool:
    return (np.array_equal(a.kernel, b.kernel) and np.array_equal(a.bias, b.bias)
            and (a.groups, a.strides, a.dilations) == (b.groups, b.strides, b.dilations))


class MergeBranches(Pass):
    name = "merge_branches"
    summary = "sums of parallel linear branches of one input (RepVGG, ACNet, DBB, MobileOne...): one Conv"
    anchors = ("Add", "Sum", "Sub")

    def match(self, graph: Graph, index: int):
        node = graph.node(index)
        if sum(1 for name in node.input if name and not graph.is_constant(name)) < 2:
            return None
        roots, seen, frontier, depth = {}, set(), [n for n in node.input if n], 0
        while frontier:
            depth += 1
            following = []
            for name in frontier:
                producer = graph.producer_of(name)
                if producer is None or producer in seen:
                    continue
                seen.add(producer)
                step = graph.node(producer)
                if not is_op(step, *LINEAR_STEPS):
                    continue
                if step.op_type in ("Conv", "AveragePool"):
                    roots[step.input[0]] = max(depth, roots.get(step.input[0], 0))
                following += [n for n in step.input if n and not graph.is_constant(n)]
            frontier = following
        if not roots:
            return None
        return BranchSum(index, tuple(sorted(roots, key=lambda r: -roots[r])))

    def check(self, graph: Graph, match: BranchSum) -> MergePlan | Refusal:
        first_refusal = None
        for root in match.roots:
            plan = self._against(graph, match, root)
            if not isinstance(plan, Refusal):
                return plan
            if first_refusal is None:
                first_refusal = plan
        return first_refusal

    def _against(self, graph: Graph, match: BranchSum, root: str):
        readers = [i for i in graph.readers(root) if is_op(graph.node(i), "Conv")]
        weights = [(i, graph.constant_type(graph.node(i).input[1])) for i in readers if len(graph.node(i).input) > 1]
        reader, (shape, dtype) = next(((i, t) for i, t in weights if t is not None and len(t[0]) >= 3),
                                      (None, (None, None)))
        if reader is None:
            return Refusal(f"no Conv with a constant weight reads '{root}'")
        groups = int(attributes(graph.node(reader)).get("group", 1))
        branches = Branches(root, shape[1] * groups, len(shape) - 2, dtype, graph=graph)
        merged = self._express(graph, graph.node(match.anchor).output[0], branches, top=True)
        padding, residual = None, ()
        if isinstance(merged, Refusal) and branches.unsized:
            found = self._at_every_size(graph, match, branches)
            if found is not None:
                branches, merged, padding = found
        if isinstance(merged, Refusal):
            found = self._some_terms(graph, match, branches)
            if found is not None:
                branches, merged, residual = found
        if isinstance(merged, Refusal):
            return merged
        for index in branches.cone:  # what sized the borders goes with them, so nothing else may read it
            for out in graph.node(index).output:
                if out in graph.outputs or any(r not in branches.covered | branches.cone for r in graph.readers(out)):
                    return Refusal(f"'{out}', which sizes a Concat border, is read elsewhere")
        branches.covered |= branches.cone
        if merged.diagonal:
            return Refusal("no branch is a convolution")
        if merged.macs_per_pixel > branches.cost:
            return Refusal(f"the merged Conv would do more work ({merged.macs_per_pixel} multiply-adds "
                           f"per output position) than the branches ({branches.cost})")
        try:
            weight = fold.cast_like(merged.kernel, branches.dtype, "merged Conv weight")
            bias = fold.cast_like(merged.bias, branches.dtype, "merged Conv bias")
        except FoldError as error:
            return Refusal(str(error))
        return MergePlan(match.anchor, branches, merged, weight, bias, padding, residual)

    def _some_terms(self, graph: Graph, match: BranchSum, whole: Branches):
        """(branches, merged map, residual terms) when the sum as a whole is not one Conv of the
        root but two or more of its terms are (DBB's depthwise form, whose average pool excludes
        its padding): those merge into one Conv and the other terms are added to it. None when
        fewer than two terms merge, or every term does (the refusal of the whole then stands)."""
        terms, tree, stack = [], [], [(graph.node(match.anchor).output[0], True)]
        while stack:  # the sum's terms, through the Adds and Sums only this sum reads
            name, top = stack.pop()
            index = graph.producer_of(name)
            node = graph.node(index) if index is not None else None
            if (is_op(node, "Add", "Sum") and not has_attribute_refs(node) and all(node.input)
                    and (top or (name not in graph.outputs and graph.sole_consumer(name) is not None))):
                tree.append(index)
                stack.extend((n, False) for n in reversed(node.input))
            else:
                terms.append(name)
        merged = Branches(whole.root, whole.channels, whole.rank, whole.dtype, graph=graph, covered=set(tree))
        maps, residual = [], []
        for term in terms:
            branch = Branches(whole.root, whole.channels, whole.rank, whole.dtype, graph=graph)
            m = self._express(graph, term, branch)
            if isinstance(m, Refusal) or branch.covered & merged.covered:
                residual.append(term)
                continue
            maps.append(m)
            merged.covered |= branch.covered
            merged.cone |= branch.cone
            merged.cost += branch.cost
        if len(maps) < 2 or not residual:
            return None
        try:
            return merged, convmap.sum_maps(maps, merged.sizes), tuple(residual)
        except FoldError:
            return None

    def _at_every_size(self, graph: Graph, match: BranchSum, first: Branches):
        """(branches, merged map, auto_pad) when the sum is one Conv with auto_pad SAME at every
        input length, though its branches' pads depend on the length (auto_pad SAME with a
        stride). SAME pads depend on a length n only through n mod stride, so the sum is merged
        once per residue (at a stand-in length of that residue); it holds at every n when all the
        merges agree and each one's pads are what SAME gives the merged kernel at that length.
        Branches of identical geometry pass; a strided 3x3 beside a 1x1 does not (the 1x1 lands
        on the 3x3's corner or centre by the parity of n). None otherwise."""
        conv = graph.node(first.unsized[0])
        if auto_pad(conv) not in ("SAME_UPPER", "SAME_LOWER"):
            return None
        padding = auto_pad(conv)
        rank = first.rank
        strides = tuple(attributes(conv).get("strides", (1,) * rank))
        known = first.sizes() or (None,) * rank
        choices = [[n] if isinstance(n, int) and n > 0 else [1024 * s + r for r in range(s)]
                   for n, s in zip(known, strides)]
        if len(strides) != rank or int(np.prod([len(c) for c in choices])) > 64:
            return None
        result = None
        for lengths in itertools.product(*choices):
            br = Branches(first.root, first.channels, rank, first.dtype, graph=graph, assumed=tuple(lengths))
            merged = self._express(graph, graph.node(match.anchor).output[0], br, top=True)
            if isinstance(merged, Refusal) or any(d != 1 for d in merged.dilations):
                return None  # (onnxruntime has no SAME with dilations)
            runtime = same_padding(padding, merged.kernel.shape[2:], merged.strides, merged.dilations, lengths)
            if runtime != tuple(merged.pads):
                return None
            if result is None:
                result = (br, merged)
            elif not same_map(result[1], merged) or br.covered != result[0].covered:
                return None
        return result + (padding,)

    def _express(self, graph: Graph, name: str, br: Branches, top=False) -> ConvMap | Refusal:
        """`name` as one convolution of br.root, covering the nodes on the way."""
        if name == br.root:
            br.cost += br.channels
            return convmap.identity_map(br.channels, br.rank)
        if not top:
            if name in graph.outputs:
                return Refusal(f"'{name}' inside the branches is a graph output")
            readers = [r for r in graph.readers(name) if r not in br.cone]  # a border's Shape may read it
            if len(readers) != 1:
                return Refusal(f"'{name}' inside the branches has {len(readers)} readers")
        index = graph.producer_of(name)
        if index is None:
            return Refusal(f"a branch reads '{name}', which is not computed from '{br.root}'")
        node = graph.node(index)
        if not is_op(node, *LINEAR_STEPS) or has_attribute_refs(node):
            return Refusal(f"{node.op_type} '{node.name}' in a branch is not linear")
        br.covered.add(index)
        try:
            return self._step(graph, node, index, br)
        except FoldError as error:
            return Refusal(str(error))

    def _step(self, graph, node, index, br: Branches):
        op = node.op_type
        if op == "Identity":
            return self._express(graph, node.input[0], br)
        if op == "Conv":
            m = conv_map(graph, index, br)
            if isinstance(m, Refusal):
                return m
            br.cost += m.macs_per_pixel
            if node.input[0] == br.root:
                return m
            inner = self._express(graph, node.input[0], br)
            return inner if isinstance(inner, Refusal) else convmap.compose_maps(inner, m)
        if op == "AveragePool":
            inner = self._express(graph, node.input[0], br)
            if isinstance(inner, Refusal):
                return inner
            pool = average_pool_map(node, inner.out_channels, br.rank)
            if isinstance(pool, Refusal):
                return pool
            br.cost += pool.macs_per_pixel
            return pool if node.input[0] == br.root else convmap.compose_maps(inner, pool)
        if op == "BatchNormalization":
            inner = self._express(graph, node.input[0], br)
            if isinstance(inner, Refusal):
                return inner
            ab = batchnorm_affine(graph, node, inner.out_channels)
            return ab if isinstance(ab, Refusal) else convmap.affine_after_map(inner, *ab)
        if op == "Transpose":
            return self._layout_branch(graph, node, br)
        if op == "Concat":
            return self._border(graph, node, br)
        variables = [n for n in node.input if n and not graph.is_constant(n)]
        if len(variables) == 1 and len(node.input) == 2:
            inner = self._express(graph, variables[0], br)
            if isinstance(inner, Refusal):
                return inner
            ab = elementwise_affine(graph, node, variables[0], br.rank + 2, inner.out_channels)
            return ab if isinstance(ab, Refusal) else convmap.affine_after_map(inner, *ab)
        if op == "Sum" or (op in ("Add", "Sub") and len(variables) == 2):
            maps = []
            for position, operand in enumerate(node.input):
                inner = self._express(graph, operand, br)
                if isinstance(inner, Refusal):
                    return inner
                maps.append(convmap.negate(inner) if op == "Sub" and position == 1 else inner)
            return convmap.sum_maps(maps, br.sizes)
        return Refusal(f"{op} '{node.name}' in a branch does not scale or sum branches")

    def _border(self, graph, node, br: Branches):
        """Concat(border, branch, border) along a spatial axis, each border a constant or an Expand
        of one: padding with per-channel values (paddle2onnx writes DBB's BatchNorm-and-pad so)."""
        middle = [i for i, name in enumerate(node.input) if not is_border(graph, name)]
        if len(middle) != 1:
            return Refusal(f"Concat '{node.name}' joins {len(middle)} branches, not one between constant borders")
        axis = attributes(node).get("axis", 0)
        axis = axis + br.rank + 2 if axis < 0 else axis
        if axis < 2:
            return Refusal(f"Concat '{node.name}' joins along the batch or channel axis")
        borders = {}
        for position, name in enumerate(node.input):
            if position != middle[0]:
                border = border_value(graph, name, axis, br)  # first: its Shape may read the branch
                if isinstance(border, Refusal):
                    return border
                borders[position] = border
        inner = self._express(graph, node.input[middle[0]], br)
        if isinstance(inner, Refusal):
            return inner
        for position, (values, width, dtype) in borders.items():
            if len(values) != inner.out_channels and not (len(values) == 1 and not graph.is_constant(
                    node.input[position])):  # (an Expand may broadcast one value over the channels)
                return Refusal(f"Concat '{node.name}' border '{node.input[position]}' is not a per-channel border")
            before, after = (width, 0) if position < middle[0] else (0, width)
            rtol = 8 * float(np.finfo(dtype).eps)  # the border holds the value rounded to its dtype
            values = np.broadcast_to(values.astype(np.float64), (inner.out_channels,))
            inner = convmap.pad_map(inner, axis - 2, before, after, values, rtol)
        return inner

    def _layout_branch(self, graph, node, br: Branches):
        """Transpose(affine(s)) where the root is Transpose(s) with the same perm: an identity branch
        computed in the other layout (tf2onnx keeps a BN of the NHWC input in NHWC)."""
        perm = tuple(attributes(node).get("perm", ()))
        root_index = graph.producer_of(br.root)
        root_node = graph.node(root_index) if root_index is not None else None
        if not is_op(root_node, "Transpose") or tuple(attributes(root_node).get("perm", ())) != perm or not perm:
            return Refusal("a Transpose in a branch does not match the layout Transpose of the input")
        source, axis = root_node.input[0], perm[1]
        scale, shift = np.ones(br.channels), np.zeros(br.channels)
        name = node.input[0]
        while name != source:
            if graph.sole_consumer(name) is None:
                return Refusal(f"'{name}' inside the branches has other readers")
            index = graph.producer_of(name)
            step = graph.node(index) if index is not None else None
            if not is_op(step, "Mul", "Add", "Sub", "Div", "Identity"):
                return Refusal(f"a branch reads '{name}', which is not a per-channel affine of '{source}'")
            br.covered.add(index)
            if step.op_type == "Identity":
                name = step.input[0]
                continue
            variables = [n for n in step.input if not graph.is_constant(n)]
            if len(variables) != 1:
                return Refusal(f"{step.op_type} '{step.name}' does not scale one tensor")
            ab = elementwise_affine(graph, step, variables[0], len(perm), br.channels, axis=axis)
            if isinstance(ab, Refusal):
                return ab
            # walking back from the output, this step applies before those already seen:
            # outer(x * a + b) = x * (a * scale) + (b * scale + shift)
            scale, shift = ab[0] * scale, ab[1] * scale + shift
            name = variables[0]
        br.cost += br.channels
        return convmap.affine_after_map(convmap.identity_map(br.channels, br.rank), scale, shift)

    def rewrite(self, graph: Graph, match: BranchSum, plan: MergePlan):
        branches, merged, weight, bias = plan.branches, plan.merged, plan.weight, plan.bias
        anchor = graph.node(match.anchor)
        base = anchor.name or anchor.output[0]
        padding = {"auto_pad": plan.auto_pad} if plan.auto_pad else {"pads": list(merged.pads)}
        output = anchor.output[0]
        sums = []
        for position, term in enumerate(reversed(plan.residual)):  # conv + t1 + t2 ...: the last Add is the anchor's
            sums.insert(0, helper.make_node(
                "Add", ["", term], [output], name=anchor.name if position == 0 and anchor.name else
                graph.fresh_name(f"{base}_residual")))
            output = graph.fresh_name(f"{base}_merged")
            sums[0].input[0] = output
        conv = helper.make_node(
            "Conv", [branches.root, graph.add_constant(weight, f"{base}_merged_weight"),
                     graph.add_constant(bias, f"{base}_merged_bias")],
            [output], name=anchor.name if not sums and anchor.name else graph.fresh_name(f"{base}_merged"),
            group=merged.groups, kernel_shape=list(merged.kernel.shape[2:]), strides=list(merged.strides),
            dilations=list(merged.dilations), **padding)
        if not sums:
            graph.replace_node(match.anchor, conv)
            first = match.anchor
        else:  # the Conv where the first node reading the root stood (as a topological sort puts it)
            first = min(i for i in branches.covered - {match.anchor} if branches.root in graph.node(i).input)
            graph.replace_node(first, conv)
            graph.replace_with_nodes(match.anchor, sums)
        for index in branches.covered - {match.anchor, first}:
            graph.remove_node(index)
