"""The domain: the types a cancel is about (model) and the one error hierarchy (errors). Imports no
grpc and nothing else of the service."""
