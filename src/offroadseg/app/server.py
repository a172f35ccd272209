"""Start the app: models first (so a bad checkpoint fails before any server), then the page."""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from offroadseg.app.service import AppLimits, ModelSet
from offroadseg.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"  # local only unless --host says otherwise
DEFAULT_PORT = 7860


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the OS says is free on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host`` (a free one for 0).

    Raises:
        ConfigError: the port is taken, or the host is not an address of this machine.
    """
    if port == 0:
        return free_port(host)
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a port number; fix: give 1..65535, or 0 for any free port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use (another app, or an earlier 'offroadseg app'); "
                    f"fix: pick another with --port {port + 1}, or --port 0 for any free port"
                ) from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ConfigError(
                    f"port {port} on {host} needs privileges to bind; fix: pick one above 1023, e.g. --port 7860"
                ) from None
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); fix: use --host 127.0.0.1, or an address "
                f"of this machine"
            ) from None
    return port


@dataclass
class RunningApp:
    """A launched app: its address, and how to stop it."""

    url: str
    host: str
    port: int
    page: object  # gr.Blocks
    ui: object  # AppUI

    def close(self) -> None:
        self.page.close()  # type: ignore[attr-defined]
        self.ui.close()  # type: ignore[attr-defined]

    def block(self) -> None:
        """Serve until interrupted."""
        self.page.block_thread()  # type: ignore[attr-defined]


def import_gradio():
    """Gradio, or a one-line fix when the ``[app]`` extra is missing."""
    try:
        import gradio
    except ImportError:
        raise ConfigError(
            "the app needs Gradio, which is not installed; fix: pip install 'offroadseg[app]'"
        ) from None
    return gradio


def start_app(
    models: ModelSet,
    *,
    limits: AppLimits | None = None,
    data: str | Path | None = None,
    split: str = "val",
    scores: str | Path | None = None,
    seed: int = 0,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
) -> RunningApp:
    """Build the page for loaded models and serve it in a background thread.

    Raises:
        ConfigError: Gradio is missing, or the port cannot be used.
        DataError: ``--data``'s split or the scores file is bad.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the app never phones home
    import_gradio()
    from offroadseg.app.browse import SplitBrowser
    from offroadseg.app.ui import AppUI

    limits = limits or AppLimits()
    browser = None
    if data is not None:
        browser = SplitBrowser(
            models.data_config,
            data,
            split,
            models.taxonomy,
            unknown=models.unknown,
            seed=seed,
            scores_csv=scores,
        )
    elif scores is not None:
        raise ConfigError("--scores ranks the images of --data; fix: give --data ROOT with it")
    port = check_port(host, port)
    ui = AppUI(models, limits, browser)
    page = ui.build()
    page.queue(default_concurrency_limit=limits.concurrency)
    try:
        _, url, _ = page.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            share=False,
            ssr_mode=False,
            show_error=True,
            max_file_size=int(limits.max_upload_mb * 2**20),
            allowed_paths=[],
            footer_links=["api"],
        )
    except OSError as exc:  # lost a race for the port between the check and the bind
        ui.close()
        raise ConfigError(
            f"cannot serve on {host}:{port} ({exc}); fix: pick another with --port N, or --port 0"
        ) from None
    return RunningApp(url=url, host=host, port=port, page=page, ui=ui)
