"""The console chat loop: a prompt on a terminal; one command per line, one reply each, when piped."""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path
from typing import TextIO

from adapters.console.render import render_text
from bot.core.messages import Image, Incoming
from bot.core.router import Router

PROMPT = "csbot> "


def _save_images(reply_images: list[Image], folder: Path) -> list[str]:
    paths = []
    for image in reply_images:
        path = folder / image.filename
        path.write_bytes(image.png)
        paths.append(str(path))
    return paths


def run_console(
    router: Router,
    as_email: str,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    chart_dir: Path | None = None,
) -> int:
    """Chat as the user `as_email`. Returns the exit code (0: input ended or `quit`). Charts are saved in
    `chart_dir`, or in a temporary folder removed when the chat ends."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty()
    if chart_dir is None:  # charts live as long as the session: the folder goes when the chat ends
        with tempfile.TemporaryDirectory(prefix="csbot-charts-") as temporary:
            return run_console(router, as_email, stdin=stdin, stdout=stdout, chart_dir=Path(temporary))
    folder = chart_dir
    # One conversation per console session: what "it" means does not carry over from an earlier session.
    session_id = f"session-{uuid.uuid4().hex[:12]}"
    if interactive:
        stdout.write("csbot console — type `help`, or `quit` to leave.\n")
    while True:
        if interactive:
            stdout.write(PROMPT)
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text in ("quit", "exit", "退出"):
            break
        if not interactive:
            stdout.write(f"{PROMPT}{text}\n")
        reply = router.handle(
            Incoming(platform="console", sender_id=as_email, text=text, is_direct=True, channel_id=session_id)
        )
        stdout.write(render_text(reply, _save_images(reply.images, folder)) + "\n\n")
        stdout.flush()
    return 0
