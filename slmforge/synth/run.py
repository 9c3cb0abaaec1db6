"""`slm synth`: documents in, task data out, with provenance on every row (row shapes: QA_SCHEMA in the docs).

    select units (sources) -> for each batch: teacher (prompts, teacher) -> parse + filters (filters)
    -> append to OUT.partial (partial) -> when all are done: OUT, OUT.report.json; OUT.partial removed

qa, per chunk: parse "Question: / Answer:", then drop (counted under the first check that fails) a reply
cut at max_new_tokens, a question or answer outside the word bounds, a question sharing more than
`max_shared_ngram` consecutive words with the chunk, an answer whose content words are mostly not in the
chunk, and (from an index) a question whose hybrid search does not bring back its chunk, or another chunk
of the same document section, in the top `retrieve_k`; a question too close to one kept before it goes
last (only questions that passed everything else are remembered). A share of chunks
(`unanswerable_share`) make unanswerable rows: the teacher's question, checked the same way, with the
answer "I don't know"; readers pair it with contexts without its source document, so one more check
drops it when a chunk of another document in its search results supports the teacher's answer.
summaries: parse, word bounds, support. intents: per seed example, a numbered list of paraphrases; each
item is dropped when outside the word bounds, a copy (or near copy) of a seed or of the prompt's own
examples, off topic (it shares no content word, stemmed, with its seed or label: a small teacher drifts to
another request), or a near duplicate of a kept one.
"""

from __future__ import annotations

import time
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_file, write_json
from slmforge.core.progress import bar
from slmforge.rag.ask import IDK
from slmforge.synth import prompts
from slmforge.synth.configs import DEFAULT_N, SynthConfig, check_config
from slmforge.synth.filters import NearDuplicates, shared_phrase, stems, support, word_count
from slmforge.synth.partial import Partial, fingerprint
from slmforge.synth.sources import Selection, Unit, select_chunks, select_seeds, unanswerable_keys

EXAMPLES = 3  # dropped rows shown per reason in the report
QA_COUNTS = ("generated", "kept", "answerable", "unanswerable", "dropped_unparseable", "dropped_truncated",
             "dropped_length", "dropped_copied_wording", "dropped_unsupported", "dropped_not_retrieved",
             "dropped_answerable_elsewhere", "dropped_near_duplicate")  # fmt: skip
SUMMARY_COUNTS = ("generated", "kept", "dropped_unparseable", "dropped_truncated", "dropped_length",
                  "dropped_unsupported")  # fmt: skip
INTENT_COUNTS = ("replies", "generated", "kept", "dropped_unparseable", "dropped_truncated", "dropped_length",
                 "dropped_seed_copy", "dropped_off_topic", "dropped_near_duplicate")  # fmt: skip


def paths(out: str) -> tuple[Path, Path, Path]:
    """OUT, OUT.report.json (qa.jsonl -> qa.report.json) and OUT.partial."""
    p = Path(out).expanduser()
    return p, p.with_suffix(".report.json"), p.with_name(p.name + ".partial")


