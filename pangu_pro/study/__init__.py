"""The paper's studies re-measured (`pangu-pro study NAME`): each arm an ordinary training config,
seeds, equal compute, and a verdict against the paper's finding (docs/studies.md)."""
