"""slm synth end to end against a fake OpenAI-compatible teacher: parsing, every filter and its count,
provenance, unanswerable rows, resume after an interruption, determinism, and bad input."""

from __future__ import annotations

import json
import socket

import pytest

from slmforge.clf.examples import read_examples
from slmforge.core.errors import SlmError
from slmforge.rag.ask import IDK
from slmforge.synth.run import synth
from slmforge.synth.sources import select_chunks, unanswerable_keys
from tests.synth.conftest import EXPECTED, REPLIES, config, rows
from tests.synth.fake_teacher import FakeTeacher


def _dropped(report: dict) -> list[dict]:
    return [d for ds in report["dropped_examples"].values() for d in ds]


def test_qa_from_a_dataset_counts_every_filter_and_keeps_provenance(dataset, tmp_path):
    out = tmp_path / "qa.jsonl"
    with FakeTeacher(REPLIES) as t:
        report = synth(config(dataset, out, t.url), progress=False)
    assert len(t.calls) == 8 and t.calls[0]["temperature"] == 0 and t.calls[0]["model"] == "fake"
    c = report["counts"]
    assert (c["generated"], c["kept"], c["answerable"], c["unanswerable"]) == (8, 2, 2, 0)
    for why in ("copied_wording", "unsupported", "length", "unparseable", "truncated", "near_duplicate"):
        assert c[f"dropped_{why}"] == 1, why
    assert c["dropped_not_retrieved"] == 0 and report["retrieval_check"].startswith("not run")
    assert report["skipped"] == {"short": 1, "code": 1, "quarantined": 0}
    assert (report["available"], report["in_source"], report["units"], report["rows"]) == (8, 10, 8, 2)
    # each drop is the one its document was written to trip
    why = {d["section"].split("part ")[1].split(" >")[0]: d["why"] for d in _dropped(report)}
    assert {name: w for name, w in why.items() if name not in ("eta", "theta")} == {
        name: w for name, w in EXPECTED.items() if w is not None
    }
    assert sorted(w for name, w in why.items() if name in ("eta", "theta")) == ["near_duplicate"]
    kept = rows(out)
    assert [r["id"] for r in kept] == ["qa-00000", "qa-00001"]
    alpha = next(r for r in kept if "alpha" in r["question"])
    assert alpha["answer"].startswith("Call widgets.spin_alpha(speed, clockwise=False)")
    assert alpha["answerable"] is True and alpha["task"] == "qa" and alpha["teacher"] == "fake"
    src = alpha["source"]
    assert src["dataset"] == str(dataset) and src["doc"].endswith("alpha.rst")
    assert src["section"] == "widgets --- Widget toolkit, part alpha > spin_alpha" and "#" in src["chunk_id"]
    on_disk = json.loads((tmp_path / "qa.report.json").read_text())
    assert on_disk["counts"] == c and not (tmp_path / "qa.jsonl.partial").exists()
    assert on_disk["seconds"]["teacher"] >= 0 and "filters" in on_disk["seconds"]


def test_unanswerable_rows_keep_the_question_and_answer_i_dont_know(dataset, tmp_path):
    out = tmp_path / "qa.jsonl"
    cfg = config(dataset, out, "", unanswerable_share=0.5)
    chosen = unanswerable_keys(select_chunks(cfg, 8).units, 0.5, 0)
    assert len(chosen) == 4
    with FakeTeacher(REPLIES) as t:
        cfg.teacher_url = t.url
        report = synth(cfg, progress=False)
    kept = rows(out)
    assert len(kept) == 2 and report["counts"]["unanswerable"] == sum(not r["answerable"] for r in kept)
    for r in kept:
        assert (r["source"]["chunk_id"] in chosen) == (not r["answerable"])
        if not r["answerable"]:
            assert r["answer"] == IDK and r["question"].endswith("?")