def synth(cfg: SynthConfig, progress: bool = True) -> dict:
    """Make the task data `cfg` asks for; returns the report also written to OUT.report.json."""
    check_config(cfg)
    started = time.perf_counter()
    out, report_path, partial_path = paths(cfg.out)
    if out.is_dir():
        raise SlmError(f"--out {out} is a directory; give a .jsonl file path")
    if out.exists() and not partial_path.exists() and not cfg.overwrite:
        raise SlmError(f"{out} already exists (pass --overwrite to replace it)")
    n = None if cfg.task == "intents" else (DEFAULT_N if cfg.n is None else cfg.n)
    selection = select_seeds(cfg) if cfg.task == "intents" else select_chunks(cfg, n)
    select_s = time.perf_counter() - started
    part = Partial(partial_path, {"config": fingerprint(cfg, n), "source": selection.signature})
    try:
        job = _Job(cfg, selection)
        for record in part.records:
            job.replay(record)
        todo = [u for u in selection.units if u.key not in job.done]
        run_s = _work(job, part, todo, selection, progress) if todo else {}
        rows = [row for r in part.records for row in r["rows"]]
        write_started = time.perf_counter()
        with atomic_file(out) as f:
            for i, row in enumerate(rows):
                f.write(_dumps({"id": f"{cfg.task}-{i:05d}", **row}) + "\n")
        report = job.report(selection, part.records, len(rows))
        report["seconds"] = {
            "select": round(select_s, 2),
            **run_s,
            **_summed(part.records),
            "write": round(time.perf_counter() - write_started, 2),
            "this_run": round(time.perf_counter() - started, 2),
        }
        teacher_s = report["seconds"].get("teacher", 0.0)
        report["units_per_minute"] = round(60 * len(part.records) / teacher_s, 2) if teacher_s > 0 else None
        report["out"] = str(out)
        write_json(report_path, report)
    except BaseException:
        part.close()
        raise
    part.remove()
    return report


def _work(job, part: Partial, todo: list[Unit], selection: Selection, progress: bool) -> dict:
    from slmforge.synth.teacher import open_teacher

    cfg = job.cfg
    loading = time.perf_counter()
    teacher = open_teacher(cfg)
    load_s = time.perf_counter() - loading
    unit = "seed" if cfg.task == "intents" else "chunk"
    total = len(selection.units)
    began, made = time.perf_counter(), 0
    with bar(f"synth {cfg.task}", total=total, unit=unit, enabled=progress) as b:
        b.advance(total - len(todo))
        try:
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start : start + cfg.batch_size]
                records = _attempt(job, teacher, batch)
                part.append(records)
                made += len(batch)
                b.advance(len(batch))
                rate = 60 * made / (time.perf_counter() - began)
                b.update(rate=f"{rate:.1f} {unit}s/min")
        finally:
            job.close()
    return {"load_teacher": round(load_s, 2)}


def _attempt(job, teacher, units: list[Unit]) -> list[dict]:
    """The records of these units, from one teacher call."""
    t0 = time.perf_counter()
    replies = teacher.complete([job.messages(u) for u in units], job.cfg.max_new_tokens)
    share = (time.perf_counter() - t0) / len(units)
    return [job.judge(u, r, share) for u, r in zip(units, replies)]


def _summed(records: list[dict]) -> dict:
    total: dict[str, float] = {}
    for r in records:
        for k, v in r.get("seconds", {}).items():
            total[k] = total.get(k, 0.0) + v
    return {k: round(v, 2) for k, v in total.items()}


def _evidence(chunk) -> str:
    """What an answer may draw on: the chunk's section path, its text and its text as the teacher read it."""
    return f"{chunk.section}\n{chunk.text}\n{prompts.readable(chunk.text, chunk.section)}"


def _dumps(row: dict) -> str:
    import json

    return json.dumps(row, ensure_ascii=False)


