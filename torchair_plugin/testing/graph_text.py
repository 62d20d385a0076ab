"""A stable, readable form of a GE GraphDef, for golden files and diffs.

Contract of :func:`normalize` (and of :func:`to_text` / :func:`to_json` built on it):

- ops in a canonical topological order (the same whatever order or names torchair gave them);
  each op renamed ``<Type>_<k>``, ``k`` counting ops of that type in that order, so names
  never carry torchair's global counters;
- given ``input_names`` (what each graph input is: the capture knows it from Dynamo), ``Data``
  ops are named ``Data(<input>)``, placed in the order of those names, and their ``index`` attr
  (the input's position, which Dynamo orders differently across torch versions) is left out;
- every input as ``producer:index`` in the new names, with its dtype and shape;
- shapes as lists of ints, ``-1`` for a dynamic dim (symbolic sizes, whatever their name);
- attrs sorted by name; torchair-internal attrs (name starting with ``_``) left out;
- for ops in :data:`OP_IRS`: the two spellings of an absent optional input (dropped by
  ``ge_op(ir=...)``, or a ``''`` / DT_UNDEFINED placeholder from ``ge_op(ir=None)``) read the
  same (``<none>``), inputs are listed in IR order, and attrs equal to their IR default, omitted
  by the ``ir=`` path, are filled in. Other ops are shown as emitted, placeholders as ``<none>``.

Nothing here needs torch or torchair: it reads the protobuf message's fields (and the op's IR
from :mod:`torchair_plugin.schema`, parsed without torch).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torchair_plugin import _upstream, schema
from torchair_plugin.schema import split_top_level

NONE_INPUT = "<none>"
UNKNOWN_SHAPE = None  # a desc with neither dims nor a parseable ``_meta``

AttrValue = Union[int, float, bool, str, List[Any], Dict[str, Any]]


@dataclass(frozen=True)
class OpIR:
    """What the normaliser must know about one GE op type: its inputs and attr defaults.

    ``inputs`` lists every input in IR order; ``optional_inputs`` those that may be absent;
    ``attr_defaults`` the optional attrs with the value GE assumes when they are not set.
    """

    inputs: Tuple[str, ...]
    optional_inputs: frozenset = frozenset()
    attr_defaults: Mapping[str, AttrValue] = field(default_factory=dict)

    @classmethod
    def from_schema(cls, schema_text: str) -> "OpIR":
        """The IR of an op whose GE node mirrors its torch schema (tensors as inputs, the other
        arguments as attrs with the schema's defaults), as the plugin's converter writes it."""
        tables = schema.OpTables.from_schema(schema_text)
        defaults: Dict[str, AttrValue] = dict(tables.attr_defaults)  # type: ignore[arg-type]  # schema defaults are attr values
        return cls(tables.inputs, frozenset(tables.optional_inputs), defaults)


# Extend this table (or call register_op_ir) when a converter emits a new op type.
OP_IRS: Dict[str, OpIR] = {schema.GE_OP_TYPE: OpIR.from_schema(schema.SCHEMA)}


def register_op_ir(op_type: str, ir: OpIR) -> None:
    """Teach the normaliser an op type's inputs and defaults (replaces an earlier entry)."""
    OP_IRS[op_type] = ir


@dataclass
class Input:
    name: str
    source: str  # "Producer_k:index" or NONE_INPUT
    dtype: Optional[str] = None
    shape: Optional[List[int]] = None


@dataclass
class Output:
    name: str
    dtype: str
    shape: Optional[List[int]]


@dataclass
class Op:
    name: str
    type: str
    inputs: List[Input]
    attrs: Dict[str, AttrValue]
    outputs: List[Output]
    control_inputs: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "inputs": [vars(i) for i in self.inputs],
            "control_inputs": list(self.control_inputs),
            "attrs": dict(self.attrs),
            "outputs": [vars(o) for o in self.outputs],
        }


# --- protobuf field readers ---------------------------------------------------------------------


