"""Typer options built from workflow config fields: each option is declared once, as a config field.

A field gives its option everything: the flag (`seq_len` -> `--seq-len`), the default, the type (from the
annotation) and the help (the first paragraph of the field's attribute docstring; later paragraphs are
notes for readers of the code). Bools default to `--x` when False and `--x/--no-x` when True.

    @options(Opts("slmforge.lm.configs:FinetuneConfig", args=("model",), short={"out": "-o"}))
    def finetune(cfg: FinetuneConfig) -> None:
        run(cfg)

The fields are read from the config's source with `ast` (the class's own lines, then its bases), never by
importing the config's module: `slm --help` loads no torch, numpy or scipy. The config class is imported
only when the command runs; it gets the fields the user gave (and the verb's own defaults), so every
other field keeps the config's default.

A verb spanning two families (`slm distill`, `slm rightsize`, `slm eval`) takes one `Opts` per family (or
one config whose fields carry `metadata={"family": ...}`); its first parameter is then named `flags` and
receives a `Flags`: `flags.config(family)` builds that family's config, refusing the flags of the other.
Per verb, `Opts` can rename a flag, add a short name, take fields as positional arguments, read a list
from one comma-separated value, or set a different default (each such default is listed in
tests/cli/test_options.py). Field metadata may set `flag`, `short` and `hidden` too.
"""

from __future__ import annotations

import ast
import functools
import inspect
import operator
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from typer.models import ArgumentInfo

from slmforge.core.errors import SlmError

ROOT = Path(__file__).resolve().parents[1]  # the slmforge package
REQUIRED = ...  # a field without a default
UNKNOWN = object()  # a default the source reader cannot evaluate (not offered as an option)
CTX = "ctx__"  # the hidden context parameter that tells which flags the user typed


@dataclass(frozen=True)
class ConfigField:
    """One dataclass field as written in its config's source."""

    name: str
    annotation: str
    default: Any
    doc: str
    metadata: dict

    @property
    def help(self) -> str:
        """The docstring's first paragraph on one line: what `--help` shows."""
        return " ".join(self.doc.split("\n\n")[0].split())


@dataclass(frozen=True)
class Opts:
    """One config's options on one verb: `config` is "module:Class"; `family` names it on a verb that
    spans families ("classifier", "causal LM"); the rest are this verb's exceptions to the fields."""

    config: str
    family: str = ""
    exclude: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    rename: dict[str, str] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    comma: tuple[str, ...] = ()


# ---------------------------------------------------------------- reading a config's source


@functools.cache
def _source(module: str) -> str:
    parts = module.split(".")
    if parts[0] != ROOT.name:
        raise ValueError(f"options: {module} is not a module of {ROOT.name}")
    path = ROOT.joinpath(*parts[1:])
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text(encoding="utf-8")


def _class_node(module: str, name: str) -> ast.ClassDef:
    """The class's own lines, parsed alone (a whole module takes ~20 ms to parse; most hold far more)."""
    text = _source(module)
    m = re.search(rf"^class {name}\b.*?(?=^\S)", text + "\n#", re.M | re.S)
    if m is None:
        raise ValueError(f"options: no class {name} in {module}")
    try:
        return ast.parse(m.group(0)).body[0]
    except SyntaxError:  # a column-0 line inside the class (a string): parse the module
        return next(n for n in ast.parse(text).body if isinstance(n, ast.ClassDef) and n.name == name)


def _imported(module: str, name: str) -> str:
    """The module a name was imported from (`from X import name`), else `module` itself."""
    for m in re.finditer(r"^from ([\w.]+) import (?:\(([^)]*)\)|(.*)$)", _source(module), re.M):
        if name in re.findall(r"\w+", m.group(2) or m.group(3)):
            return m.group(1)
    return module


