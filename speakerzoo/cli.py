"""Command line entry point (placeholder until the CLI lands)."""


def main() -> None:  # pragma: no cover - replaced by the LightningCLI
    raise SystemExit("speakerzoo CLI not built yet")
