"""What the use cases stand on: the provider adapters and their HTTP executor (providers/), the
rate-limit stores (limits), breaker and admission (resilience), metrics, logs and traces
(observability)."""
