"""`tunelab export`: merged safetensors, GGUF and adapters, each checked against the evaluated model."""
