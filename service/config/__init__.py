"""The config file: its reader (typed access, env.NAME), the governance sections (virtual keys, rate
limits, the store) and the file's schema and parsing (file). Imports only the domain."""