def _dtype_name(message: Any, number: int) -> str:
    """DataType enum name (DT_FLOAT...) for ``number``, from the proto file ``message`` is in.

    Read from the descriptor, not a table here, so it follows torchair's ge_ir.proto.
    """
    enum = message.DESCRIPTOR.file.enum_types_by_name.get("DataType")
    if enum is not None and number in enum.values_by_number:
        return enum.values_by_number[number].name
    return f"DT_{number}"


_META_SHAPE = re.compile(r"shape=torch\.Size\(\[(.*)\]\)")


def parse_meta_shape(meta: str) -> Optional[List[int]]:
    """Shape from torchair's ``_meta`` desc attr; any non-integer (symbolic) dim becomes -1."""
    match = _META_SHAPE.search(meta)
    if match is None:
        return None
    dims = []
    for dim in split_top_level(match.group(1)):
        dims.append(int(dim) if re.fullmatch(r"-?\d+", dim) else -1)
    return dims


def _desc_shape(desc: Any) -> Optional[List[int]]:
    # Proto dims when present (Data and NetOutput descs carry them); else the torch shape
    # torchair stores in ``_meta`` (op output descs carry only that); else a present-but-empty
    # shape message is a scalar.
    if desc.HasField("shape") and len(desc.shape.dim) > 0:
        return [int(d) for d in desc.shape.dim]
    if _upstream.META_DESC_ATTR in desc.attr:
        parsed = parse_meta_shape(desc.attr[_upstream.META_DESC_ATTR].s.decode("utf-8", "replace"))
        if parsed is not None:
            return parsed
    if desc.HasField("shape"):
        return []
    return UNKNOWN_SHAPE


def _tensor_value(tensor: Any) -> Dict[str, Any]:
    data = bytes(tensor.data)
    shown = data.hex() if len(data) <= 32 else "sha256:" + hashlib.sha256(data).hexdigest()[:16]
    return {"dtype": _dtype_name(tensor.desc, tensor.desc.dtype), "shape": _desc_shape(tensor.desc), "data": shown}


def _attr_value(value: Any) -> Optional[AttrValue]:
    kind = value.WhichOneof("value")
    if kind == "s":
        return value.s.decode("utf-8", "replace")
    if kind in ("i", "f", "b"):
        return getattr(value, kind)
    if kind == "dt":
        return _dtype_name(value, value.dt)
    if kind == "t":
        return _tensor_value(value.t)
    if kind == "list":
        lst = value.list
        for name in ("s", "i", "f", "b", "dt"):
            items = getattr(lst, name, None)
            if items:
                if name == "s":
                    return [v.decode("utf-8", "replace") for v in items]
                if name == "dt":
                    return [_dtype_name(lst, v) for v in items]
                return list(items)
        for name in ("t", "list_list_int"):
            items = getattr(lst, name, None)
            if items:
                return [str(v) for v in items]
        return []
    if kind is None:
        return None
    return f"<{kind}>"


# --- normalisation -----------------------------------------------------------------------------


def _topological_order(ops: Sequence[Any], labels: Optional[Sequence[Optional[str]]] = None) -> List[int]:
    """Indices of ``ops`` in a canonical topological order, independent of the list's order.

    Among the ops whose producers are all placed, the next is the smallest by: Data ops first
    by their label (``labels[i]``, when given) or else their ``index`` attr; then by the positions of its producers, its type, its public
    attrs; the list position only separates ops that are identical in all of these.
    """
    index = {op.name: i for i, op in enumerate(ops)}
    producers: List[List[int]] = []
    for op in ops:
        found = []
        for source in op.input:
            if source:
                producer = source[1:] if source.startswith("^") else source.rsplit(":", 1)[0]
                if producer in index:
                    found.append(index[producer])
        producers.append(found)
    consumers: Dict[int, List[int]] = {i: [] for i in range(len(ops))}
    waiting = [len(set(p)) for p in producers]
    for i, found in enumerate(producers):
        for producer in set(found):
            consumers[producer].append(i)

    position: Dict[int, int] = {}

    def key(i: int) -> Tuple:
        op = ops[i]
        if op.type == "Data" and "index" in op.attr:
            label = labels[i] if labels is not None and labels[i] is not None else ""
            return (0, label, op.attr["index"].i, (), "", "", i)
        public = sorted((k, str(v)) for k, v in op.attr.items() if not k.startswith("_"))
        return (1, "", 0, tuple(position[p] for p in producers[i]), op.type, str(public), i)

    ready = [(key(i), i) for i in range(len(ops)) if waiting[i] == 0]
    heapq.heapify(ready)
    order: List[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        position[i] = len(order)
        order.append(i)
        for consumer in consumers[i]:
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, (key(consumer), consumer))
    if len(order) != len(ops):
        stuck = sorted(set(range(len(ops))) - set(order))
        raise ValueError("GE graph has a cycle: " + ", ".join(ops[i].name for i in stuck))
    return order


