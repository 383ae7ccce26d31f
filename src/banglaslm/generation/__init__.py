"""Generation: sampling, the KV-cache engine, streaming, continuous batching, the C decode step and the chat template."""
