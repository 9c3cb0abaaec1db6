"""Continuous batching on the ort engine (slmforge.infer.batcher) against the one-request decode loop, on the tiny
random Llama: rows of different lengths, joining mid-flight, slot compaction, cancel, admission, stop strings,
seeded sampling and constraints."""

from __future__ import annotations

import threading

import pytest

from slmforge.core.errors import SlmError
from slmforge.infer import engines
from slmforge.infer.batcher import BatcherConfig, BatcherFull, ContinuousBatcher, PromptTooLong
from slmforge.infer.constrain import Constraint
from slmforge.infer.generate import GenerateConfig, complete, prompt_ids

PROMPTS = ["The cat sees", "Every student reads a long book in the evening near the sea", "hi there"]


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return engines.open_lm(str(tiny_model_dir), "ort", "fp32", threads=1)


def _ids(lm, text):
    return prompt_ids(lm.tokenizer, [{"role": "user", "content": text}], chat=False)


def _cfg(n=16, **kw):
    return GenerateConfig(model="x", max_new_tokens=n, **kw)


def _alone(lm, text, cfg, constraint=None):
    return complete(lm.step(), lm.tokenizer, _ids(lm, text), cfg, lm.eos, None, constraint)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_greedy_rows_of_different_lengths_equal_one_by_one(tiny_model_dir, precision):
    lm = engines.open_lm(str(tiny_model_dir), "ort", precision, threads=1)
    cfg = _cfg(20)
    with ContinuousBatcher(lm, BatcherConfig(max_batch=3, slot_tokens=64, prefill_chunk=4)) as batcher:
        requests = [batcher.submit(_ids(lm, t), cfg) for t in PROMPTS]
        got = [r.result(60) for r in requests]
    want = [_alone(lm, t, cfg) for t in PROMPTS]
    assert len({len(_ids(lm, t)) for t in PROMPTS}) == 3
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.text for g in got] == [w.text for w in want]
    assert [g.stopped_at_eos for g in got] == [w.stopped_at_eos for w in want]
    assert all(r.finish_reason == ("stop" if w.stopped_at_eos else "length") for r, w in zip(requests, want))


def test_joining_mid_flight_and_a_finished_row_leaving_its_slot(lm):
    # A ends first (5 tokens) from slot 0, so the last row moves into its slot; D joins while B and C decode
    cfg_short, cfg_long = _cfg(5), _cfg(30)
    started = threading.Event()
    texts = {"A": "The cat sees", "B": "the old man walks to", "C": "a small dog", "D": "our team builds"}
    with ContinuousBatcher(lm, BatcherConfig(max_batch=3, slot_tokens=64, prefill_chunk=8)) as batcher:
        a = batcher.submit(_ids(lm, texts["A"]), cfg_short)
        b = batcher.submit(_ids(lm, texts["B"]), cfg_long, on_text=lambda _: started.set())
        c = batcher.submit(_ids(lm, texts["C"]), cfg_long)
        assert started.wait(30)
        d = batcher.submit(_ids(lm, texts["D"]), cfg_long)
        assert not b.done  # D joined a running batch
        got = {k: r.result(60) for k, r in zip("ABCD", (a, b, c, d))}
        assert batcher.stats()["free_slots"] == 3 and batcher.stats()["kv_tokens_used"] == 0
    assert len(got["A"].token_ids) == 5 and min(len(got[k].token_ids) for k in "BCD") > 5
    for key, done in got.items():
        assert done.token_ids == _alone(lm, texts[key], cfg_short if key == "A" else cfg_long).token_ids, key