class _Job:
    """A task's prompts, checks and state (near-duplicate memory) for one run."""

    def __init__(self, cfg: SynthConfig, selection: Selection):
        self.cfg, self.selection = cfg, selection
        self.done: set[str] = set()
        self.kept = NearDuplicates(cfg.near_duplicate)
        self.retriever = None
        self.unanswerable = (
            unanswerable_keys(selection.units, cfg.unanswerable_share, cfg.seed)
            if cfg.task == "qa"
            else set()
        )
        self.seeds = NearDuplicates(cfg.near_duplicate)  # the seeds and the prompt's own examples
        for text in [s.text for s in selection.seeds] + list(prompts.INTENT_EXAMPLES):
            self.seeds.add(text)

    # ------------------------------------------------------------ state

    def replay(self, record: dict) -> None:
        """Take in a unit done by an earlier run: its key and the texts it kept."""
        self.done.add(record["key"])
        for row in record["rows"]:
            self.kept.add(row["question"] if self.cfg.task == "qa" else row.get("text", ""))

    def close(self) -> None:
        if self.retriever is not None:
            self.retriever.close()
            self.retriever = None

    # ------------------------------------------------------------ prompts

    def messages(self, u: Unit) -> list[dict]:
        if self.cfg.task == "qa":
            return prompts.qa_messages(u.section, u.text)
        if self.cfg.task == "summaries":
            return prompts.summary_messages(u.section, u.text)
        return prompts.intent_messages(u.label, u.text, self.cfg.per_seed)

    # ------------------------------------------------------------ checks

    def judge(self, u: Unit, reply, teacher_s: float) -> dict:
        """The record of one unit: its counts, rows, and what was dropped and why (see the module docstring)."""
        t0 = time.perf_counter()
        seconds = {"teacher": teacher_s}
        if self.cfg.task == "qa":
            counts, rows, dropped = self._qa(u, reply, seconds)
        elif self.cfg.task == "summaries":
            counts, rows, dropped = self._summary(u, reply)
        else:
            counts, rows, dropped = self._intents(u, reply)
        seconds["filters"] = time.perf_counter() - t0 - seconds.get("retrieval", 0.0)
        self.done.add(u.key)
        return {"key": u.key, "counts": counts, "rows": rows, "dropped": dropped, "seconds": seconds}

    def _row(self, u: Unit, **fields) -> dict:
        return {"task": self.cfg.task, **fields, "source": u.source, "teacher": self.cfg.teacher,
                "seed": self.cfg.seed}  # fmt: skip

    def _qa(self, u: Unit, reply, seconds: dict) -> tuple[dict, list, list]:
        cfg = self.cfg

        def drop(why: str, **seen):
            seen = {"why": why, "chunk": u.key, "section": u.section, **seen, "reply": reply.text}
            return {"generated": 1, f"dropped_{why}": 1}, [], [seen]

        if not reply.finished:
            return drop("truncated")
        parsed = prompts.parse_qa(reply.text)
        if parsed is None:
            return drop("unparseable")
        question, answer = parsed
        qa = {"question": question, "answer": answer}
        if not (cfg.min_question_words <= word_count(question) <= cfg.max_question_words) or not (
            cfg.min_answer_words <= word_count(answer) <= cfg.max_answer_words
        ):
            return drop("length", **qa)
        shown = prompts.readable(u.text, u.section)
        phrase = shared_phrase(question, shown)
        if len(phrase.split()) > cfg.max_shared_ngram:
            return drop("copied_wording", **qa, phrase=phrase)
        supported = support(answer, f"{u.section}\n{u.text}\n{shown}")
        if supported < cfg.min_support:
            return drop("unsupported", **qa, support=round(supported, 3))
        unanswerable = u.key in self.unanswerable
        if self.selection.kind == "index":
            t0 = time.perf_counter()
            hits = self._search(question)
            seconds["retrieval"] = time.perf_counter() - t0
            if not any(self._same_place(u, h.chunk) for h in hits):
                return drop("not_retrieved", **qa, retrieved=[h.chunk.section for h in hits[:3]])
            elsewhere = [
                h
                for h in hits
                if h.chunk.doc != u.doc and support(answer, _evidence(h.chunk)) >= cfg.min_support
            ]
            if unanswerable and elsewhere:
                return drop("answerable_elsewhere", **qa, elsewhere=elsewhere[0].chunk.section)
        if self.kept.near(question):
            return drop("near_duplicate", **qa)
        self.kept.add(question)
        kind = "unanswerable" if unanswerable else "answerable"
        row = self._row(
            u, question=question, answer=IDK if unanswerable else answer, answerable=not unanswerable
        )
        return {"generated": 1, "kept": 1, kind: 1}, [row], []

    @staticmethod
    def _same_place(u: Unit, chunk) -> bool:
        return str(chunk.id) == u.key or (chunk.doc == u.doc and chunk.section == u.section)

    def _search(self, question: str):
        if self.retriever is None:
            from slmforge.rag.search import Retriever

            self.retriever = Retriever(self.cfg.source, self.cfg.store)
        return self.retriever.search(question, self.cfg.retrieve_mode, self.cfg.retrieve_k).hits

    def _summary(self, u: Unit, reply) -> tuple[dict, list, list]:
        cfg = self.cfg

        def drop(why: str, **seen):
            return (
                {"generated": 1, f"dropped_{why}": 1},
                [],
                [{"why": why, "chunk": u.key, "section": u.section, **seen, "reply": reply.text}],
            )

        if not reply.finished:
            return drop("truncated", reply=reply.text)
        summary = prompts.parse_summary(reply.text)
        if summary is None:
            return drop("unparseable", reply=reply.text)
        if not cfg.min_summary_words <= word_count(summary) <= cfg.max_summary_words:
            return drop("length", summary=summary)
        supported = support(summary, _evidence(u))
        if supported < cfg.min_support:
            return drop("unsupported", summary=summary, support=round(supported, 3))
        return {"generated": 1, "kept": 1}, [self._row(u, text=u.text, summary=summary)], []

    def _intents(self, u: Unit, reply) -> tuple[dict, list, list]:
        cfg = self.cfg
        counts = {"replies": 1}
        dropped: list[dict] = []
        items = prompts.parse_list(reply.text)[: cfg.per_seed]
        if not reply.finished and items:
            dropped.append({"why": "truncated", "seed": u.key, "text": items.pop()})  # it was cut off
            counts["dropped_truncated"] = 1
        if not items:
            counts["dropped_unparseable"] = 1
            return counts, [], [*dropped, {"why": "unparseable", "seed": u.key, "reply": reply.text}]
        rows = []
        for text in items:
            counts["generated"] = counts.get("generated", 0) + 1
            if not cfg.min_intent_words <= word_count(text) <= cfg.max_intent_words:
                why = "length"
            elif self.seeds.near(text):
                why = "seed_copy"
            elif cfg.topic_check and not stems(text) & stems(f"{u.text} {u.label.replace('_', ' ')}"):
                why = "off_topic"
            elif self.kept.near(text):
                why = "near_duplicate"
            else:
                self.kept.add(text)
                rows.append(self._row(u, text=text, label=u.label))
                counts["kept"] = counts.get("kept", 0) + 1
                continue
            counts[f"dropped_{why}"] = counts.get(f"dropped_{why}", 0) + 1
            dropped.append({"why": why, "seed": u.key, "text": text})
        return counts, rows, dropped

    # ------------------------------------------------------------ the report

    def report(self, selection: Selection, records: list[dict], written: int) -> dict:
        cfg = self.cfg
        names = {"qa": QA_COUNTS, "summaries": SUMMARY_COUNTS, "intents": INTENT_COUNTS}[cfg.task]
        counts = dict.fromkeys(names, 0)
        for r in records:
            for k, v in r["counts"].items():
                counts[k] = counts.get(k, 0) + v
        report = {
            "task": cfg.task,
            "source": cfg.source,
            "source_kind": selection.kind,
            "teacher": cfg.teacher,
            "teacher_url": cfg.teacher_url,
            "seed": cfg.seed,
            "units": len(records),
            "available": selection.available,
            "in_source": selection.total,
            "skipped": selection.skipped,
            "counts": counts,
            "rows": written,
        }
        examples: dict[str, list] = {}
        for r in records:
            for d in r.get("dropped", []):
                if len(examples.setdefault(d["why"], [])) < EXAMPLES:
                    examples[d["why"]].append(d)
        report["dropped_examples"] = examples
        if cfg.task == "qa":
            report["retrieval_check"] = (
                f"{cfg.retrieve_mode} top {cfg.retrieve_k}" if selection.kind == "index"
                else "not run (a dataset has no index)"
            )  # fmt: skip
        return report
