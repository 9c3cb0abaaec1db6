"""slm synth from a real index (MiniLM embeddings): provenance with index chunk ids, the retrieval check,
and the check that drops an unanswerable question another document answers."""

from __future__ import annotations

from slmforge.rag.index import RagIndexConfig, build_index
from slmforge.synth.run import synth
from tests.synth.conftest import DOCS, REPLIES, config, make_doc, rows
from tests.synth.fake_teacher import FakeTeacher

# kappa's question asks about alpha (so the search brings back alpha's chunk); the twins say the same thing
KAPPA = make_doc("kappa", "store_kappa(record, table)",
             "Store the kappa record in the database table named by table. The change is committed at the end "
             "unless autocommit is false, and a record that is already stored is replaced by the new one.")  # fmt: skip
TWIN = ("Flush the buffered log lines to disk and close the log file. Pending lines are written first, in "
        "the order they were logged; closing a file twice does nothing, and later writes raise LogClosed.")  # fmt: skip
REPLIES_INDEX = {
    "spin_alpha": REPLIES["spin_alpha"],
    "store_kappa": "Question: How can I make the alpha widget spin the other way round?\n"
    "Answer: Call widgets.store_kappa(record, table) to store the kappa record in the database table.",
    "flush_one": "Question: How do I make sure all my pending log lines end up on disk?\n"
    "Answer: The pending lines are written to disk first, then the log file is closed.",
    "flush_two": "Question: How do I make sure all my pending log lines end up on disk?\n"
    "Answer: The pending lines are written to disk first, then the log file is closed.",
}  # fmt: skip


def test_qa_from_an_index_checks_retrieval_and_answers_elsewhere(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "alpha.rst").write_text(DOCS["alpha"])
    (docs / "kappa.rst").write_text(KAPPA)
    (docs / "one.rst").write_text(make_doc("one", "flush_one()", TWIN))
    (docs / "two.rst").write_text(make_doc("two", "flush_two()", TWIN))
    index = tmp_path / "kb.sqlite"
    build_index(
        RagIndexConfig(paths=[str(docs)], index=str(index), runtime="torch", threads=1), progress=False
    )

    with FakeTeacher(REPLIES_INDEX) as t:
        report = synth(config(index, tmp_path / "qa.jsonl", t.url, n=4, retrieve_k=1), progress=False)
    assert report["source_kind"] == "index" and report["retrieval_check"] == "hybrid top 1"
    dropped = {
        d["section"].split(" > ")[-1]: d["why"] for ds in report["dropped_examples"].values() for d in ds
    }
    assert dropped.get("store_kappa") == "not_retrieved"
    kept = {r["source"]["section"].split(" > ")[-1]: r for r in rows(tmp_path / "qa.jsonl")}
    alpha = kept["spin_alpha"]
    assert isinstance(alpha["source"]["chunk_id"], int) and alpha["source"]["index"] == str(index)
    assert alpha["source"]["doc"] == str(docs / "alpha.rst") and alpha["answerable"] is True
    from slmforge.rag.store import text_sha256
    from slmforge.rag.stores import open_store

    store = open_store(str(index))
    try:  # the chunk's text hash, which finds it again in a rebuilt index
        chunk = store.chunks([alpha["source"]["chunk_id"]])[alpha["source"]["chunk_id"]]
    finally:
        store.close()
    assert alpha["source"]["text_sha256"] == text_sha256(chunk.text)

    # every question unanswerable: the twins' answer is supported by the other twin's chunk, so neither
    # is a question the model should abstain on; alpha's is
    with FakeTeacher(REPLIES_INDEX) as t:
        report = synth(config(index, tmp_path / "idk.jsonl", t.url, n=4, retrieve_k=3, unanswerable_share=0.99),
                       progress=False)  # fmt: skip
    dropped = {
        d["section"].split(" > ")[-1]: d["why"] for ds in report["dropped_examples"].values() for d in ds
    }
    assert dropped["flush_one"] == dropped["flush_two"] == "answerable_elsewhere"
    assert report["counts"]["dropped_answerable_elsewhere"] == 2
    kept = {r["source"]["section"].split(" > ")[-1]: r for r in rows(tmp_path / "idk.jsonl")}
    assert kept["spin_alpha"]["answerable"] is False and kept["spin_alpha"]["answer"] == "I don't know"