def test_cancel_frees_the_slot_and_a_waiting_request_can_be_cancelled(lm):
    with ContinuousBatcher(lm, BatcherConfig(max_batch=1, slot_tokens=256, max_waiting=4)) as batcher:
        first = threading.Event()
        long = batcher.submit(_ids(lm, "The cat sees"), _cfg(240), on_text=lambda _: first.set())
        waiting = batcher.submit(_ids(lm, "hi there"), _cfg(8))
        waiting.cancel()
        assert first.wait(30)
        long.cancel()
        assert long.result(30) is not None and long.finish_reason == "cancelled"
        assert len(long.completion.token_ids) < 240
        assert waiting.result(30).token_ids == [] and waiting.finish_reason == "cancelled"
        after = batcher.submit(_ids(lm, "a small dog"), _cfg(8))  # the slot is free again
        assert after.result(30).token_ids == _alone(lm, "a small dog", _cfg(8)).token_ids
        # a caller's event cancels too, and a text callback that raises (a client gone) cancels its request
        gone = threading.Event()
        gone.set()
        assert batcher.submit(_ids(lm, "hi"), _cfg(8), cancel=gone).result(30).token_ids == []

        def boom(_):
            raise ConnectionError("client went away")

        broken = batcher.submit(_ids(lm, "The cat sees"), _cfg(50), on_text=boom)
        broken.result(30)
        assert broken.finish_reason == "cancelled"
        assert batcher.stats()["free_slots"] == 1


def test_admission_refuses_when_full_and_bounds_each_request_by_its_slot(lm):
    with ContinuousBatcher(lm, BatcherConfig(max_batch=1, slot_tokens=32, max_waiting=0)) as batcher:
        ids = _ids(lm, "The cat sees")
        busy = batcher.submit(ids, _cfg(100))  # clamped to the slot: 32 - len(prompt) new tokens at most
        with pytest.raises(BatcherFull) as full:
            batcher.submit(ids, _cfg(4))
        assert full.value.retry_after > 0 and "busy" in str(full.value)
        done = busy.result(30)
        assert busy.max_new == 32 - len(ids)
        assert len(done.token_ids) <= busy.max_new
        assert done.stopped_at_eos or busy.finish_reason == "length"
        with pytest.raises(PromptTooLong) as long:
            batcher.submit(list(range(5, 40)), _cfg(4))
        assert long.value.limit == 31 and isinstance(long.value, SlmError)
        with pytest.raises(SlmError, match="empty"):
            batcher.submit([], _cfg(4))
    with pytest.raises(SlmError, match="closed"):
        batcher.submit(ids, _cfg(4))
    with pytest.raises(SlmError, match="context"):
        ContinuousBatcher(lm, BatcherConfig(slot_tokens=100_000))


def test_stop_strings_end_the_reply_before_them_and_streams_agree(lm):
    want = _alone(lm, "the old man walks to", _cfg(24)).text
    assert len(want) > 12
    stop = want[8:12]
    cut = want.find(stop)
    with ContinuousBatcher(lm, BatcherConfig(max_batch=2, slot_tokens=64)) as batcher:
        pieces: list[str] = []
        request = batcher.submit(_ids(lm, "the old man walks to"), _cfg(24), stop=[stop, "never seen"],
                                 on_text=pieces.append)  # fmt: skip
        streamed = "".join(request.stream())
        done = request.result(30)
    assert done.text == want[:cut] == streamed == "".join(pieces)
    assert request.finish_reason == "stop" and not done.stopped_at_eos


def test_seeded_sampling_and_constraints_equal_one_by_one(lm):
    sampled = _cfg(16, temperature=0.9, top_p=0.9, seed=7, repetition_penalty=1.2)
    choice = Constraint.choice(["yes please", "no thanks"])
    with ContinuousBatcher(lm, BatcherConfig(max_batch=4, slot_tokens=64)) as batcher:
        a = batcher.submit(_ids(lm, "The cat sees"), sampled)
        b = batcher.submit(_ids(lm, "a small dog"), _cfg(16), constraint=choice)
        c = batcher.submit(_ids(lm, "hi there"), _cfg(16))  # greedy beside them
        got = [r.result(60) for r in (a, b, c)]
    assert got[0].token_ids == _alone(lm, "The cat sees", sampled).token_ids
    assert got[1].text == _alone(lm, "a small dog", _cfg(16), choice).text
    assert got[1].text in ("yes please", "no thanks") and got[1].constraint_satisfied
    assert got[2].token_ids == _alone(lm, "hi there", _cfg(16)).token_ids


