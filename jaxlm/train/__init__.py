"""The training room: optimizer and schedule, step functions, sharding, the trainer loop, stopping rules,
checkpoints, multi-process setup, FLOPs and MFU. Uses the model and data rooms; talks to tracking through
`jaxlm.tracking.protocol.RunTracker`."""
