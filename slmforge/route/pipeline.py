"""Pipelines that chain small models: classify → route by label and confidence → answer.

A YAML file (or dict) names pipelines; each one classifies the text with an intent model, picks a branch
by the predicted label (when the model is confident enough) and runs it:

    pipelines:
      bank:
        classify: {model: intents, min_confidence: 0.5}   # a dir from `slm classify train` (or its ONNX export)
        routes:                                           # label -> branch; "*" catches every other label
          lost_or_stolen_card: {type: rag, index: kb.sqlite, path_filter: "*/{label}/*"}
          exchange_rate: {type: template, text: "Today's rates are in the app under Payments > Exchange."}
          "*": {type: rag, index: kb.sqlite}
        low_confidence: {type: cascade, model: intents-big, min_confidence: 0.6}   # or any other branch
        fallback: {type: human, queue: support}           # when RAG finds nothing / the cascade is unsure too

Branch types:
- `rag`: search an index (slmforge.rag), optionally filtered by the label (`{label}` in `path_filter` or
  `tags`). Without `model` the answer is extractive: the best `passages` (2) passages, cited [1] [2]; with `model` a
  generative SLM answers from the passages with numbered citations (`slmforge.rag.ask.Asker`). Below
  `min_cosine` nothing is relevant enough and the `fallback` branch runs.
- `template`: a fixed reply; `{label}`, `{confidence}` and `{text}` are filled in.
- `generate`: a generative SLM answers the text (optional `system` prompt).
- `cascade`: a second, bigger classifier labels the text again; if it is confident (`min_confidence`) its
  label is routed through `routes`, else the `fallback` branch runs.
- `human`: hand over to a person (`queue`, `message`): the reply says so and `escalated` is true.

Relative paths (models, indexes) are relative to the YAML file's folder (or `base_dir` for a dict).
`Pipeline.run(text)` returns a JSON-serialisable dict: label, confidence, route, answer, citations
[{n, doc, section, path, text}], escalated, steps (one trace entry per step, with its milliseconds).
Citations and steps never show a server's absolute paths: `path` is relative to the folder that holds
everything the index read (`kb/lost_or_stolen_card/stolen-card.md`), `doc` the file's name (`:LINE` or
`:ROW` for a jsonl / csv record) and a step's `index` the index's file name (`SourcePaths`).
Models, retrievers and generators are loaded once and shared by every pipeline of a file.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError
from slmforge.guard import check_fields, check_unit

BRANCH_TYPES = ("rag", "template", "generate", "cascade", "human")
DEFAULT_HUMAN = "I'm passing your question to a member of our team, who will get back to you shortly."
NO_ANSWER = "I couldn't find this in our help pages."


# ---------------------------------------------------------------- config


@dataclass
class Branch:
    type: str
    """rag, template, generate, cascade or human (see the module docstring)."""
    index: str | None = None
    """rag: the index to search (a name, a .sqlite path, or its name in `store`)."""
    store: str | None = None
    """rag: postgresql://… for an index in PostgreSQL [default: SQLite]."""
    mode: str = "hybrid"
    """rag: hybrid, bm25 or vector retrieval."""
    k: int = 3
    """rag: chunks retrieved."""
    path_filter: str | None = None
    """rag: only files whose path contains (or, as a glob, matches) this; `{label}` is the predicted label."""
    tags: list[str] = field(default_factory=list)
    """rag: only files with these tags; `{label}` is the predicted label."""
    min_cosine: float = 0.3
    """rag: below this best cosine similarity nothing is relevant enough and the fallback branch runs."""
    passages: int = 2
    """rag, extractive (no `model`): the answer is the best this many passages, each cited."""
    model: str | None = None
    """rag: a generative SLM that answers from the passages (without it the answer is extractive); generate:
    the SLM that answers; cascade: the bigger classifier."""
    system: str | None = None
    """generate: the system prompt."""
    max_new_tokens: int = 128
    """rag (generative), generate: longest answer, in tokens."""
    context_tokens: int = 1024
    """rag (generative): prompt budget, sources + question."""
    text: str | None = None
    """template: the fixed reply; {label}, {confidence} and {text} are filled in."""
    min_confidence: float = 0.5
    """cascade: below this confidence of the bigger classifier the fallback branch runs."""
    queue: str = "support"
    """human: the queue the question is handed to."""
    message: str = DEFAULT_HUMAN
    """human: the reply that says a person will answer."""