def test_only_the_ort_backend(tiny_model_dir):
    with pytest.raises(SlmError, match="ort backend"):
        ContinuousBatcher(engines.open_lm(str(tiny_model_dir), "torch"))


def test_a_shared_prefix_is_reused_not_recomputed_and_gives_the_same_replies(lm):
    system = "The teacher reads a long book in the evening. The river follows the green field near the sea. "
    texts = [system + "the cat sees", system + "a small dog finds", system + "hi"]
    cfg = _cfg(12)
    with ContinuousBatcher(lm, BatcherConfig(max_batch=3, slot_tokens=96, prefill_chunk=8)) as batcher:
        requests = [batcher.submit(_ids(lm, t), cfg) for t in texts]
        got = [r.result(60).token_ids for r in requests]
        stats = batcher.stats()
    shared = len(_ids(lm, system))
    assert requests[0].cached_tokens == 0
    assert all(shared - 2 <= r.cached_tokens < len(r.prompt_ids) for r in requests[1:])
    assert stats["prefix_hits"] == 2 and 0 < stats["prefix_cache_tokens"] <= 2048
    assert got == [_alone(lm, t, cfg).token_ids for t in texts]
    with ContinuousBatcher(lm, BatcherConfig(max_batch=3, slot_tokens=96, prefix_cache_tokens=0)) as plain:
        assert [plain.submit(_ids(lm, t), cfg).result(60).token_ids for t in texts] == got
        assert plain.stats()["prefix_hits"] == 0
    # a budget smaller than a prompt keeps nothing
    with ContinuousBatcher(lm, BatcherConfig(max_batch=1, slot_tokens=96, prefix_cache_tokens=8)) as small:
        small.generate(_ids(lm, texts[0]), cfg)
        assert small.stats()["prefix_cache_tokens"] == 0


def test_an_engine_failure_ends_the_running_requests_not_the_batcher_and_close_cancels(lm, monkeypatch):
    batcher = ContinuousBatcher(lm, BatcherConfig(max_batch=2, slot_tokens=64))
    real = batcher._run
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("ONNX Runtime said no")
        return real(*args, **kwargs)

    monkeypatch.setattr(batcher, "_run", flaky)
    failed = batcher.submit(_ids(lm, "The cat sees"), _cfg(20))
    with pytest.raises(SlmError, match="generation failed: ONNX Runtime said no"):
        failed.result(30)
    assert failed.finish_reason == "error"
    fine = batcher.submit(_ids(lm, "a small dog"), _cfg(6))
    assert fine.result(30).token_ids == _alone(lm, "a small dog", _cfg(6)).token_ids
    assert "".join(fine.stream()) == fine.completion.text  # a finished request still streams its pieces
    # close: what is running or waiting ends "cancelled"
    slow = threading.Event()
    first = batcher.submit(_ids(lm, "The cat sees"), _cfg(60), on_text=lambda _: slow.wait(0.05))
    queued = [batcher.submit(_ids(lm, "hi"), _cfg(60)) for _ in range(3)]
    batcher.close()
    assert {r.finish_reason for r in [first, *queued]} <= {"cancelled", "stop", "length"}
    assert queued[-1].finish_reason == "cancelled"


def test_a_decoder_the_batcher_cannot_drive_is_refused_named(lm, tmp_path):
    import json

    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    pos = helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "s"])
    graph = helper.make_graph(
        [helper.make_node("Add", ["input_ids", "position_ids"], ["logits"])], "g", [ids, pos], [out]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "model.onnx")
    decoder = {"num_hidden_layers": 1, "num_key_value_heads": 1, "head_size": 8}
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": decoder}}))
    other = engines.LM(
        "ort", "fp32", lm.tokenizer, lm.eos, 512, lambda: None, info={"model_dir": str(tmp_path)}
    )
    with pytest.raises(SlmError, match="no GroupQueryAttention"):
        ContinuousBatcher(other, BatcherConfig(slot_tokens=64))


