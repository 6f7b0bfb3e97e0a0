"""inherit stage."""
