"""The API's routes, one APIRouter per family; each handler finds the app's `Door` at `app.state.door`.

steps.py the steps every handler shares (the key and audit record of a request, the model it names, the
guard over its texts, waiting within its deadline); health.py /healthz, /readyz, /metrics; models.py
/v1/models; generation.py chat and text completions (streamed or not); encoders.py embeddings and
classification; rag.py /v1/rag/ask and /v1/pipelines/{name}.
"""
