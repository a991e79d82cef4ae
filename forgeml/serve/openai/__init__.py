"""OpenAI-compatible completions and chat for language models, and their generation scheduler."""
