"""The use cases: cancel one batch (cancel), cancel many (bulk), wait until terminal (waiting), who
the caller is (auth) and a call's per-request context (context)."""
