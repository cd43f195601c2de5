"""Text generation: tokenizer, sampler, incremental detokenizer, stop strings, KV-cache loop, scheduler."""
