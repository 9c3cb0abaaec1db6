"""The ground floor every package stands on; loads no torch at import.

errors       SlmError: the one user-facing error (one line; the CLI exits 2, the server answers 4xx JSON)
fsutil       atomic files and directories (temp path + rename), sha256, the --overwrite check
paths        where slmforge keeps things ($SLMFORGE_HOME) and the manifest file name
workspace    the SQLite registry of datasets, tokenizers, runs, models and indexes (`slm ls`)
runtime      device (cuda when present), bf16 where it pays, threads capped at the free cores
distributed  torchrun plumbing: rank, world size, gloo on CPU, nccl on GPU
progress     rich progress bars with rate and ETA, `say`, `quiet_hf` for third-party noise
hub          `slm pull`: the offline model catalog (and hub ids for users with a network)
"""
