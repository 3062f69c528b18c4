"""The speakerzoo subcommands that are not LightningCLI (top floor, beside ``cli.py``).

Each module has ``main(argv) -> int`` and ``build_parser()``; :mod:`speakerzoo.cli`
dispatches ``speakerzoo <name> ...`` to it.
"""
