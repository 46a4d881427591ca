"""CLI sub-commands. Each module registers its commands on `xpaste.commands.app.app`."""
