"""``magicapture-studio``: start the studio in the browser.

Start-up stays fast: Gradio loads here, torch only when the device probe or a job needs it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

AUTH_ENV = "MAGICAPTURE_AUTH"
SHARE_HELP = (
    "--share puts the studio on a public link, so it needs a login. Give one with "
    "--auth USER:PASSWORD, or set MAGICAPTURE_AUTH=USER:PASSWORD, or pass --auth generate to make a "
    "random password that is printed here."
)
MIN_SHARE_PASSWORD = 12
"""--share puts the login on the internet: shorter passwords are refused (``generate`` makes 16 characters)."""


class AuthError(ValueError):
    """The login given on the command line or in the environment is unusable."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="magicapture-studio",
        description="MagiCapture Studio: studio portraits of one person in a reference style.",
    )
    parser.add_argument(
        "--demo",
        nargs="?",
        const="sd1",
        choices=("sd1", "sdxl"),
        default=None,
        metavar="FAMILY",
        help="tiny random models: try the whole flow on a CPU in minutes; --demo sdxl trains and paints "
        "with the tiny SDXL (default: the tiny SD 1.x; Settings switches between them)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port to serve on (default: the first free one from 7860)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where projects live (sets MAGICAPTURE_HOME)"
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument(
        "--listen",
        action="store_true",
        help="serve on all network interfaces (your LAN), not only this computer",
    )
    parser.add_argument(
        "--share", action="store_true", help="also serve on a temporary public link (needs --auth)"
    )
    parser.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASSWORD",
        help=f"require this login ('generate' makes one); or set {AUTH_ENV}",
    )
    return parser.parse_args(argv)


def resolve_auth(
    value: str | None, environ: dict[str, str] | None = None
) -> tuple[tuple[str, str] | None, bool]:
    """The login from ``--auth`` or the environment, and whether it was generated (so must be printed)."""
    environ = os.environ if environ is None else environ
    value = value if value is not None else environ.get(AUTH_ENV)
    if not value:
        return None, False
    if value == "generate":
        return ("magicapture", secrets.token_urlsafe(12)), True
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        raise AuthError(f"The login must look like USER:PASSWORD (got {value!r}); or use --auth generate.")
    return (user, password), False


def configure_environment(data_dir: Path | None, demo: bool) -> Path:
    """Set the data root and keep Gradio's files inside it; returns the data root.

    Must run before Gradio is imported: Gradio reads its cache folders at import time.
    """
    from engine.store import HOME_ENV, data_root

    if data_dir is not None:
        os.environ[HOME_ENV] = str(data_dir.expanduser().resolve())
    elif demo:
        os.environ[HOME_ENV] = str(data_root() / "demo")
    root = data_root()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(root / ".cache" / "gradio")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / ".cache" / "gradio-examples")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        auth, generated = resolve_auth(args.auth)
    except AuthError as error:
        print(f"magicapture-studio: {error}", file=sys.stderr)
        return 2
    if args.share and auth is None:
        print(f"magicapture-studio: {SHARE_HELP}", file=sys.stderr)
        return 2
    if args.share and len(auth[1]) < MIN_SHARE_PASSWORD:
        print(
            f"magicapture-studio: --share puts the login on the internet, so its password needs at least "
            f"{MIN_SHARE_PASSWORD} characters (this one has {len(auth[1])}). Pass --auth generate to make a "
            "random one that is printed here, or choose a longer one.",
            file=sys.stderr,
        )
        return 2
    root = configure_environment(args.data_dir, args.demo is not None)
    print(f"Projects live in {root / 'projects'}", flush=True)
    if generated:
        print(f"Login: user {auth[0]!r}, password {auth[1]!r}", flush=True)
    if args.listen:
        print(
            "Warning: --listen serves the studio to every computer on your network"
            + ("." if auth else " and anyone there can use it; add --auth USER:PASSWORD to require a login."),
            flush=True,
        )

    demo_kit = None
    if args.demo is not None:
        from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit

        label = "SDXL" if args.demo == "sdxl" else "SD 1.x"
        print(f"Demo mode ({label}): preparing the tiny random models…", flush=True)
        demo_kit = build_demo_kit(default_kit_folder())
        use_demo_kit(demo_kit)

    from engine.store import ProjectStore
    from studio.app import LaunchOptions, Studio, launch

    studio = Studio(ProjectStore(root), demo=demo_kit, demo_family=args.demo or "sd1")
    options = LaunchOptions(
        port=args.port, share=args.share, listen=args.listen, auth=auth, open_browser=not args.no_browser
    )
    launch(studio, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
