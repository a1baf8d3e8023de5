"""Training: the LoRA recipe, batching, losses."""
