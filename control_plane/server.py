"""Serves the control plane under waitress, a production WSGI server (no Flask dev server)."""
from __future__ import annotations

import logging
import signal

import click

from fleet.extras import needs_extra


@click.group(name="control-plane")
def control_plane() -> None:
    """Run the REST admin API (registry, placement, loads, load tests)."""


@control_plane.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--threads", type=int, default=8, show_default=True)
@needs_extra("torch")  # upload validation loads artifacts with torch (control_plane/validation.py)
def serve(host: str, port: int, threads: int) -> None:
    """Serve the API; settings come from FLEET_* variables (see control_plane/settings.py)."""
    from waitress.server import create_server

    from control_plane.app import create_app
    from control_plane.settings import Settings
    from control_plane.uploads import body_limit, channel_class

    settings = Settings.from_env()
    if settings.public_url is None:
        settings.public_url = f"http://{host}:{port}"
    app = create_app(settings)
    state = app.extensions["fleet"]
    # waitress refuses a body at or over max_request_body_size; Flask one over MAX_CONTENT_LENGTH: same limit
    server = create_server(app, host=host, port=port, threads=threads,
                           max_request_body_size=body_limit(state.settings) + 1)
    server.channel_class = channel_class(state.settings)  # its 413 is the API's JSON error
    logging.getLogger(__name__).info("control plane on http://%s:%d (docs /docs)", host, port)

    def shutdown(*_: object) -> None:
        state.reconciler.stop()
        state.leadership.stop()  # hand the reconciler to another replica now, not after a heartbeat
        state.validator.close()
        server.close()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shutdown)
    try:
        server.run()
    except KeyboardInterrupt:
        shutdown()
