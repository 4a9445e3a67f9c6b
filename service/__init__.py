"""batchgate: cancel LLM batch jobs on any provider through one gRPC/REST API."""
