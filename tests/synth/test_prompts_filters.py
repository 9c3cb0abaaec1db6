"""slm synth's parts on their own: reading reST as the teacher sees it, parsing replies, the filters, the
partial file."""

from __future__ import annotations

import json

import pytest

from slmforge.core.errors import SlmError
from slmforge.rag.ask import IDK
from slmforge.synth import run
from slmforge.synth.filters import (
    NearDuplicates,
    code_share,
    longest_shared_run,
    shared_phrase,
    stem,
    support,
)
from slmforge.synth.partial import Partial
from slmforge.synth.prompts import (
    module_of,
    parse_list,
    parse_qa,
    parse_summary,
    qa_messages,
    readable,
)

SECTION = "os --- Miscellaneous operating system interfaces > Files and Directories > lstat"
CHUNK = """.. function:: lstat(path, *, dir_fd=None)

   Perform the equivalent of an :c:func:`lstat` system call on the given path.
   Similar to :func:`~os.stat`, but does not follow symbolic links. Return a
   :class:`stat_result` object. See ``follow_symlinks`` for *dir_fd*.

   .. audit-event:: os.lstat path os.lstat

   .. versionadded:: 3.3
"""


def test_readable_simplifies_rest_and_qualifies_the_api_name():
    text = readable(CHUNK, SECTION)
    assert text.startswith("function os.lstat(path, *, dir_fd=None)")
    assert "Similar to stat, but" in text  # ~os.stat shows its last part, as Sphinx does
    assert "stat_result object. See follow_symlinks for dir_fd." in text
    assert "audit-event" not in text and "New in version 3.3" in text
    assert module_of(SECTION) == "os" and module_of("Introduction > Basics") == ""
    # a bare method is not given the module's name (it belongs to a class); a dotted one is
    assert readable(".. method:: is_file()", SECTION) == "method is_file()"
    assert readable(".. method:: Path.stat()", "pathlib --- Paths > Methods") == "method pathlib.Path.stat()"
    assert readable(
        ".. function:: dump(obj, fp, *, \\\n                skipkeys=False)", "json --- JSON"
    ) == ("function json.dump(obj, fp, *, skipkeys=False)")


def test_the_qa_prompt_shows_the_chunk_last_after_few_shot_turns():
    messages = qa_messages(SECTION, CHUNK)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[-1]["content"].startswith(f"Section: {SECTION}\nDocumentation:\nfunction os.lstat")
    assert all(parse_qa(m["content"]) for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        ("Question: How do I stat a link?\nAnswer: Use os.lstat(path).", ("How do I stat a link?", "Use os.lstat(path).")),
        ("**Question:** How do I stat a link?\n**Answer:** Use os.lstat(path).", ("How do I stat a link?", "Use os.lstat(path).")),
        ("question: How do I\nstat a link?\nanswer: Use os.lstat(path).\n", ("How do I stat a link?", "Use os.lstat(path).")),
        ("Question: Q?\nAnswer: Use os.lstat. Note: it is new in 3.3.", ("Q?", "Use os.lstat.")),
        ("Question: How do I stat a link?", None),
        ("Answer: Use os.lstat(path).", None),
        ("Sure! Here is a question about lstat.", None),
        ("Question:\nAnswer: Use os.lstat(path).", None),
    ],
)  # fmt: skip
def test_parse_qa(reply, parsed):
    assert parse_qa(reply) == parsed


def test_parse_summary_and_list():
    assert parse_summary("Summary: os.lstat stats a path without following links.") == (
        "os.lstat stats a path without following links."
    )
    assert parse_summary("os.lstat stats a path without following links.") is None  # not the format
    assert parse_summary("Summary:") is None
    assert parse_list("1. What's my balance?\n2) how much is left\n- \"money left?\"\n\n") == [
        "What's my balance?", "how much is left", "money left?"]  # fmt: skip
    assert parse_list("What's my balance?\nhow much is left") == ["What's my balance?", "how much is left"]


def test_support_counts_content_words_found_in_the_chunk():
    evidence = readable(CHUNK, SECTION) + SECTION
    assert support("Call os.lstat(path): it does not follow symbolic links.", evidence) == 1.0
    assert support("Use os.readlink() to resolve the symlink target.", evidence) < 0.5
    assert support("Call it.", evidence) == 1.0  # no content words: nothing unsupported
    assert stem("creates") == stem("create") and stem("directories") == stem("directory")


def test_shared_phrase_is_the_longest_common_run_of_words():
    chunk = "Whether the path points to an existing file or directory."
    assert shared_phrase("Does my path point to an existing file or directory?", chunk) == (
        "to an existing file or directory"
    )
    assert longest_shared_run("How do I check that a file exists?", chunk) == 1
    assert longest_shared_run("", chunk) == 0


def test_near_duplicates_use_content_word_jaccard():
    seen = NearDuplicates(0.7)
    seen.add("How do I copy a file without its metadata?")
    assert seen.near("how do I COPY a file without its metadata")  # the same words
    assert seen.near("How can I copy a file without the metadata?")
    assert not seen.near("How do I move a directory tree?")


def test_code_share_tells_code_and_tables_from_prose():
    prose = "Return the path.\n\nIt may be relative; see also abspath for more about it."
    assert code_share(prose) == 0.0
    example = "Example::\n\n   >>> os.getcwd()\n   '/home'\n   >>> os.chdir('/')\n"
    assert code_share(example) > 0.7
    table = "+------+------+\n| a    | b    |\n+------+------+\n| 1    | 2    |\n+------+------+\n"
    assert code_share(table) > 0.9
    assert code_share(".. warning::\n\n   Be careful when parsing JSON from untrusted sources.") < 0.3


def test_idk_is_rag_asks_own():
    assert run.IDK == IDK


def test_partial_resumes_cuts_a_torn_line_and_refuses_another_config(tmp_path):
    path = tmp_path / "qa.jsonl.partial"
    header = {"config": {"task": "qa", "seed": 0}, "source": {"chunks": 3}}
    p = Partial(path, header)
    p.append([{"key": "1", "counts": {}, "rows": [], "seconds": {}}])
    p.close()
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"key": "2", "counts": {}, "ro')  # a crash mid-line
    p = Partial(path, header)
    assert [r["key"] for r in p.records] == ["1"]
    with pytest.raises(SlmError, match="another `slm synth` is writing"):
        Partial(path, header)  # while this run holds it
    p.append([{"key": "3", "counts": {}, "rows": [], "seconds": {}}])
    p.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line).get("key") for line in lines[1:]] == ["1", "3"]
    with pytest.raises(SlmError, match=r"started with --seed 0, not 1: run the same command"):
        Partial(path, {"config": {"task": "qa", "seed": 1}, "source": {"chunks": 3}})
    with pytest.raises(SlmError, match="the source changed"):
        Partial(path, {"config": {"task": "qa", "seed": 0}, "source": {"chunks": 4}})
    path.write_text("not a partial\n")
    with pytest.raises(SlmError, match="is not a partial `slm synth` run"):
        Partial(path, header)
