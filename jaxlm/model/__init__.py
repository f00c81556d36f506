"""The model room: the CS336 transformer, its attention kernels, decoding with a KV cache, and weight I/O.
Imports nothing from jaxlm's train, tracking or command modules."""
