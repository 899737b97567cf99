"""`tunesmith ui`: the web UI (docs/ui.md)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  tunesmith ui                                     on http://127.0.0.1:7860, this machine only
  tunesmith ui --port 8080 --runs experiments
  tunesmith ui --host 0.0.0.0 --token SECRET       reachable from other machines, behind a login
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("ui", help="the web UI: build, plan, train and use runs in a browser",
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                              description="A Gradio page over the whole workflow. Runs it launches are processes "
                                          "of their own: closing the UI does not stop them.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; any other needs --token)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--token", default=None,
                   help="access token asked for at login (default: $TUNESMITH_UI_TOKEN); required beyond loopback")
    p.add_argument("--runs", default="runs", help="folder whose runs the Train tab lists (default runs)")
    p.add_argument("--config", default="configs/ui.yaml", help="config file the Build tab saves and loads")
    p.set_defaults(func=ui_command)


def ui_command(args) -> int:
    from rich.console import Console

    from ..errors import ConfigError
    from ..ui.access import access_token

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"must be from 1 to 65535, got {args.port}", where="--port")
    token = access_token(args.host, args.token)  # before gradio loads: a refused host fails at once
    from ..ui.app import serve

    console = Console(stderr=True)
    app, url = serve(host=args.host, port=args.port, token=token, runs_root=args.runs, config_path=args.config,
                     block=False)
    console.print(f"tunesmith ui on {url}" + ("  (login: any user name, the token as password)" if token else ""),
                  highlight=False)
    console.print("[dim]Ctrl+C stops the UI; runs it launched keep training[/]")
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
