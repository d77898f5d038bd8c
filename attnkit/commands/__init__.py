"""Subcommands beyond train and sample; see ``COMMAND_MODULES`` in attnkit/cli.py."""
