"""Generation: token-level sampling with a KV cache, decoders, and text in / text out."""