@dataclass
class ClassifyStep:
    model: str
    """The intent classifier: a dir from `slm classify train` (or its ONNX export)."""
    min_confidence: float = 0.5
    """Below this confidence the low_confidence branch runs (else the fallback)."""


@dataclass
class PipelineConfig:
    name: str
    """The pipeline's name (/v1/pipelines/NAME)."""
    classify: ClassifyStep
    """The first step: the intent model."""
    routes: dict[str, Branch]
    """Predicted label -> branch; "*" catches every other label."""
    low_confidence: Branch | None = None
    """The branch for a label predicted below classify.min_confidence; None: the fallback."""
    fallback: Branch = field(default_factory=lambda: Branch(type="human"))
    """The branch when no route takes the label, or the chosen branch finds nothing (RAG below min_cosine, an
    unsure cascade)."""
    description: str = ""
    """What the pipeline is for, in a sentence."""


_REQUIRED = {"rag": ("index",), "template": ("text",), "generate": ("model",), "cascade": ("model",)}
_ALLOWED = {
    "rag": {"index", "store", "mode", "k", "path_filter", "tags", "min_cosine", "passages", "model",
            "max_new_tokens", "context_tokens"},
    "template": {"text"},
    "generate": {"model", "system", "max_new_tokens"},
    "cascade": {"model", "min_confidence"},
    "human": {"queue", "message"},
}  # fmt: skip
_PATH_FIELDS = ("index", "model")


def parse_pipelines(raw, base_dir: Path) -> dict[str, PipelineConfig]:
    """Typed configs from the YAML's data; a bad field is a one-line SlmError naming the step and field."""
    if not isinstance(raw, dict) or "pipelines" not in raw:
        raise SlmError("pipelines file: expected a top-level 'pipelines:' mapping of name -> pipeline")
    pipes = raw["pipelines"]
    if not isinstance(pipes, dict) or not pipes:
        raise SlmError("pipelines: expected a non-empty mapping of name -> pipeline")
    return {str(name): _pipeline(str(name), spec, base_dir) for name, spec in pipes.items()}


def _pipeline(name: str, spec, base: Path) -> PipelineConfig:
    where = f"pipeline {name!r}"
    if not isinstance(spec, dict):
        raise SlmError(f"{where}: expected a mapping with classify and routes")
    check_fields(spec, {"classify", "routes", "low_confidence", "fallback", "description"}, where)
    c = spec.get("classify")
    if not isinstance(c, dict) or not c.get("model"):
        raise SlmError(f"{where}: step 'classify': field 'model' is required (a classifier directory)")
    check_fields(c, {"model", "min_confidence"}, f"{where}: step 'classify'")
    classify = ClassifyStep(
        model=_path(str(c["model"]), base),
        min_confidence=check_unit(
            c.get("min_confidence", 0.5), f"{where}: step 'classify': field 'min_confidence'"
        ),
    )
    routes = spec.get("routes")
    if not isinstance(routes, dict) or not routes:
        raise SlmError(f"{where}: field 'routes' is required: a mapping of label -> branch")
    parsed = {str(label): _branch(b, f"{where}: route {label!r}", base) for label, b in routes.items()}
    low = spec.get("low_confidence")
    fallback = spec.get("fallback")
    return PipelineConfig(
        name=name,
        classify=classify,
        routes=parsed,
        low_confidence=_branch(low, f"{where}: step 'low_confidence'", base) if low is not None else None,
        fallback=_branch(fallback, f"{where}: step 'fallback'", base)
        if fallback is not None
        else Branch("human"),
        description=str(spec.get("description", "")),
    )


