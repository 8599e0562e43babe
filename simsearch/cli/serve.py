"""``simsearch serve``: the collections kept warm behind HTTP, with a web page."""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from simsearch.cli.core import _errors, app
from simsearch.cli.options import _home_option
from simsearch.cli.render import out

STOPPED = "the server stopped; serving changes nothing, so nothing was lost"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, or a one-line error that says how to free or pick one."""
    from simsearch.errors import UsageError, option

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"cannot listen on '{host}': {exc.strerror}", remedy=f"pass an address to {option('host')}"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}", remedy=f"choose another port with {option('port')}"
        ) from None
    sock.set_inheritable(True)
    return sock


@app.command()
def serve(
    home: Path = _home_option(),
    name: list[str] | None = typer.Option(
        None, "--name", "-n", help="Serve only this collection under --home (repeat for several; default: all)."
    ),
    model: list[Path] | None = typer.Option(
        None, "--model", "-m", help="A model folder that POST /verify?model=FOLDER-NAME may use (repeatable)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (anything but loopback needs a token)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="SIMSEARCH_TOKEN",
        help="Every request but /health must carry it (Authorization: Bearer TOKEN); required off loopback.",
    ),
    max_upload_mb: int = typer.Option(32, "--max-upload-mb", min=1, help="Largest request body, in MiB."),
    gpu: bool = typer.Option(True, "--gpu/--no-gpu", help="Search on the GPU when FAISS sees one."),
    device: str = typer.Option("auto", "--device", help="Where to run the encoders: auto, cpu or cuda."),
) -> None:
    """Serve collections over HTTP: a JSON API (query, verify, embed, images) and a web page at /.

    Example: simsearch serve --home indexes --port 8000   (then open http://127.0.0.1:8000/)
    """
    with _errors(STOPPED):
        from simsearch.errors import UsageError, option

        if not is_loopback(host) and not token:
            raise UsageError(
                f"serving on {host} (not loopback) needs a token",
                remedy=f"pass {option('token')} or set SIMSEARCH_TOKEN, or keep the default {option('host')} 127.0.0.1",
            )
        sock = listen(host, port)
        with contextlib.closing(sock):
            import uvicorn

            from simsearch.service import create_app

            application = create_app(
                home,
                names=name or None,
                models=model or (),
                token=token,
                device=device,
                use_gpu=gpu,
                max_upload_bytes=max_upload_mb * 1024 * 1024,
            )
            served = application.state.service.collection_names()
            bound = sock.getsockname()[1]
            shown_host = f"[{host}]" if ":" in host else host
            out.print(
                f"Serving {len(served)} collection{'s' * (len(served) != 1)} ({', '.join(served) or 'none yet'}) "
                f"from {home} at http://{shown_host}:{bound}/ — Ctrl-C or SIGTERM stops it."
            )
            server = _server(uvicorn.Config(application, log_level="info", timeout_graceful_shutdown=10))
            server.run(sockets=[sock])
        out.print("Stopped serving.")


def _server(config: Any) -> Any:
    """uvicorn's server, stopping gracefully on Ctrl-C or SIGTERM and then returning (exit code 0), instead of
    raising the signal again once it has stopped (which would end the command as interrupted)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

    return Server(config)