@functools.cache
def config_fields(ref: str) -> tuple[ConfigField, ...]:
    """The fields of the dataclass `ref` ("module:Class"), its bases' first, as dataclasses orders them."""
    module, name = ref.split(":")
    node = _class_node(module, name)
    fields: dict[str, ConfigField] = {}
    for base in node.bases:  # dataclass bases of this package (others hold no fields of ours)
        home = _imported(module, base.id) if isinstance(base, ast.Name) else ""
        if home.split(".")[0] == ROOT.name:
            fields.update((f.name, f) for f in config_fields(f"{home}:{base.id}"))
    body = node.body
    for i, stmt in enumerate(body):
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        annotation = ast.unparse(stmt.annotation)
        if annotation in ("KW_ONLY", "dataclasses.KW_ONLY") or annotation.startswith("ClassVar"):
            continue
        nxt = body[i + 1] if i + 1 < len(body) else None
        doc = nxt.value.value if _is_doc(nxt) else ""
        default, metadata = _default(module, stmt.value)
        fields[stmt.target.id] = ConfigField(
            stmt.target.id, annotation, default, inspect.cleandoc(doc), metadata
        )
    return tuple(fields.values())


def _is_doc(stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _default(module: str, node) -> tuple[Any, dict]:
    if node is None:
        return REQUIRED, {}
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "field":
        kw = {k.arg: k.value for k in node.keywords}
        metadata = _value(module, kw["metadata"]) if "metadata" in kw else {}
        if not isinstance(metadata, dict):
            raise ValueError(f"options: {module}: field metadata must be a dict literal or constant")
        if "default" in kw:
            return _value(module, kw["default"]), metadata
        if "default_factory" in kw:
            factory = kw["default_factory"]
            body = factory.body if isinstance(factory, ast.Lambda) else ast.Call(factory, [], [])
            return _value(module, body), metadata
        return REQUIRED, metadata
    return _value(module, node), {}


def _value(module: str, node) -> Any:
    """A literal, a module constant, `list(CONSTANT)`, `1 << 20`, ...; UNKNOWN for anything else."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError):
        pass
    if isinstance(node, ast.Name):
        return _constant(module, node.id)
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in _CALLS and not node.keywords:
        args = [_value(module, a) for a in node.args]
        return UNKNOWN if any(a is UNKNOWN for a in args) else _CALLS[node.func.id](*args)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _value(module, node.left), _value(module, node.right)
        return UNKNOWN if UNKNOWN in (left, right) else _OPS[type(node.op)](left, right)
    return UNKNOWN


_CALLS = {"list": list, "tuple": tuple, "dict": dict, "set": set}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.LShift: operator.lshift}


def _constant(module: str, name: str) -> Any:
    """A module-level `NAME = literal` (one or more lines), or one imported from another module of ours."""
    m = re.search(rf"^{name}(?:: [^=]+)? = ", _source(module), re.M)
    if m is None:
        home = _imported(module, name)
        return _constant(home, name) if home != module and home.split(".")[0] == ROOT.name else UNKNOWN
    lines = _source(module)[m.end() :].splitlines()
    for n in range(1, min(len(lines), 200) + 1):
        try:
            return _value(module, ast.parse("\n".join(lines[:n]), mode="eval").body)
        except SyntaxError:
            continue
    return UNKNOWN


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def field_type(annotation: str):
    """The CLI type of an annotation: str, int, float, bool, X | None, list[X]; None when it has none."""
    parts = [p.strip() for p in annotation.split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    if len(parts) != 1:
        return None
    m = re.fullmatch(r"list\[(\w+)\]", parts[0])
    base = list[_TYPES[m.group(1)]] if m and m.group(1) in _TYPES else _TYPES.get(parts[0])
    return None if base is None else (base | None if optional else base)


def config_class(ref: str) -> type:
    """Import the config class itself (when a command runs)."""
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- options from fields


@dataclass(frozen=True)
class Option:
    """One CLI parameter made from a field (of each family's config that has it)."""

    name: str
    decls: tuple[str, ...]  # ("--out", "-o"); () for a positional argument
    default: Any
    type: Any
    help: str
    hidden: bool
    fields: dict[int, ConfigField]  # index of the Opts -> its field
    families: frozenset[str] | None  # the families it belongs to; None: every one
    comma: bool
    overridden: bool  # the verb's own default (Opts.defaults), not the config's

    @property
    def flag(self) -> str:
        return self.decls[0].split("/")[0] if self.decls else self.name.upper()

    def param(self) -> inspect.Parameter:
        if self.decls:
            info = typer.Option(self.default, *self.decls, help=self.help, hidden=self.hidden)
        else:
            info = typer.Argument(self.default, help=self.help, hidden=self.hidden)
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=self.type
        )


def build_options(specs: tuple[Opts, ...]) -> dict[str, Option]:
    """The verb's options, in field order (the first config's fields first), by field name."""
    merged: dict[str, dict[int, ConfigField]] = {}
    for i, spec in enumerate(specs):
        for f in config_fields(spec.config):
            if f.name not in spec.exclude:
                merged.setdefault(f.name, {})[i] = f
    args = [name for spec in specs for name in spec.args]
    ordered = sorted(merged, key=lambda n: args.index(n) if n in args else len(args))
    return {name: _option(name, merged[name], specs, name in args) for name in ordered}


def _option(name: str, by_spec: dict[int, ConfigField], specs: tuple[Opts, ...], argument: bool) -> Option:
    where = f"{specs[min(by_spec)].config}.{name}"
    meta = {k: v for f in by_spec.values() for k, v in f.metadata.items()}
    own = [specs[i] for i in by_spec]
    families = frozenset(s.family for s in own) if len(own) < len(specs) else None
    if "family" in meta:
        families = frozenset([meta["family"]])
    overrides = [s.defaults[name] for s in own if name in s.defaults]
    defaults = [f.default for f in by_spec.values()]
    if overrides:
        default = overrides[0]
    elif all(d == defaults[0] and type(d) is type(defaults[0]) for d in defaults):
        default = defaults[0]
    else:  # the families differ: each keeps its own
        default = None
    if default is REQUIRED and families is not None and not overrides:
        default = None  # required by one family only: the verb says when it is missing
    if default is UNKNOWN:
        raise ValueError(f"options: cannot read the default of {where}; exclude it or give Opts.defaults")
    comma = any(name in s.comma for s in own)
    if comma and isinstance(default, list):
        default = ",".join(map(str, default))
    typ = _cli_type(where, [f.annotation for f in by_spec.values()], default, comma)
    flag = next(
        (s.rename[name] for s in own if name in s.rename), meta.get("flag", "--" + name.replace("_", "-"))
    )
    if typ is bool and default is True and "/" not in flag:
        flag += f"/--no-{flag[2:]}"
    short = next((s.short[name] for s in own if name in s.short), meta.get("short"))
    decls = () if argument else (flag, short) if short else (flag,)
    help = _help(by_spec, specs, families is None and "family" not in meta, overrides)
    return Option(name, decls, default, typ, escape(help), bool(meta.get("hidden")), by_spec, families, comma,
                  bool(overrides))  # fmt: skip


def _cli_type(where: str, annotations: list[str], default, comma: bool):
    bases, optional = set(), default is None
    for annotation in annotations:
        t = field_type(annotation)
        if t is None:
            raise ValueError(f"options: {where}: no CLI type for {annotation!r}; exclude the field")
        args = t.__args__ if isinstance(t, types.UnionType) else (t,)
        optional |= type(None) in args
        bases |= {a for a in args if a is not type(None)}
    if comma:
        bases = {str}
    if bases == {int, float}:
        bases = {float}
    if len(bases) != 1:
        raise ValueError(f"options: {where}: the families' types differ ({annotations})")
    (base,) = bases
    return base | None if optional else base


def _help(by_spec: dict[int, ConfigField], specs: tuple[Opts, ...], shared: bool, overrides) -> str:
    helps = {specs[i].family: f.help for i, f in by_spec.items()}
    texts = {h for h in helps.values() if h}
    if len(specs) == 1:
        return next(iter(texts), "")
    if shared and len(texts) <= 1:  # one help for all: still say each family's default when they differ
        text = next(iter(texts), "")
    else:
        text = " ".join(_in_family(fam, h) for fam, h in helps.items() if h)
    defaults = {specs[i].family: f.default for i, f in by_spec.items()}
    if shared and not overrides and len({repr(d) for d in defaults.values()}) > 1:
        each = [f"{d} ({fam})" for fam, d in defaults.items() if d not in (None, REQUIRED)]
        text += f" [default: {', '.join(each)}]" if each else ""
    return text


def _in_family(family: str, help: str) -> str:
    """ "Causal LM: sequences per batch.", "Causal LM, logit: take the KL ..." (help starting "Logit: ...")."""
    first = help.split()[0]
    if first[:1].isupper() and first[1:].islower() or len(first) == 1:  # a plain word, not JSONL or KL
        help = help[:1].lower() + help[1:]
    joint = ", " if re.match(r"[^:.]{1,30}: ", help) else ": "
    return family[:1].upper() + family[1:] + joint + help


# ---------------------------------------------------------------- the decorator and what verbs receive


def options(*specs: Opts):
    """Make the verb a command whose parameters are its own (after the first) and `specs`' fields; the
    verb's first parameter gets the config (`cfg`) or, when it is named `flags`, a `Flags`."""
    table = build_options(specs)

    def wrap(verb):
        first, *own = inspect.signature(verb, eval_str=True).parameters.values()
        wants_flags = first.name == "flags"
        if len(specs) > 1 and not wants_flags:
            raise TypeError(f"{verb.__name__}: a verb with several configs takes `flags` first")
        clash = set(table) & {p.name for p in own}
        if clash:
            raise TypeError(f"{verb.__name__}: parameters named like config fields: {sorted(clash)}")
        own_args = [p for p in own if isinstance(p.default, ArgumentInfo)]
        params = [  # the verb's own parameters lead (a family's selector: --task, --teacher)
            inspect.Parameter(CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
            *own_args,
            *(o.param() for o in table.values() if not o.decls),
            *(p for p in own if p not in own_args),
            *(o.param() for o in table.values() if o.decls),
        ]
        own_names = [p.name for p in own]

        @functools.wraps(verb)
        def command(**kwargs):
            ctx = kwargs.pop(CTX)
            mine = {name: kwargs.pop(name) for name in own_names}
            given = {n for n in kwargs if ctx.get_parameter_source(n).name not in ("DEFAULT", "DEFAULT_MAP")}
            flags = Flags(specs, table, kwargs, given)
            return verb(flags if wants_flags else flags.config(), **mine)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.options, command.specs = table, specs  # read by tests/cli/test_options.py
        return command

    return wrap


class Flags:
    """A verb's config options as the user gave them: values, which were typed, and the configs they make."""

    def __init__(self, specs: tuple[Opts, ...], options: dict[str, Option], values: dict, given: set[str]):
        self.specs, self.options, self.values, self.typed = specs, options, values, given

    def __getitem__(self, name: str):
        return self.values[name]

    def stray(self, family: str) -> list[str]:
        """The flags given that belong to other families than `family`."""
        return [o.flag for o in self.options.values()
                if o.name in self.typed and o.families is not None and family not in o.families]  # fmt: skip

    def config(self, family: str = "", **fixed):
        """`family`'s config from the flags given (and the verb's own defaults); `fixed` fields as they are."""
        index = 0 if len(self.specs) == 1 else next(i for i, s in enumerate(self.specs) if s.family == family)
        stray = self.stray(family)
        if stray:
            raise SlmError(f"{', '.join(stray)}: not for {_article(family)}")
        kwargs = {}
        for o in self.options.values():
            f = o.fields.get(index)
            if f is not None and o.name not in fixed and (o.name in self.typed or o.overridden):
                kwargs[o.name] = self._convert(o, f, self.values[o.name], family)
        given = {**kwargs, **fixed}
        missing = [o.flag for o in self.options.values()
                   if index in o.fields and o.fields[index].default is REQUIRED and o.name not in given]  # fmt: skip
        if missing:
            raise SlmError(f"{_article(family) if family else 'this command'} needs {', '.join(missing)}")
        return config_class(self.specs[index].config)(**kwargs, **fixed)

    @staticmethod
    def _convert(o: Option, f: ConfigField, value, family: str):
        if value is None:
            return None
        t = field_type(f.annotation)
        args = t.__args__ if isinstance(t, types.UnionType) else (t,)
        base = next(a for a in args if a is not type(None))
        if o.comma:
            item = base.__args__[0]
            try:
                return [item(x.strip()) for x in value.split(",") if x.strip()]
            except ValueError:
                kind = "integers" if item is int else "numbers"
                raise SlmError(
                    f"{o.flag} takes comma-separated {kind}, e.g. {o.default} (got {value!r})"
                ) from None
        if base is int and isinstance(value, float):
            if not value.is_integer():
                where = f" for {_article(family)}" if family else ""
                raise SlmError(f"{o.flag} must be a whole number{where}, not {value}")
            return int(value)
        return list(value) if isinstance(value, tuple) else value


def _article(family: str) -> str:
    return f"{'an' if family[:1] in 'aeiou' else 'a'} {family}" if family else "this command"