def _branch(spec, where: str, base: Path) -> Branch:
    if not isinstance(spec, dict):
        raise SlmError(f"{where}: expected a mapping with a 'type' ({', '.join(BRANCH_TYPES)})")
    kind = spec.get("type")
    if kind not in BRANCH_TYPES:
        raise SlmError(f"{where}: field 'type' must be one of {', '.join(BRANCH_TYPES)}, got {kind!r}")
    where = f"{where} ({kind})"
    check_fields(spec, _ALLOWED[kind] | {"type"}, where)
    for name in _REQUIRED.get(kind, ()):
        if not spec.get(name):
            raise SlmError(f"{where}: field {name!r} is required")
    values = {}
    types = {f.name: f.type for f in fields(Branch)}
    for key, value in spec.items():
        if key == "type":
            continue
        t = types[key]
        if t == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise SlmError(f"{where}: field {key!r} must be a positive integer, got {value!r}")
        if t == "float":
            value = check_unit(value, f"{where}: field {key!r}")
        if t == "list[str]":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SlmError(f"{where}: field {key!r} must be a list of strings")
        if t in ("str", "str | None") and not isinstance(value, str):
            raise SlmError(f"{where}: field {key!r} must be a string, got {value!r}")
        if key in _PATH_FIELDS:
            value = _path(value, base)
        values[key] = value
    if kind == "rag" and values.get("mode", "hybrid") not in ("hybrid", "bm25", "vector"):
        raise SlmError(f"{where}: field 'mode' must be hybrid, bm25 or vector")
    return Branch(type=kind, **values)


def _path(value: str, base: Path) -> str:
    """Relative paths resolve against the config's folder when something exists there (else: as given,
    e.g. a catalog model name such as smollm2-135m-instruct)."""
    p = Path(value).expanduser()
    if not p.is_absolute() and (base / p).exists():
        return str(base / p)
    return str(p) if p.is_absolute() else value


# ---------------------------------------------------------------- running


