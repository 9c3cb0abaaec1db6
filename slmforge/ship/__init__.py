"""From a trained model to what runs in production, measured: evaluation, export, quantisation, right-sizing.

evaluate     `slm eval`: its config, and the router to lm/ or clf/ evaluation by task and model
export       `slm export --format onnx|gguf`, verified against the source model
quantize     `slm quantize --scheme int8|int4`: encoders (ORT dynamic int8), causal LMs (ORT GenAI), measured
rightsize/   `slm rightsize`: configs, classification (prune/int8 ladder), generation (prompted and tuned
             rungs), plots (the Pareto plot both share)
"""
