"""Provider adapters: one module per provider wire format, a shared HTTP executor and the catalog
that lists them (README.md here is the checklist for adding one)."""