class _Resources:
    """Loaded models and open indexes, shared by the pipelines of one file (thread-safe loading)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self._items: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, make):
        with self._lock:
            if key not in self._items:
                self._items[key] = make()
            return self._items[key]

    def lock(self, key: tuple) -> threading.Lock:
        return self.get(("lock", *key), threading.Lock)

    def classifier(self, path: str):
        from slmforge.clf.predict import load_classifier

        return self.get(("classifier", path), lambda: load_classifier(path, self.threads))

    def retriever(self, index: str, store: str | None):
        from slmforge.rag.search import Retriever

        if store is None and not Path(index).exists() and index.endswith(".sqlite"):
            raise SlmError(f"no index at {index} (build it with `slm rag index`)")
        return self.get(("retriever", index, store), lambda: Retriever(index, store))

    def asker(self, index: str, store: str | None, model: str):
        from slmforge.rag.ask import Asker

        return self.get(("asker", index, store, model), lambda: Asker(index, model, store, self.threads))

    def paths(self, key: tuple, store) -> SourcePaths:
        return self.get(("paths", *key), lambda: SourcePaths(store))

    def lm(self, model: str):
        from slmforge.infer.engines import open_lm

        return self.get(("lm", model), lambda: open_lm(model, threads=self.threads))

    def close(self) -> None:
        for item in self._items.values():
            close = getattr(item, "close", None) or getattr(getattr(item, "retriever", None), "close", None)
            if close:
                close()
        self._items.clear()


class Pipeline:
    def __init__(self, cfg: PipelineConfig, resources: _Resources | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.res = resources or _Resources()

    def warm(self) -> None:
        """Load the classifier and open the indexes now rather than on the first request."""
        self.res.classifier(self.cfg.classify.model)
        for b in [*self.cfg.routes.values(), self.cfg.low_confidence, self.cfg.fallback]:
            if b is not None and b.type == "rag":
                self.res.retriever(b.index, b.store).embedder  # noqa: B018  (loads the query encoder)

    def run(self, text: str) -> dict:
        if not isinstance(text, str) or not text.strip():
            raise SlmError("the text to run the pipeline on is empty")
        started = time.perf_counter()
        steps: list[dict] = []
        label, confidence = self._classify(self.cfg.classify.model, text, "classify", steps)
        out = {"pipeline": self.name, "text": text, "label": label, "confidence": confidence}
        if confidence >= self.cfg.classify.min_confidence:
            route, branch = self._route(label)
        else:
            steps.append({"step": "route", "reason": f"confidence {confidence:.3f} < "
                          f"{self.cfg.classify.min_confidence}", "ms": 0.0})  # fmt: skip
            route, branch = "low_confidence", self.cfg.low_confidence or self.cfg.fallback
        out |= self._answer(branch, route, text, label, confidence, steps)
        out["steps"] = steps
        out["ms"] = round((time.perf_counter() - started) * 1000, 2)
        return out

    def _route(self, label: str) -> tuple[str, Branch]:
        if label in self.cfg.routes:
            return label, self.cfg.routes[label]
        if "*" in self.cfg.routes:
            return "*", self.cfg.routes["*"]
        return "fallback", self.cfg.fallback

    def _classify(self, model: str, text: str, step: str, steps: list) -> tuple[str, float]:
        t0 = time.perf_counter()
        clf = self.res.classifier(model)
        with self.res.lock(("classifier", model)):  # a fast tokenizer must not be shared by two threads
            logits = clf.logits([text])[0]
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
        best = int(probs.argmax())
        label, confidence = clf.labels[best], float(probs[best])
        top = sorted(range(len(probs)), key=lambda i: -probs[i])[:3]
        steps.append({"step": step, "model": model, "label": label, "confidence": round(confidence, 4),
                      "top": [[clf.labels[i], round(float(probs[i]), 4)] for i in top],
                      "ms": _ms(t0)})  # fmt: skip
        return label, confidence

    def _answer(self, b: Branch, route: str, text: str, label: str, conf: float, steps: list) -> dict:
        result = {"route": route, "branch": b.type, "answer": "", "citations": [], "escalated": False}
        t0 = time.perf_counter()
        if b.type == "template":
            result["answer"] = _fill(b.text, label=label, confidence=f"{conf:.2f}", text=text)
            steps.append({"step": "template", "ms": _ms(t0)})
        elif b.type == "human":
            result |= {"answer": b.message, "escalated": True, "queue": b.queue}
            steps.append({"step": "human", "queue": b.queue, "ms": _ms(t0)})
        elif b.type == "generate":
            result["answer"] = self._generate(b, text)
            steps.append({"step": "generate", "model": b.model, "ms": _ms(t0)})
        elif b.type == "rag":
            found = self._rag(b, text, label, steps)
            if found is None:
                fb = self.cfg.fallback
                inner = self._answer(fb, route, text, label, conf, steps) if fb is not b else None
                if inner is None:
                    return result | {"answer": NO_ANSWER}
                return inner | {"route": f"{route} -> fallback"}
            result |= found
        elif b.type == "cascade":
            big_label, big_conf = self._classify(b.model, text, "cascade", steps)
            result |= {"cascade_label": big_label, "cascade_confidence": big_conf}
            if big_conf >= b.min_confidence:
                r, nb = self._route(big_label)
                if nb.type == "cascade":  # no cascade loops
                    nb = self.cfg.fallback
                inner = self._answer(nb, f"cascade:{r}", text, big_label, big_conf, steps)
                return inner | {"label": big_label, "confidence": big_conf, "first_label": label,
                                "first_confidence": conf}  # fmt: skip
            steps.append({"step": "route", "reason": f"cascade confidence {big_conf:.3f} < {b.min_confidence}",
                          "ms": 0.0})  # fmt: skip
            inner = self._answer(self.cfg.fallback, "cascade:fallback", text, label, conf, steps)
            return inner | {"cascade_label": big_label, "cascade_confidence": big_conf}
        return result

    def _rag(self, b: Branch, text: str, label: str, steps: list) -> dict | None:
        from slmforge.rag.ask import AskConfig
        from slmforge.rag.store import Filters

        t0 = time.perf_counter()
        path_filter = _fill(b.path_filter, label=label) if b.path_filter else None
        tags = [_fill(t, label=label) for t in b.tags]
        if b.model:  # generative answer with numbered citations
            asker = self.res.asker(b.index, b.store, b.model)
            ans = asker.ask(AskConfig(b.index, text, b.model, b.store, b.mode, b.k, b.min_cosine,
                                      b.context_tokens, b.max_new_tokens, path_filter, tags))  # fmt: skip
            steps.append({"step": "rag", "index": Path(b.index).name, "path_filter": path_filter,
                          "tags": tags, "generated": True, "best_cosine": ans.best_cosine,
                          "ms": _ms(t0)})  # fmt: skip
            if ans.abstained:
                return None
            paths = self.res.paths(("asker", b.index, b.store, b.model), asker.retriever.store)
            cites = [_citation(n, ans.sources[n - 1], paths) for n in ans.citations]
            return {"answer": ans.text, "citations": cites}
        retriever = self.res.retriever(b.index, b.store)
        found = retriever.search(text, b.mode, b.k, Filters(path_filter, tags))
        best = found.best_cosine
        steps.append({"step": "rag", "index": Path(b.index).name, "path_filter": path_filter,
                      "tags": tags, "hits": len(found.hits), "best_cosine": None if best is None else round(best, 4),
                      "ms": _ms(t0)})  # fmt: skip
        if not found.hits or (best is not None and best < b.min_cosine):
            return None
        top = found.hits[: b.passages]
        answer = "\n\n".join(f"{h.chunk.text.strip()} [{n}]" for n, h in enumerate(top, 1))
        paths = self.res.paths(("retriever", b.index, b.store), retriever.store)
        return {"answer": answer, "citations": [_citation(n, h, paths) for n, h in enumerate(top, 1)]}

    def _generate(self, b: Branch, text: str) -> str:
        from slmforge.infer.generate import GenerateConfig, complete, prompt_ids

        lm = self.res.lm(b.model)
        tokenizer = lm.tokenizer
        messages = ([{"role": "system", "content": b.system}] if b.system else []) + [
            {"role": "user", "content": text}
        ]
        ids = prompt_ids(tokenizer, messages, chat=bool(getattr(tokenizer, "chat_template", None)))
        gen = GenerateConfig(model=b.model, max_new_tokens=b.max_new_tokens)
        return complete(lm.step(), tokenizer, ids, gen, lm.eos).text.strip()

    def close(self) -> None:
        self.res.close()


def _citation(n: int, hit, paths: SourcePaths) -> dict:
    c = hit.chunk
    return {"n": n, "doc": Path(c.doc).name if c.doc else Path(c.path).name, "section": c.section,
            "path": paths.relative(c.path), "text": c.text.strip()[:300]}  # fmt: skip


class SourcePaths:
    """An index's file paths as an answer may show them: relative to the parent of the deepest folder
    that holds every file the index read (`/srv/bank/kb/cards/x.md` -> `kb/cards/x.md`), never the
    server's absolute path. The root is worked out from the index on first use and again when a path
    falls outside it (the index was rebuilt over other folders). Use it on the thread that owns the
    store (SQLite connections belong to one thread)."""

    def __init__(self, store):
        self.store = store
        self.root: str | None = None

    def relative(self, path: str) -> str:
        import os.path

        if not path or not os.path.isabs(path):
            return path
        if self.root is None or not _inside(path, self.root):
            dirs = [os.path.dirname(p) for p in self.store.file_hashes() if os.path.isabs(p)]
            try:
                common = os.path.commonpath(dirs) if dirs else os.path.dirname(path)
            except ValueError:  # absolute paths on different drives (Windows)
                common = os.path.dirname(path)
            self.root = os.path.dirname(common) or common
        if not _inside(path, self.root):
            return os.path.basename(path)
        return os.path.relpath(path, self.root)

    def doc(self, doc: str, path: str) -> str:
        """A chunk's document (`path`, or `path:LINE` / `path:ROW`) with its path made relative."""
        if path and doc.startswith(path):
            return self.relative(path) + doc[len(path) :]
        return self.relative(doc) if doc else self.relative(path)


