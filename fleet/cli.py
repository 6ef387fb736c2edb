"""The `fleet` command: one entry point whose subcommands delegate to the room that owns the work."""
from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Serve thousands of unique PyTorch models on NVIDIA Triton."""


if __name__ == "__main__":
    main()
