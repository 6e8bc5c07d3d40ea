"""Text generation from the checkpoints this toolkit writes: the request rules (``api``), incremental
decoding with a key/value cache and sampling, the REST server of Megatron-LM's API and its client."""