def test_an_interrupted_run_resumes_where_it_stopped_and_matches_a_whole_run(dataset, tmp_path):
    whole = tmp_path / "whole.jsonl"
    with FakeTeacher(REPLIES) as t:
        expected = synth(config(dataset, whole, t.url), progress=False)
    out = tmp_path / "qa.jsonl"
    partial = tmp_path / "qa.jsonl.partial"
    with FakeTeacher(REPLIES, fail_after=3) as t, pytest.raises(SlmError, match="answered HTTP 500"):
        synth(config(dataset, out, t.url), progress=False)
    assert not out.exists() and not (tmp_path / "qa.report.json").exists()
    done = partial.read_text().splitlines()
    assert len(done) == 1 + 3  # the header and the three chunks answered
    with FakeTeacher(REPLIES) as t:
        with pytest.raises(SlmError, match=r"started with --min-support 0.6, not 0.9.*delete .*partial"):
            synth(config(dataset, out, t.url, min_support=0.9), progress=False)
        report = synth(config(dataset, out, t.url, batch_size=4), progress=False)  # speed-only: may change
        assert len(t.calls) == 5  # only what was left
    assert out.read_text() == whole.read_text()
    assert report["counts"] == expected["counts"] and not partial.exists()


def test_the_same_seed_gives_the_same_rows_another_seed_another_sample(dataset, tmp_path):
    with FakeTeacher(REPLIES) as t:
        a = synth(config(dataset, tmp_path / "a.jsonl", t.url, n=5), progress=False)
        order_a = [c["messages"][-1]["content"] for c in t.calls]
        synth(config(dataset, tmp_path / "b.jsonl", t.url, n=5), progress=False)
        order_b = [c["messages"][-1]["content"] for c in t.calls[5:]]
        synth(config(dataset, tmp_path / "c.jsonl", t.url, n=5, seed=1), progress=False)
        order_c = [c["messages"][-1]["content"] for c in t.calls[10:]]
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert order_a == order_b and order_a != order_c
    assert a["seed"] == 0 and all(r["seed"] == 0 for r in rows(tmp_path / "a.jsonl"))


def test_summaries_are_parsed_bounded_and_checked_against_the_chunk(dataset, tmp_path):
    replies = {
        "spin_alpha": "Summary: widgets.spin_alpha rotates the alpha widget at a speed, either way round.",
        "paint_beta": "Summary: Short.",
        "hide_gamma": "Summary: widgets.teleport moves everything through quantum flux engines.",
    }
    out = tmp_path / "sum.jsonl"
    with FakeTeacher(replies) as t:
        report = synth(config(dataset, out, t.url, task="summaries", n=9), progress=False)
    c = report["counts"]
    assert (c["generated"], c["kept"], c["dropped_length"], c["dropped_unsupported"]) == (9, 1, 1, 1)
    assert c["dropped_unparseable"] == 6  # the rest get "no canned reply for this prompt"
    (row,) = rows(out)
    assert row["summary"].startswith("widgets.spin_alpha rotates") and "spin_alpha(speed" in row["text"]
    assert row["source"]["section"].endswith("> spin_alpha") and row["id"] == "summaries-00000"
    # summaries take code chunks too: only the too-short one is skipped
    assert report["skipped"]["short"] == 1 and report["skipped"]["code"] == 0


