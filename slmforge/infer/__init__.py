"""infer: running causal LMs, and the artifacts they run from.

From the bottom up (each module imports only those above it in this list, and nothing outside core/):
- configs.py     GenerateConfig (torch-free, what `slm generate` / `slm chat` take)
- model_dirs.py  what a model reference is (catalog name, run dir, adapter, GGUF, converted dir) and how it loads
- onnx_graph.py  surgery on the ONNX graphs the ONNX Runtime GenAI model builder writes (and the split int4 head)
- gptq.py        GPTQ int4 weights for those graphs
- gguf.py        GGUF export and checks (llama.cpp)
- ort_build.py   build, verify and cache ONNX Runtime GenAI models
- engines.py     open_lm: one decode-step interface over torch, ONNX Runtime GenAI and llama.cpp
- constrain.py   Constraint (JSON schema, JSON object, regex, choice, Lark) and its per-row token mask (LLGuidance)
- generate.py    the decode loop: generate, chat, complete, complete_batch
- tool_use.py    how a chat template writes tool calls, the constraint that forces one, reading calls back
                 (it also uses slmforge.data.tool_calls, the tool schemas finetune checks rows against)
- batch_kv.py    continuous batching's ONNX Runtime session, graph check and prefix cache
- batcher.py     ContinuousBatcher: requests joining and leaving one running batch on the ort engine
"""
