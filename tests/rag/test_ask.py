"""rag ask: grounded prompt within the budget, numbered citations, abstention (tiny random Llama)."""

from __future__ import annotations

import pytest

from slmforge.rag.ask import IDK, AskConfig, Asker
from slmforge.rag.index import build_index
from tests.rag.test_index_search import index_cfg, write_docs


@pytest.fixture
def asker(tmp_path, tiny_model_dir):
    docs = write_docs(tmp_path / "docs")
    index = tmp_path / "kb.sqlite"
    build_index(index_cfg(docs, index), progress=False)
    with Asker(str(index), str(tiny_model_dir), threads=1) as a:
        yield a, str(index), str(tiny_model_dir)


def test_answer_cites_a_retrieved_chunk_within_the_budget(asker):
    a, index, model = asker
    cfg = AskConfig(index, "When should I prune roses?", model, max_new_tokens=16, min_cosine=0.0)
    ans = a.ask(cfg)
    assert not ans.abstained
    assert ans.sources and ans.citations
    assert all(1 <= n <= len(ans.sources) for n in ans.citations)
    assert f"[{ans.citations[0]}]" in ans.text
    assert ans.prompt_tokens <= 512 - 16  # the tiny model reads 512 positions

    small = a.ask(AskConfig(index, "When should I prune roses?", model, max_new_tokens=16, min_cosine=0.0,
                            context_tokens=260))  # fmt: skip
    assert small.prompt_tokens <= 260 and len(small.sources) <= len(ans.sources)


def test_off_topic_question_abstains_before_generating(asker):
    a, index, model = asker
    ans = a.ask(AskConfig(index, "Who painted the Mona Lisa?", model, max_new_tokens=16))
    assert ans.abstained and ans.text.startswith(IDK)
    assert ans.citations == [] and ans.prompt_tokens == 0