def _is_placeholder(source: str, desc: Any) -> bool:
    return source == "" or (desc is not None and _dtype_name(desc, desc.dtype) == "DT_UNDEFINED")


# torchair names a Data op after its FX placeholder; AOTAutograd names the placeholder for the
# n-th input of the Dynamo graph ``arg<n>_1`` (symbolic sizes included, which get no Data op).
_AOT_PLACEHOLDER = re.compile(r"arg(\d+)_\d+\Z")


def _data_label(op: Any, input_names: Optional[Sequence[str]]) -> Optional[str]:
    """Which graph input a Data op stands for: by its placeholder name, else by its index."""
    if input_names is None or op.type != "Data" or "index" not in op.attr:
        return None
    match = _AOT_PLACEHOLDER.match(op.name)
    position = int(match.group(1)) if match else op.attr["index"].i
    return input_names[position] if 0 <= position < len(input_names) else None


def _readable_source(name: str) -> str:
    """Dynamo's source name as Python: ``L['self']._modules['w']._parameters['weight']`` ->
    ``self.w.weight``; ``L['ids'].size()[0]`` -> ``ids.size(0)``."""
    text = re.sub(r"^[LG]\[", "[", name)
    text = re.sub(r"\._(?:modules|parameters|buffers)\[", "[", text)
    text = re.sub(r"\[['\"]([^'\"]*)['\"]\]", r".\1", text)
    text = re.sub(r"\.size\(\)\[(\d+)\]", r".size(\1)", text)
    return text.lstrip(".")


def dynamo_input_names(gm: Any) -> List[str]:
    """What each placeholder of a Dynamo FX graph is, from Dynamo's record of its source.

    ``ids`` for the argument ``ids``, ``self.w.weight`` for a parameter, ``ids.size(0)`` for a
    symbolic size; the placeholder's own name where Dynamo recorded no source.
    """
    return [name if raw is None else _readable_source(raw) for name, raw in dynamo_input_sources(gm)]


def dynamo_input_sources(gm: Any) -> List[Tuple[str, Optional[str]]]:
    """(placeholder name, Dynamo's source name or None) of each placeholder of a Dynamo FX graph:
    ``L['self']._buffers['table']`` says more than its readable form (a buffer, not a parameter)."""
    sources: List[Tuple[str, Optional[str]]] = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        source = getattr(node.meta.get("grapharg"), "source", None)
        if source is None:
            sources.append((node.name, None))
            continue
        sources.append(
            (node.name, source.name() if callable(source.name) else source.name)
        )  # a property on newer torch
    return sources


