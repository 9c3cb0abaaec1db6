"""`slm rightsize`: the smallest model that meets the target, per family.

configs         RightsizeConfig, RightsizeGenConfig (torch-free; the CLI's options)
classification  the prune / distill / int8 ladder of a trained classifier
generation      the ladder of causal LMs: prompted (zero- and few-shot) and fine-tuned rungs
plots           the Pareto plot of quality against latency and size
"""
