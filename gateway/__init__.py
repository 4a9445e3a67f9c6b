"""The Envoy edge: config rendering, descriptor build and the launcher (`python -m gateway.run`)."""
