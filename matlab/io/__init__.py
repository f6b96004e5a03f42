"""Checkpoint I/O: reading safetensors checkpoints by byte range, writing shards as a stream."""