def test_intents_paraphrase_seeds_into_rows_slm_classify_train_reads(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text(
        "text,label\nwhat is my balance,balance\nhow much money do I have,balance\n"
        "send 20 dollars to Sam,transfer\nmove money to my savings,transfer\n",
        encoding="utf-8",
    )
    replies = {
        "what is my balance": "1. Show me the balance in my account\n2. What is my balance\n3. ok\n"
        "4. Show me the balance in my account!\n5. Could you tell me the current balance please",
        "how much money do I have": "1. How much cash is left on my card\n2. How much money do I have?\n"
        "3. order one large pepperoni pizza for delivery please",  # a copy of the prompt's own example
        "send 20 dollars": "Sure! Here you go:\n1. Pay Sam twenty bucks\n2. Wire 20 USD over to Sam\n"
        "3. What is the weather like today",
        "move money to my": ("1. Put some money into savings\n2. Shift cash into my sav", "length"),
    }
    out = tmp_path / "intents.jsonl"
    with FakeTeacher(replies) as t:
        report = synth(config(seeds, out, t.url, task="intents", n=None, per_seed=5), progress=False)
    assert any("Label: balance\nExample: what is my balance" in c["messages"][-1]["content"] for c in t.calls)
    c = report["counts"]
    assert c["replies"] == 4 and c["generated"] == 12
    assert (c["dropped_seed_copy"], c["dropped_length"], c["dropped_near_duplicate"]) == (3, 1, 1)
    assert c["dropped_off_topic"] == 1
    assert c["dropped_truncated"] == 1 and c["kept"] == 6
    texts, labels = read_examples(str(out), "text", "label")
    assert len(texts) == 6 and set(labels) == {"balance", "transfer"}
    first = rows(out)[0]
    assert first["task"] == "intents" and first["source"]["label"] == first["label"]
    assert first["source"]["seed_text"] in {"what is my balance", "how much money do I have",
                                            "send 20 dollars to Sam", "move money to my savings"}  # fmt: skip


# ---------------------------------------------------------------- bad input


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    ("mode", "message"),
    [("unreachable", "is unreachable"), ("http", "answered HTTP 500"), ("malformed", "answered malformed JSON"),
     ("no_choices", "answered malformed JSON")],
)  # fmt: skip
def test_a_failing_teacher_is_one_line_and_leaves_no_out_but_the_partial(dataset, tmp_path, mode, message):
    out = tmp_path / "qa.jsonl"
    if mode == "unreachable":
        with pytest.raises(SlmError, match=message) as e:
            synth(config(dataset, out, f"http://127.0.0.1:{_closed_port()}"), progress=False)
    else:
        fake = FakeTeacher(REPLIES, fail_after=0 if mode == "http" else None, mode=mode)
        with fake, pytest.raises(SlmError, match=message) as e:
            synth(config(dataset, out, fake.url), progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists() and (tmp_path / "qa.jsonl.partial").exists()
    with FakeTeacher(REPLIES) as t:  # and a re-run with a working teacher finishes it
        assert synth(config(dataset, out, t.url), progress=False)["rows"] == 2


def test_a_corpus_smaller_than_n_is_refused_saying_how_many_there_are(dataset, tmp_path):
    with pytest.raises(SlmError, match=r"has 8 usable chunks \(of 10; 1 too short, 1 mostly code or tables\); "
                                       r"--n 9 asks for more: pass --n 8 or fewer"):  # fmt: skip
        synth(config(dataset, tmp_path / "qa.jsonl", "http://127.0.0.1:9", n=9), progress=False)
    assert not (tmp_path / "qa.jsonl.partial").exists()


def test_unknown_task_and_sources_that_are_neither_index_nor_dataset(dataset, tmp_path):
    url = "http://127.0.0.1:9"
    with pytest.raises(SlmError, match="unknown task 'poems': choose one of qa, intents, summaries"):
        synth(config(dataset, tmp_path / "o.jsonl", url, task="poems"), progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for source, message in [
        (tmp_path / "empty", "a directory without train.jsonl: neither an index"),
        (tmp_path / "notes.txt", "is neither an index"),
        ("no-such-index", "is neither an index .* no such index or path"),
    ]:
        with pytest.raises(SlmError, match=message):
            synth(config(source, tmp_path / "o.jsonl", url), progress=False)
    with pytest.raises(SlmError, match="intents: .* is not a file"):
        synth(config(dataset, tmp_path / "o.jsonl", url, task="intents", n=None), progress=False)


def test_an_existing_out_needs_overwrite(dataset, tmp_path):
    out = tmp_path / "qa.jsonl"
    out.write_text("mine\n")
    with pytest.raises(SlmError, match="already exists"):
        synth(config(dataset, out, "http://127.0.0.1:9"), progress=False)
    with FakeTeacher(REPLIES) as t:
        assert synth(config(dataset, out, t.url, overwrite=True), progress=False)["rows"] == 2


def test_the_cli_prints_the_report_table_and_errors_in_one_line(dataset, tmp_path, slm_cli):
    code, out, err = slm_cli("synth", "--help")
    assert code == 0 and "--teacher-url" in out and "--retrieve-k" in out
    with FakeTeacher(REPLIES) as t:
        code, out, err = slm_cli("synth", dataset, "-o", tmp_path / "qa.jsonl", "--teacher-url", t.url,
                                 "--teacher", "fake", "--n", "8", "--unanswerable-share", "0")  # fmt: skip
    assert code == 0, err
    assert "slm synth qa: 2 rows" in out and "dropped copied wording" in out and "teacher rate" in out
    code, out, err = slm_cli("synth", dataset, "-o", tmp_path / "x.jsonl", "--teacher-url", "http://127.0.0.1:9",
                             "--n", "50")  # fmt: skip
    assert (
        code == 2 and "error:" in err and "pass --n 8 or fewer" in err and len(err.strip().splitlines()) == 1
    )
