"""Fine-tuning jobs: the store (SQLite, beside the keys), uploaded files, the worker, OpenAI-shaped routes."""
