"""Mixup-Privacy Lab — the Gradio app (thin: all logic lives in ``mixdemo``).

    python app.py [--host 127.0.0.1] [--port 7860] [--server-only]

Host and port also come from ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``. Runs offline
(``HF_HUB_OFFLINE=1`` unless set): the models come from ``weights/`` (or ``$MIXDEMO_WEIGHTS_DIR``). Gradio's
cache is the app's own (``mixdemo.oneshot.app_cache_dir``, its user's alone, unless ``GRADIO_TEMP_DIR`` is set); at
start the app removes what lies there longer than ``mixdemo.ui.SESSION_TTL_S`` (left by a process that was killed:
another app running there keeps nothing that long).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # offline by default: weights come from weights/ (HF_HUB_OFFLINE=0 allows the Hub)

from mixdemo.launch import (check_port_variable, check_setting_variables, parse_app_args,  # noqa: E402  (no Gradio: before it)
                            server_only_from_env)
from mixdemo.oneshot import CacheDirError, app_cache_dir, make_private_dir, sweep_stale  # noqa: E402

if "GRADIO_TEMP_DIR" not in os.environ:  # the app's own cache (its user's alone), which only it sweeps
    try:
        os.environ["GRADIO_TEMP_DIR"] = str(make_private_dir(app_cache_dir()))
    except CacheDirError as exc:
        raise SystemExit(f"error: {exc}") from None

check_port_variable()  # Gradio reads GRADIO_SERVER_PORT when imported: a bad value would be its traceback
check_setting_variables()  # $MIXDEMO_PRECISION and the like: refused now, not at the first request

from mixdemo.ui import SESSION_TTL_S, build_demo, build_server_demo, launch_demo, warm_up  # noqa: E402

# the page served (also in a reload thread): the server alone when $MIXDEMO_SERVER_ONLY or (run as a script)
# --server-only asks for it, so that a server never builds the whole demo's page it does not serve (about 30 MB)
SERVER_ONLY = parse_app_args().server_only if __name__ == "__main__" else server_only_from_env()  # the option's default is the variable
demo = build_server_demo() if SERVER_ONLY else build_demo()


def main(argv: list[str] | None = None) -> None:
    """Parse host, port and --server-only, and launch."""
    args = parse_app_args(argv)
    sweep_stale(SESSION_TTL_S)  # what a killed process left (an upload it never read, say); a live app's is younger
    try:
        served = build_server_demo() if args.server_only and not SERVER_ONLY else demo
        # before listening, saying what it loads: the first requests wait for none of it
        warm_up(server_only=args.server_only, announce=lambda line: print(line, file=sys.stderr, flush=True))
        launch_demo(served, server_name=args.host, server_port=args.port)
    except OSError as exc:  # Gradio's "Cannot find empty port" (no strerror), or the system's own refusal
        why = exc.strerror or "the port is taken (another app?) or the host is not an address of this machine"
        raise SystemExit(f"error: the app could not listen on {args.host}:{args.port}: {why}; "
                         "pass another --port or --host.") from None


if __name__ == "__main__":
    main()
