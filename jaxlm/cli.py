"""The `jaxlm` console script: `jaxlm <command> [args]` runs `python -m jaxlm.<command> [args]`."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "launch": ("jaxlm.launch", "train a model from a config"),
    "sweep": ("jaxlm.sweep", "run a grid of launches and report them"),
    "runs": ("jaxlm.runs", "list runs: status, progress, losses, ETA"),
    "compare": ("jaxlm.compare", "plot and tabulate runs side by side"),
    "generate": ("jaxlm.generate", "sample text from a trained run"),
    "export": ("jaxlm.export", "write a run's weights as safetensors"),
    "evaluate": ("jaxlm.evaluate", "a checkpoint's loss on every token of a file"),
    "bench": ("jaxlm.bench", "time the train step"),
    "data": ("jaxlm.data.__main__", "download and prepare corpora"),
}


def usage() -> str:
    lines = ["usage: jaxlm <command> [args]   (each command's --help has its own)", "", "commands:"]
    lines += [f"  {name:<10}{what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0)
    if argv[0] not in COMMANDS:
        print(f"error: unknown command '{argv[0]}' (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        sys.exit(2)
    from jaxlm.runtime import run_command

    command = importlib.import_module(COMMANDS[argv[0]][0])
    run_command(lambda: command.main(argv[1:]))


if __name__ == "__main__":
    main()
