"""Surgery on the ONNX graphs the ONNX Runtime GenAI model builder writes: the edits `slmforge.infer.ort_build`
makes after a conversion (the int8 embedding that reads the output head's weights, the int4 shared-head repair,
the gate/up fusion), the head that reads every position again (for full-sequence logits), and the small tools
`slmforge.infer.gptq` uses (`onnx_attrs`; `split_head`, the int4 head in row groups of their own block size).
Every function edits an in-memory ModelProto; `save_onnx_in_place` writes one back.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError


def share_int8_embeddings(model) -> bool:
    """Let the token embedding read the int8 output head's weights when the model ties them.

    The builder quantises the output head to int8 but keeps a second, fp32 copy of the same matrix for the
    embedding lookup (its quantised lookup is 4-bit only): for SmolLM2-135M that copy is 113 MB of 270.
    Here the lookup gathers the head's int8 rows and scales instead (standard Gather/Cast/Sub/Mul ops;
    MatMulNBits stores symmetric 8-bit weights offset by 128), and the fp32 copy is dropped.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits), None)
    head = next(
        (n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None
    )
    if gather is None or head is None or len(head.input) > 3:
        return False
    attrs = onnx_attrs(head)
    table = inits[gather.input[0]]
    if attrs.get("bits") != 8 or list(table.dims) != [attrs["N"], attrs["K"]]:
        return False
    weights, scales = head.input[1], head.input[2]
    ids, out, p = gather.input[1], gather.output[0], "/model/embed_tokens/shared_int8"
    consts = [
        numpy_helper.from_array(np.array(128.0, np.float32), f"{p}/offset"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{p}/last_axis"),
        numpy_helper.from_array(np.array([0, 0, attrs["K"]], np.int64), f"{p}/shape"),
    ]
    nodes = [
        helper.make_node("Gather", [weights, ids], [f"{p}/q"], name=f"{p}/GatherQ"),
        helper.make_node("Cast", [f"{p}/q"], [f"{p}/qf"], name=f"{p}/Cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{p}/qf", f"{p}/offset"], [f"{p}/centred"], name=f"{p}/Sub"),
        helper.make_node("Gather", [scales, ids], [f"{p}/s"], name=f"{p}/GatherScales"),
        helper.make_node("Unsqueeze", [f"{p}/s", f"{p}/last_axis"], [f"{p}/s1"], name=f"{p}/Unsqueeze"),
        helper.make_node("Mul", [f"{p}/centred", f"{p}/s1"], [f"{p}/rows"], name=f"{p}/Mul"),
        helper.make_node("Reshape", [f"{p}/rows", f"{p}/shape"], [out], name=f"{p}/Reshape"),
    ]
    at = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    graph.initializer.remove(table)
    graph.initializer.extend(consts)
    return True


def fuse_shared_input_matmuls(model) -> int:
    """Merge `MatMulNBits` nodes that read the same input with the same shape and quantisation (the MLP's
    gate and up projections, which the model builder keeps apart) into one wider node and a `Split`.

    The same weights and arithmetic in one kernel call instead of two: ONNX Runtime pays a fixed cost of
    about 25 µs per `MatMulNBits` call at batch 1, which is a fifth of a small model's decode step. Weights,
    scales and zero points all lead with the output axis N, so they concatenate row-wise. The fused node is
    named after its parts (`gate_up_proj`). Edits the ModelProto `model`; returns the number of nodes
    merged away.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    groups: dict[tuple, list] = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits" and all(name in inits for name in node.input[1:]):
            attrs = onnx_attrs(node)
            key = (node.input[0], len(node.input), *sorted((k, v) for k, v in attrs.items() if k != "N"))
            groups.setdefault(key, []).append((node, attrs))
    merged, replace, gone = 0, {}, set()
    for members in (g for g in groups.values() if len(g) > 1):
        nodes = [n for n, _ in members]
        parts = [re.match(r"^(.*)/(\w+)_proj/(MatMul\w*)$", n.name) for n in nodes]
        if all(parts) and len({(m[1], m[3]) for m in parts}) == 1:
            base = f"{parts[0][1]}/{'_'.join(m[2] for m in parts)}_proj"
            name = f"{base}/{parts[0][3]}"
        else:
            base = name = nodes[0].name + "_fused"
        tensors = []
        for j in range(1, len(nodes[0].input)):
            arrays = [numpy_helper.to_array(inits[n.input[j]]) for n in nodes]
            tensors.append(numpy_helper.from_array(np.concatenate(arrays), f"{base}.MatMul.input{j}"))
            gone.update(n.input[j] for n in nodes)
        sizes = [a["N"] for _, a in members]
        tensors.append(numpy_helper.from_array(np.array(sizes, np.int64), f"{base}/split_sizes"))
        out = f"{base}/MatMul/output_0"
        attrs = {**members[0][1], "N": sum(sizes)}
        fused = helper.make_node(
            "MatMulNBits", [nodes[0].input[0], *(t.name for t in tensors[:-1])], [out], name=name,
            domain=nodes[0].domain, **attrs,
        )  # fmt: skip
        split = helper.make_node(
            "Split", [out, tensors[-1].name], [n.output[0] for n in nodes], name=f"{base}/Split", axis=-1
        )
        replace[nodes[0].name] = [fused, split]
        replace.update({n.name: [] for n in nodes[1:]})
        graph.initializer.extend(tensors)
        merged += len(nodes) - 1
    if not merged:
        return 0
    new_nodes = [m for n in graph.node for m in replace.get(n.name, [n])]
    del graph.node[:]
    graph.node.extend(new_nodes)
    for init in [i for i in graph.initializer if i.name in gone]:
        graph.initializer.remove(init)
    return merged


def repair_shared_head(model) -> bool:
    """Point the tied embedding's quantized lookup at the quantized output head's tensors.

    For an asymmetric int4 model, or an int8 head in an int4 model (`matmul_mixed_precision=
    last_matmul:int8`), the model builder (onnxruntime-genai 0.18) writes a `GatherBlockQuantized` embedding
    that reads the fp32 matrix or names tensors the head stores under other names, so ONNX Runtime refuses
    the model (and an fp32 copy would cost 113 MB for SmolLM2-135M). The lookup and the head share one
    matrix: re-point the lookup's data, scales and zero points at the head's and drop what no node reads,
    when the bit width and block size agree and the rows need no padding. Edits the ModelProto `model`.
    """
    graph = model.graph
    gather = next((n for n in graph.node if n.op_type == "GatherBlockQuantized"), None)
    head = next(
        (n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None
    )
    if gather is None or head is None:
        return False
    reshape = next((n for n in graph.node if gather.input[0] in n.output and n.op_type == "Reshape"), None)
    want = list(head.input[2:])
    if reshape is not None and reshape.input[0] == head.input[1] and list(gather.input[2:]) == want:
        return False
    g, h = onnx_attrs(gather), onnx_attrs(head)
    if (
        reshape is None
        or g.get("bits") != h["bits"]
        or g.get("block_size") != h["block_size"]
        or h["K"] % h["block_size"]
    ):
        raise SlmError("the model builder wrote an invalid shared embedding that cannot be repaired")
    reshape.input[0] = head.input[1]
    del gather.input[2:]
    gather.input.extend(want)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return True


def drop_unread(graph, names) -> None:
    """Remove the `Constant` nodes and initialisers among `names` that no node of `graph` reads any more."""
    gone = set(names) - {name for n in graph.node for name in n.input}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in gone]:
        graph.node.remove(node)
    for init in [i for i in graph.initializer if i.name in gone]:
        graph.initializer.remove(init)


def onnx_attrs(node) -> dict:
    """An ONNX node's attributes as {name: value}."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def save_onnx_in_place(model, model_dir: Path) -> None:
    """Write an edited `model.onnx` (+ `model.onnx.data`) of `model_dir`: under temporary names first, then
    re-pointed at the final data file name and swapped in."""
    import onnx

    path, data = model_dir / "model.onnx", model_dir / "model.onnx.data"
    tmp_model, tmp_data = model_dir / "edited.onnx", model_dir / "edited.onnx.data"
    onnx.save(model, str(tmp_model), save_as_external_data=True, location=tmp_data.name, size_threshold=1024)
    del model
    m2 = onnx.load(str(tmp_model), load_external_data=False)
    for t in m2.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = data.name
    data.unlink(missing_ok=True)
    os.replace(tmp_data, data)
    onnx.save(m2, str(path))
    tmp_model.unlink()


def every_position_head(model) -> bool:
    """Undo the model builder's `prune_lm_head` in the ModelProto `model`: the head's input goes back from
    the last position (`/lm_head/prune/Gather` + `Unsqueeze`) to the whole sequence, and the logits output's
    sequence axis is symbolic again. Returns False (nothing changed) for a head that reads every position."""
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    gather, unsqueeze = nodes.get("/lm_head/prune/Gather"), nodes.get("/lm_head/prune/Unsqueeze")
    if gather is None or unsqueeze is None:
        return False
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == unsqueeze.output[0]:
                node.input[i] = gather.input[0]
    graph.node.remove(gather)
    graph.node.remove(unsqueeze)
    drop_unread(graph, [gather.input[1], unsqueeze.input[1]])  # their index and axis constants
    for out in graph.output:
        if out.name == "logits":
            axis = out.type.tensor_type.shape.dim[1]
            axis.Clear()
            axis.dim_param = "sequence_length"
    return True


def split_head(model_proto, head, parts: list) -> None:
    """Replace the 4-bit output head `head` (a `MatMulNBits` node of `model_proto`, edited in place) by one
    node per row group in `parts` — (token ids, packed codes, scales, packed zero points, block size), the
    groups partitioning the vocabulary — whose outputs are concatenated and put back in vocabulary order by
    a `GatherElements`. A tied embedding (a `GatherBlockQuantized` reading the head's codes) looks each token
    up in its group's table, so the model keeps one copy of the matrix.

    Why: the head is the largest matrix of a small model, and its accuracy matters mostly for the tokens the
    model often predicts. On SmolLM2-135M, the 2,048 most frequent tokens in blocks of 16 and the rest in 32
    decode 1.09× as fast as every row in 16, for +0.24 points of perplexity (BENCHMARKS.md)."""
    from onnx import helper, numpy_helper

    graph, p = model_proto.graph, head.name.rsplit("/", 1)[0] + "/split"
    attrs = onnx_attrs(head)
    vocab, k = attrs["N"], attrs["K"]
    order = np.empty(vocab, np.int32)  # token id -> its row in the concatenated groups
    order[np.concatenate([rows for rows, *_ in parts])] = np.arange(vocab, dtype=np.int32)
    inits = [numpy_helper.from_array(order, f"{p}/order")]
    head_nodes, outs = [], []
    for g, (rows, codes, scales, zeros, bs) in enumerate(parts):
        names = [
            f"{p}{g}.MatMul.weight_Q4",
            f"{p}{g}.MatMul.weight_scales",
            f"{p}{g}.MatMul.weight_zero_points",
        ]
        inits += [numpy_helper.from_array(a, n) for a, n in zip((codes, scales, zeros), names, strict=True)]
        outs.append(f"{p}{g}/output_0")
        head_nodes.append(helper.make_node(
            "MatMulNBits", [head.input[0], *names], [outs[-1]], name=f"{p}{g}/MatMul_Q4", domain=head.domain,
            **{**attrs, "N": len(rows), "block_size": bs},
        ))  # fmt: skip
    head_nodes += [
        helper.make_node("Concat", outs, [f"{p}/concat"], name=f"{p}/Concat", axis=-1),
        helper.make_node("Shape", [f"{p}/concat"], [f"{p}/shape"], name=f"{p}/Shape"),
        helper.make_node("Expand", [f"{p}/order", f"{p}/shape"], [f"{p}/index"], name=f"{p}/Expand"),
        helper.make_node(
            "GatherElements", [f"{p}/concat", f"{p}/index"], list(head.output), name=f"{p}/Gather", axis=-1
        ),  # fmt: skip
    ]
    replace = {head.name: head_nodes}
    lookup = next((n for n in graph.node if n.op_type == "GatherBlockQuantized"), None)
    reshape = next((n for n in graph.node if lookup is not None and lookup.output and n.op_type == "Reshape"
                    and n.output[0] == lookup.input[0] and n.input[0] == head.input[1]), None)  # fmt: skip
    if lookup is not None and reshape is not None and onnx_attrs(lookup).get("bits") == attrs["bits"]:
        lookup_nodes, lookup_inits = _split_lookup(lookup, parts, p, k)
        replace[lookup.name], replace[reshape.name] = lookup_nodes, []
        inits += lookup_inits
    new_nodes = [m for n in graph.node for m in replace.get(n.name, [n])]
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(inits)
    drop_unread(graph, [*head.input[1:], *(reshape.input if reshape is not None else [])])


def _split_lookup(lookup, parts: list, p: str, k: int) -> tuple[list, list]:
    """The nodes and initialisers that replace a tied `GatherBlockQuantized` embedding once `split_head` has
    split the head it reads: each token's row found in its group's table (through `{p}/order`), the groups'
    lookups joined by `Where`s on the row's group."""
    from onnx import helper, numpy_helper

    inits = []
    e = f"{p}/embed"
    ids = lookup.input[1]
    nodes = [helper.make_node("Gather", [f"{p}/order", ids], [f"{e}/row"], name=f"{e}/Row", axis=0)]
    start, found = 0, []
    inits.append(numpy_helper.from_array(np.array(0, np.int32), f"{p}/zero"))
    for g, (rows, *_, bs) in enumerate(parts):
        last, hi, index = f"{e}{g}/last", f"{e}{g}/hi", f"{e}/row"
        inits += [numpy_helper.from_array(np.array(len(rows) - 1, np.int32), last),
                  numpy_helper.from_array(np.array([len(rows), k // 2], np.int64), f"{e}{g}/shape")]  # fmt: skip
        if g < len(parts) - 1:  # the last group takes every row the earlier ones do not
            inits.append(numpy_helper.from_array(np.array(start + len(rows) - 1, np.int32), hi))
        if start:  # the row within this group's table
            inits.append(numpy_helper.from_array(np.array(start, np.int32), f"{e}{g}/start"))
            nodes.append(
                helper.make_node("Sub", [index, f"{e}{g}/start"], [f"{e}{g}/r0"], name=f"{e}{g}/Sub")
            )
            index = f"{e}{g}/r0"
        nodes += [
            helper.make_node("Clip", [index, f"{p}/zero", last], [f"{e}{g}/r"], name=f"{e}{g}/Clip"),
            helper.make_node(
                "Reshape",
                [f"{p}{g}.MatMul.weight_Q4", f"{e}{g}/shape"],
                [f"{e}{g}/table"],
                name=f"{e}{g}/Reshape",
            ),  # fmt: skip
            helper.make_node(
                "GatherBlockQuantized",
                [
                    f"{e}{g}/table",
                    f"{e}{g}/r",
                    f"{p}{g}.MatMul.weight_scales",
                    f"{p}{g}.MatMul.weight_zero_points",
                ],
                [f"{e}{g}/rows"],
                name=f"{e}{g}/GatherBlockQuantized",
                domain=lookup.domain,
                **{**onnx_attrs(lookup), "block_size": bs},
            ),  # fmt: skip
        ]
        found.append((hi, f"{e}{g}/rows"))
        start += len(rows)
    # the last group's rows, then each earlier group where the token falls into it (row <= its last row)
    result = found[-1][1]
    for g in range(len(found) - 2, -1, -1):
        hi, rows_out = found[g]
        out = lookup.output[0] if g == 0 else f"{e}{g}/pick"
        nodes += [
            helper.make_node("LessOrEqual", [f"{e}/row", hi], [f"{e}{g}/in"], name=f"{e}{g}/In"),
            helper.make_node("Unsqueeze", [f"{e}{g}/in", f"{e}/axis"], [f"{e}{g}/in1"], name=f"{e}{g}/Unsq"),
            helper.make_node("Where", [f"{e}{g}/in1", rows_out, result], [out], name=f"{e}{g}/Where"),
        ]
        result = out
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), f"{e}/axis"))
    return nodes, inits


def sync_shared_lookup(model_proto) -> None:
    """A `GatherBlockQuantized` embedding that reads a requantised head's scales takes its block size."""
    blocks = {
        n.input[2]: onnx_attrs(n)["block_size"] for n in model_proto.graph.node if n.op_type == "MatMulNBits"
    }
    for node in model_proto.graph.node:
        if node.op_type == "GatherBlockQuantized" and len(node.input) > 2 and node.input[2] in blocks:
            for attr in node.attribute:
                if attr.name == "block_size":
                    attr.i = blocks[node.input[2]]
