"""CLI commands of the tokenizer stage."""


def register(subparsers) -> None:
    """Add this stage's commands (filled in by its issue)."""
