"""The running process: the config current at each call's start and its reloads (live)."""
