"""The learned injection guard: its corpus (`dataset`, `indirect`), the model that scores (`model`) and its
training with tunelab's own engine (`train`). `serve` uses `model` only; `train` imports the training engine."""