def _inside(path: str, root: str) -> bool:
    import os.path

    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _fill(template: str, **values) -> str:
    """`{name}` placeholders filled from values; other braces are left alone (user text is never parsed)."""
    out = template
    for key, value in values.items():
        out = out.replace("{" + key + "}", str(value))
    return out


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def load_pipelines(
    path_or_dict, base_dir: str | None = None, threads: int | None = None
) -> dict[str, Pipeline]:
    """{name: Pipeline} from a YAML file path or an already-parsed dict (paths relative to `base_dir`,
    default the YAML file's folder, or the working directory for a dict). Nothing is loaded until a
    pipeline runs (or `Pipeline.warm()`)."""
    if isinstance(path_or_dict, dict):
        raw, base = path_or_dict, Path(base_dir or ".")
    else:
        import yaml

        p = Path(path_or_dict)
        if not p.is_file():
            raise SlmError(f"pipelines file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark else ""
            raise SlmError(f"{p} is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
        base = Path(base_dir) if base_dir else p.parent
    configs = parse_pipelines(raw, base.resolve())
    shared = _Resources(threads)
    return {name: Pipeline(cfg, shared) for name, cfg in configs.items()}


# ---------------------------------------------------------------- the bank example


BANK_DIR = Path(__file__).resolve().parents[2] / "examples" / "bank"


def build_bank_example(
    out: str, quick: bool = False, threads: int | None = None, progress: bool = False, overwrite: bool = False
) -> Path:
    """Build examples/bank into `out`: train the intent model (intents/), index the knowledge base
    (kb.sqlite) and copy pipelines.yaml; return the path of the copied pipelines.yaml.

    `quick` trains on 8 examples per intent, 1 epoch, max_len 32 (tests; about 10-20 s on one core);
    otherwise every example, 4 epochs (about a minute or two on 2 cores)."""
    import csv
    import shutil

    from slmforge.clf.configs import ClassifyTrainConfig
    from slmforge.clf.train import train_classifier
    from slmforge.rag.index import RagIndexConfig, build_index

    if not (BANK_DIR / "intents.csv").exists():
        raise SlmError(f"{BANK_DIR} is missing (the bank example ships with the source checkout)")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    data = BANK_DIR / "intents.csv"
    if quick:
        with open(data, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        counts: dict[str, int] = {}
        keep = []
        for r in rows:
            if counts.get(r["label"], 0) < 8:
                keep.append(r)
                counts[r["label"]] = counts.get(r["label"], 0) + 1
        data = root / "intents-quick.csv"
        with open(data, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(keep)
    model_dir = root / "intents"
    if overwrite or not (model_dir / "classifier.json").exists():
        train_classifier(
            ClassifyTrainConfig(
                data=str(data), out=str(model_dir), epochs=1 if quick else 4, max_len=32 if quick else 48,
                val_fraction=0.15, threads=threads, overwrite=True, max_minutes=4, patience=2,
                ship_baseline=False, few_shot_below=0,  # the example's documented model: fine-tuned MiniLM
            ),
            progress=progress,
        )  # fmt: skip
    build_index(
        RagIndexConfig(paths=[str(BANK_DIR / "kb")], index=str(root / "kb.sqlite"), threads=threads),
        progress=progress,
    )
    shutil.copyfile(BANK_DIR / "pipelines.yaml", root / "pipelines.yaml")
    return root / "pipelines.yaml"