def test_many_clients_at_once_with_cancels_and_refusals_leave_nothing_behind(lm):
    import random

    texts = [
        "The cat sees",
        "a small dog",
        "hi there",
        "the old man walks to",
        "our team builds",
        "my friend",
    ]
    want = {t: _alone(lm, t, _cfg(10)).token_ids for t in texts}
    outcomes: list[tuple[str, object]] = []
    lock = threading.Lock()
    config = BatcherConfig(
        max_batch=3, slot_tokens=48, max_waiting=3, prefill_chunk=4, prefix_cache_tokens=64
    )
    with ContinuousBatcher(lm, config) as batcher:

        def client(i: int) -> None:
            rng = random.Random(i)
            text = texts[i % len(texts)]
            try:
                request = batcher.submit(_ids(lm, text), _cfg(10))
            except BatcherFull as full:
                with lock:
                    outcomes.append(("refused", full.retry_after))
                return
            if rng.random() < 0.3:
                request.cancel()
            done = request.result(60)
            with lock:
                outcomes.append((request.finish_reason, (text, done.token_ids)))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = batcher.stats()
    assert len(outcomes) == 16
    assert stats["decoding"] == stats["prefilling"] == stats["waiting"] == stats["kv_tokens_used"] == 0
    assert stats["prefix_cache_tokens"] <= 64 and stats["prefix_cache_bytes"] > 0
    finished = [v for reason, v in outcomes if reason in ("stop", "length")]
    assert finished and all(ids == want[text] for text, ids in finished)
    assert all(v > 0 for reason, v in outcomes if reason == "refused")
    assert {reason for reason, _ in outcomes} <= {"stop", "length", "cancelled", "refused"}


def test_a_callback_that_raises_cancels_its_own_request_only(lm):
    def gone(_):
        raise BrokenPipeError("client closed the connection")

    with ContinuousBatcher(lm, BatcherConfig(max_batch=2, slot_tokens=64)) as batcher:
        fine = batcher.submit(_ids(lm, "the old man walks to"), _cfg(20))
        broken = batcher.submit(_ids(lm, "a small dog"), _cfg(20), stop=["zzz"], on_text=gone)
        assert fine.result(30).token_ids == _alone(lm, "the old man walks to", _cfg(20)).token_ids
        assert broken.result(30) is not None and broken.finish_reason == "cancelled"
        assert fine.finish_reason in ("stop", "length")


def test_prefill_never_computes_a_prompt_position_alone_after_the_first_chunk(lm, monkeypatch):
    # GroupQueryAttention computes a one-token step on its decode path, whose numbers differ from the same
    # position in a multi-token prefill (SmolLM2 int8: greedy replies diverged); chunks of 2+ tokens are exact
    calls: list[tuple[int, int, int | None]] = []
    config = BatcherConfig(max_batch=1, slot_tokens=64, prefill_chunk=4, prefix_cache_tokens=256)
    with ContinuousBatcher(lm, config) as batcher:
        real = batcher._run

        def spy(lo, hi, ids, lengths, width=None):
            calls.append((ids.shape[1], lengths[0], width))
            return real(lo, hi, ids, lengths, width)

        monkeypatch.setattr(batcher, "_run", spy)
        for text in ["the cat sees the red house", "Every student reads a long book", "hi"]:
            ids = _ids(lm, text)
            for again in (False, True):  # the second time, the prompt comes from the prefix cache
                calls.clear()
                request = batcher.submit(ids, _cfg(3))
                done = request.result(30)
                assert done.token_ids == _alone(lm, text, _cfg(3)).token_ids
                prefill, seen = [], request.cached_tokens
                for seq, length, width in calls:
                    if seen >= len(ids):
                        break
                    assert length == seen
                    prefill.append((seq, width))
                    seen += seq
                assert seen == len(ids)
                assert all(seq >= 2 for seq, _ in prefill[1:]), (len(ids), prefill)
                assert (request.cached_tokens > 0) == (again and len(ids) >= 6)
                assert (prefill[0][1] == prefill[0][0]) == (
                    request.cached_tokens == 0
                )  # empty slot: first-prompt
