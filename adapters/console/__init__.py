"""The console chat: the embedded default adapter, for a terminal or a pipe."""

from adapters.console.app import run_console
from adapters.console.render import render_text

__all__ = ["render_text", "run_console"]
