"""Training: the recipe (engine), packing, packed attention, chunked loss, checkpoints, processes."""
