"""slm synth with a local teacher: a tiny model through open_lm (ONNX Runtime GenAI), the prefix-cached
decoder giving `complete`'s own tokens, and a whole run that finishes and counts every reply."""

from __future__ import annotations

import pytest

from slmforge.synth.configs import SynthConfig
from slmforge.synth.run import synth
from tests.synth.conftest import rows


@pytest.mark.recipe
def test_a_tiny_local_teacher_runs_the_whole_workflow(tiny_model_dir, dataset, tmp_path):
    from slmforge.infer.configs import GenerateConfig
    from slmforge.infer.generate import complete, prompt_ids
    from slmforge.synth.teacher import LocalTeacher, PrefixDecoder

    teacher = LocalTeacher(str(tiny_model_dir), "auto", "int8", 1, 4)
    assert teacher.lm.backend == "ort"
    system = {"role": "system", "content": "the cat sees the red house every day. " * 8}
    chats = [[system, {"role": "user", "content": "a small dog reads a long book"}],
             [system, {"role": "user", "content": "the teacher builds the green field"}]]  # fmt: skip
    prompts = [prompt_ids(teacher.lm.tokenizer, c) for c in chats]
    plain = [complete(teacher.lm.step(), teacher.lm.tokenizer, p, GenerateConfig(model="t", max_new_tokens=12),
                      teacher.lm.eos).token_ids for p in prompts]  # fmt: skip
    cached = PrefixDecoder(teacher.lm)
    tokenizer = teacher.lm.tokenizer
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)  # noqa: E731
    for p, want in [*zip(prompts, plain), (prompts[0], plain[0])]:  # the second and third reuse a prefix
        assert cached.run(p, 12).text == decode(want)

    out = tmp_path / "qa.jsonl"
    cfg = SynthConfig(source=str(dataset), out=str(out), teacher=str(tiny_model_dir), n=3, threads=1,
                      max_new_tokens=16, batch_size=2)  # fmt: skip
    report = synth(cfg, progress=False)
    c = report["counts"]
    assert c["generated"] == 3  # the qa prompt is longer than the tiny model's 512 positions: truncated
    assert c["kept"] + sum(v for k, v in c.items() if k.startswith("dropped_")) == 3
    assert len(rows(out)) == report["rows"] == c["kept"]
    assert not (tmp_path / "qa.jsonl.partial").exists() and report["seconds"]["load_teacher"] > 0
