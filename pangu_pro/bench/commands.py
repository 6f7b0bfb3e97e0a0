"""CLI commands of the bench stage."""


def register(subparsers) -> None:
    """Add this stage's commands (filled in by its issue)."""
