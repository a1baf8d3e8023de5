"""Model loading (local dir, GGUF, bundled default) and chat-template encoding."""
