"""The ``magicapture`` argument parser: every subcommand, its options and the command it runs."""

from __future__ import annotations

import argparse
from typing import NoReturn

import engine.cli.commands as commands
from engine.cli.demo_project import cmd_demo_project
from engine.presets import PRESETS

DESCRIPTION = "The ``magicapture`` command: the studio's work, headless."
EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}; see {self.prog} --help.\n")


def _count(text: str) -> int:
    """A whole number of at least 1 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a whole number of at least 1 (got {text!r})")
    return value


def _commercial_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--commercial",
        action="store_true",
        help="use only models whose licence allows commercial use (YuNet and SFace for faces, GFPGAN)",
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the person and style tokens and the LoRA")
    p.add_argument("project")
    p.add_argument("--preset", default="released", help="released (default), paper or fast")
    p.add_argument(
        "--base",
        help="base model, SD 1.x or SDXL (its family is read from the files): hub id, diffusers folder "
        "or .safetensors file; default: --family's default hub id",
    )
    p.add_argument(
        "--family",
        choices=("sd1", "sdxl"),
        help="sd1 (default) or sdxl: the family of the default base model and of --demo's tiny model; "
        "with --base, a check that the base is of this family",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="train the demo kit's tiny random model of --family, offline on the CPU, in a few steps",
    )
    p.add_argument(
        "--profile", help="VRAM profile: auto, cpu, 6gb, 8gb, 12gb or 24gb (SDXL: 12gb, 16gb or 24gb)"
    )
    p.add_argument("--resume", action="store_true", help="continue the last stopped or crashed run")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any training setting"
    )
    _commercial_flag(p)
    p.set_defaults(handler=commands.cmd_train)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="make portraits from a trained project")
    p.add_argument("project")
    p.add_argument("--run", help="training run (default: the latest finished)")
    p.add_argument("--prompt-extra", default="", help='extra words, e.g. "wearing a suit"')
    p.add_argument("--n", type=_count, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="euler_a", choices=("euler_a", "dpmpp_2m_karras", "ddim"))
    p.add_argument("--steps", type=_count, default=50)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--restore", choices=("gfpgan", "codeformer"))
    p.add_argument("--upscale", type=int, choices=(1, 2, 4), default=1)
    p.add_argument(
        "--preset", choices=tuple(PRESETS), help="an output frame (portrait-832x1216 etc.: SDXL sizes)"
    )
    p.add_argument("--demo", action="store_true", help="with the demo kit's tiny face models, offline")
    _commercial_flag(p)
    p.set_defaults(handler=commands.cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="magicapture", description=DESCRIPTION)
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle (.ckpt/.bin) base models; they are read with weights_only",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("projects", help="list, create, delete or repair projects")
    p.add_argument("action", choices=("list", "create", "delete", "repair"), nargs="?", default="list")
    p.add_argument("name", nargs="?")
    p.set_defaults(handler=commands.cmd_projects)

    p = sub.add_parser("prepare", help="check and add photos to a project (created if new)")
    p.add_argument("project")
    p.add_argument("photos", nargs="+")
    p.add_argument(
        "--role", choices=("source", "reference"), required=True, help="selfies or style references"
    )
    _commercial_flag(p)
    p.set_defaults(handler=commands.cmd_prepare)

    _add_train(sub)
    _add_generate(sub)

    p = sub.add_parser("export", help="export the LoRA and embeddings")
    p.add_argument("project")
    p.add_argument("--run")
    p.add_argument("--format", choices=("a1111", "diffusers"), default="a1111")
    p.set_defaults(handler=commands.cmd_export)

    p = sub.add_parser("eval", help="CSIM, style and aesthetic scores of a project's outputs")
    p.add_argument("project")
    p.add_argument("--runs", nargs="*")
    _commercial_flag(p)
    p.set_defaults(handler=commands.cmd_eval)

    p = sub.add_parser("models", help="list, download or import model weights")
    p.add_argument("action", choices=("list", "download", "import"))
    p.add_argument("names", nargs="*", help="asset names (import: NAME PATH)")
    p.set_defaults(handler=commands.cmd_models)

    p = sub.add_parser("demo-models", help="build the tiny offline model kit")
    p.add_argument("folder")
    p.set_defaults(handler=commands.cmd_demo_models)

    p = sub.add_parser(
        "demo-project", help="a project of sample selfies and style references, for the tiny demo models"
    )
    p.add_argument("project")
    p.add_argument("--kit", help="the tiny model kit's folder (default: built once in the user cache)")
    p.add_argument("--family", choices=("sd1", "sdxl"), help="the tiny model the printed commands train on")
    p.set_defaults(handler=cmd_demo_project)
    return parser
