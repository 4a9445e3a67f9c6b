"""The gRPC edge: server wiring (server), strict request reading (wire), the servicer (api), domain
to proto (converters), the drop-in SDK shapes (surfaces), REST path rules (routes), the error
envelope (envelope) and the HTTP -> gRPC status mapping (status)."""
