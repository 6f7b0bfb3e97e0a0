"""CLI commands of the convert stage."""


def register(subparsers) -> None:
    """Add this stage's commands (filled in by its issue)."""
