"""Provider adapters: one module per provider wire format, a shared HTTP executor and a registry."""
