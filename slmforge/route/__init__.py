"""route/: pipelines that chain small models (pipeline.py: classify -> route -> RAG / template / generation / cascade / human)."""