def normalize(
    graph_def: Any, irs: Optional[Mapping[str, OpIR]] = None, input_names: Optional[Sequence[str]] = None
) -> List[Op]:
    """The ops of a GE GraphDef in the stable form described in the module docstring."""
    irs = OP_IRS if irs is None else irs
    ops = list(graph_def.op)
    labels = [_data_label(op, input_names) for op in ops]
    order = _topological_order(ops, labels)
    new_names: Dict[str, str] = {}
    per_type: Dict[str, int] = {}
    for i in order:
        op = ops[i]
        k = per_type.get(op.type, 0)
        per_type[op.type] = k + 1
        new_names[op.name] = f"Data({labels[i]})" if labels[i] is not None else f"{op.type}_{k}"

    def rename(source: str) -> str:
        producer, _, idx = source.rpartition(":")
        return f"{new_names.get(producer, producer)}:{idx}" if producer else new_names.get(source, source)

    result = []
    for i in order:
        op = ops[i]
        data_inputs = [s for s in op.input if not s.startswith("^")]
        control = sorted(new_names.get(s[1:], s[1:]) for s in op.input if s.startswith("^"))
        inputs = []
        for slot, source in enumerate(data_inputs):
            desc = op.input_desc[slot] if slot < len(op.input_desc) else None
            name = desc.name if desc is not None and desc.name else f"input{slot}"
            if _is_placeholder(source, desc):
                inputs.append(Input(name, NONE_INPUT))
            else:
                dtype = _dtype_name(desc, desc.dtype) if desc is not None else None
                inputs.append(Input(name, rename(source), dtype, _desc_shape(desc) if desc is not None else None))
        attrs: Dict[str, Any] = {k: _attr_value(v) for k, v in op.attr.items() if not k.startswith("_")}
        if labels[i] is not None:
            del attrs["index"]
        ir = irs.get(op.type)
        if ir is not None:
            inputs = _inputs_in_ir_order(op.type, ir, inputs)
            for attr, default in ir.attr_defaults.items():
                attrs.setdefault(attr, default)
        outputs = [Output(d.name, _dtype_name(d, d.dtype), _desc_shape(d)) for d in op.output_desc]
        result.append(Op(new_names[op.name], op.type, inputs, dict(sorted(attrs.items())), outputs, control))
    return result


def _inputs_in_ir_order(op_type: str, ir: OpIR, inputs: List[Input]) -> List[Input]:
    by_name = {i.name: i for i in inputs}
    unknown = set(by_name) - set(ir.inputs)
    if unknown:
        raise ValueError(f"{op_type} has inputs {sorted(unknown)} that its OpIR does not list {list(ir.inputs)}")
    ordered = []
    for name in ir.inputs:
        inp = by_name.get(name, Input(name, NONE_INPUT))
        if inp.source == NONE_INPUT and name not in ir.optional_inputs:
            raise ValueError(f"{op_type}: required input {name!r} is absent")
        ordered.append(inp)
    return ordered


# --- renderings ---------------------------------------------------------------------------------


def _fmt_shape(shape: Optional[List[int]]) -> str:
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _fmt_value(value: AttrValue) -> str:
    return json.dumps(value, sort_keys=True)


def to_text(ops: Sequence[Op]) -> str:
    """One block per op; ends with a newline. Example::

    MatMul_0: MatMul
      in x1 = Data_0:0 DT_FLOAT [-1, 4]
      attr transpose_x1 = false
      out 0 y: DT_FLOAT [-1, 4]
    """
    lines = []
    for op in ops:
        lines.append(f"{op.name}: {op.type}")
        for inp in op.inputs:
            if inp.source == NONE_INPUT:
                lines.append(f"  in {inp.name} = {NONE_INPUT}")
            else:
                lines.append(f"  in {inp.name} = {inp.source} {inp.dtype} {_fmt_shape(inp.shape)}")
        for ctrl in op.control_inputs:
            lines.append(f"  after {ctrl}")
        for name, value in op.attrs.items():
            lines.append(f"  attr {name} = {_fmt_value(value)}")
        for index, out in enumerate(op.outputs):
            label = f"{index} {out.name}" if out.name else str(index)
            lines.append(f"  out {label}: {out.dtype} {_fmt_shape(out.shape)}")
    return "\n".join(lines) + "\n"


def to_json(ops: Sequence[Op]) -> str:
    """The normalised ops as indented JSON (a list of objects with type, inputs, attrs, outputs)."""
    return json.dumps([op.to_dict() for op in ops], indent=2, sort_keys=False) + "\n"
