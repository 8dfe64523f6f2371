"""sockmesh bpf package."""
