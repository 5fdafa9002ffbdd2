"""The ``lamed`` command.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args)``;
it is imported only when invoked, so ``lamed --help`` stays fast (no torch import).
``lamed prepare`` additionally discovers dataset preparers registered under the
``lamed.preparers`` entry-point group (the ``Data/`` package registers its own there), so the
library never imports ``Data`` directly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("LaMed.commands.prepare", "write data in the prepared format (phantoms, volumes, public datasets)"),
    "demo": ("LaMed.commands.demo", "run the end-to-end demo on synthetic phantoms"),
    "train": ("LaMed.commands.train", "train a model from a recipe YAML"),
    "merge-lora": ("LaMed.commands.merge_lora", "merge LoRA weights into a plain checkpoint"),
    "predict": ("LaMed.commands.predict", "run a model on a volume: masks (and later text)"),
    "download": ("LaMed.commands.download", "download a public dataset from the Hugging Face Hub"),
    "import": ("LaMed.commands.import_ckpt", "convert a published checkpoint into LaMed's format"),
}


def _add_command(sub, name: str, module: str, help_text: str, load: bool):
    parser = sub.add_parser(name, help=help_text, description=help_text)
    if load:
        mod = importlib.import_module(module)
        mod.add_arguments(parser)
        parser.set_defaults(_run=mod.run)
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only the module of ``command`` (if given) is imported."""
    from LaMed import __version__

    parser = argparse.ArgumentParser(prog="lamed", description="LaMed: 3D medical vision-language models")
    parser.add_argument("--version", action="version", version=f"lamed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        _add_command(sub, name, module, help_text, load=(name == command))
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (not the one of its creation)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass

    def emit(self, record):
        # `lamed train` configures the root logger (logging.basicConfig): it prints LaMed's records
        # then, and printing them here too would show every warning twice.
        if any(type(h) is logging.StreamHandler for h in logging.getLogger().handlers):
            return
        super().emit(record)


def _show_warnings() -> None:
    """LaMed's warnings (e.g. a --preset other than the model's own) reach the terminal as one line each."""
    logger = logging.getLogger("LaMed")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("lamed: %(levelname)s: %(message)s"))
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _show_warnings()
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    from LaMed.utils.atomic import OutputError

    try:
        result = args._run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError, OutputError) as exc:
        # Errors raised on purpose carry a readable message naming the file / field; no traceback.
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"lamed {args.command}: error: {msg}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
