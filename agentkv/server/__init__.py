"""`agentkv serve`: OpenAI- and Anthropic-compatible HTTP serving over the engine, for agents (tool calls,
prompt-cache accounting, tenant isolation, Prometheus metrics)."""
