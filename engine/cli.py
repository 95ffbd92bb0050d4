"""The ``magicapture`` command: the studio's work, headless.

Every subcommand is a thin call into the engine; heavy imports happen inside the handlers so that
``magicapture --help`` is instant. Under ``accelerate launch`` the ``train`` subcommand runs on
several processes (the trainer uses accelerate itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2


def _project(name: str):
    from engine.store import ProjectStore

    return ProjectStore().open(name)


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON where they parse, else as text."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes key=value (got {pair!r}).")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


def _licence_notice(commercial: bool, restore: str | None = None) -> None:
    """Say once, on stderr, which non-commercial weights this command uses and what replaces them."""
    from engine.preflight import licence_notice

    notice = licence_notice(commercial=commercial, restore=restore)
    if notice:
        print(f"Licence: {notice} (Pass --commercial.)", file=sys.stderr)


def _progress_printer() -> Callable[[Any], None]:
    """An event callback that draws a tqdm bar for steps and prints everything else once, on stderr.

    Stdout is left to the command's results (paths), so a script can read them. It also warns,
    once, when training steps suddenly take several times longer (a GPU spilling into system
    memory).
    """
    from tqdm import tqdm

    from engine import events, preflight

    state: dict[str, Any] = {"bar": None, "seconds": [], "last": None, "warned": False}

    def on_event(event: events.Event) -> None:
        bar = state["bar"]
        if isinstance(event, events.PhaseStarted):
            if bar is not None:
                bar.close()
            state["bar"] = tqdm(total=event.steps, desc=f"phase {event.phase}", unit="step", file=sys.stderr)
            state["seconds"], state["last"] = [], event.time
        elif isinstance(event, events.StepDone) and bar is not None:
            bar.update(event.step - bar.n)
            bar.set_postfix({k: f"{v:.4f}" for k, v in event.losses.items()}, refresh=False)
            state["seconds"].append(event.time - state["last"])
            state["last"] = event.time
            jump = preflight.step_time_jump(state["seconds"])
            if jump is not None and event.phase > 0 and not state["warned"]:
                state["warned"] = True
                tqdm.write(f"warning: {preflight.jump_warning(jump)}", file=sys.stderr)
        elif isinstance(event, events.Status):
            tqdm.write(event.message, file=sys.stderr)
        elif isinstance(event, events.PreviewSaved):
            tqdm.write(f"preview at step {event.global_step}: {', '.join(event.images)}", file=sys.stderr)
        elif isinstance(event, events.CheckpointSaved):
            tqdm.write(f"checkpoint saved: {event.path}", file=sys.stderr)
        elif isinstance(event, events.Finished):
            if bar is not None:
                bar.close()
            tqdm.write(f"finished in {event.seconds:.0f} s: {event.artefact}", file=sys.stderr)
        elif isinstance(event, (events.Failed, events.Cancelled)):
            if bar is not None:
                bar.close()
            tqdm.write(
                getattr(event, "message", f"cancelled at step {getattr(event, 'global_step', '?')}"),
                file=sys.stderr,
            )

    return on_event


def cmd_projects(args: argparse.Namespace) -> None:
    from engine.store import ProjectStore, data_root

    store = ProjectStore()
    if args.action == "create":
        print(store.create(args.name).root)
    elif args.action == "delete":
        store.delete(args.name)
        print(f"deleted {args.name}")
    else:
        print(f"projects in {data_root() / 'projects'}:")
        for name in store.list():
            print(f"  {name}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from engine.faces import load_face_kit
    from engine.intake import Refused, add_photo
    from engine.store import ProjectStore, StoreError

    store = ProjectStore()
    try:
        project = store.open(args.project)
    except StoreError:
        project = store.create(args.project)
    _licence_notice(args.commercial)
    kit = load_face_kit(commercial=args.commercial)
    if kit.is_fallback:
        print("Using the offline fallback face detector (approximate masks).", file=sys.stderr)
    refused = 0
    for path in map(Path, args.photos):
        result = add_photo(project, path.read_bytes(), path.name, args.role, kit)
        if isinstance(result, Refused):
            refused += 1
            print(f"refused {path.name}: {result.message}")
        else:
            print(f"accepted {path.name}")
    if refused == len(args.photos):
        raise SystemExit(EXIT_USER_ERROR)


def cmd_train(args: argparse.Namespace) -> None:
    from engine import preflight
    from engine.config import preset
    from engine.faces import load_face_kit
    from engine.train import train

    overrides = _parse_overrides(args.set)
    if args.base:
        overrides["base_model"] = args.base
    if args.profile:
        overrides["vram_profile"] = args.profile
    config = preset(args.preset, **overrides)
    project = _project(args.project)
    _licence_notice(args.commercial)
    try:
        print(f"Pre-flight estimate: {preflight.summary(preflight.estimate(config))}", file=sys.stderr)
    except preflight.PreflightError as error:
        print(f"Pre-flight estimate unavailable: {error}", file=sys.stderr)
    kit = load_face_kit(commercial=True) if args.commercial else None
    artefact = train(project, config, on_event=_progress_printer(), resume=args.resume, face_kit=kit)
    print(artefact)


def cmd_generate(args: argparse.Namespace) -> None:
    from engine.assets import NonCommercialAsset, get_asset
    from engine.generate import GenerationSettings, generate
    from engine.postprocess import RESTORERS, postprocess_output

    project = _project(args.project)
    if args.commercial and args.restore and not get_asset(RESTORERS[args.restore]).commercial_ok:
        raise NonCommercialAsset(
            f"The {args.restore} face restorer is licensed for non-commercial use only; with --commercial "
            "use --restore gfpgan instead."
        )
    _licence_notice(args.commercial, args.restore)
    settings = GenerationSettings(
        prompt_extra=args.prompt_extra,
        count=args.n,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.cfg,
    )
    records = generate(project, args.run, settings, commercial=args.commercial, on_event=_progress_printer())
    for record in records:
        if args.restore or args.upscale > 1 or args.preset:
            record = postprocess_output(
                project,
                record.id,
                restore=args.restore,
                upscale=args.upscale,
                preset=args.preset,
                commercial=args.commercial,
            )
        print(project.path(record.file))


def cmd_export(args: argparse.Namespace) -> None:
    from engine.export import export_embeddings, export_lora

    project = _project(args.project)
    print(export_lora(project, args.run, format=args.format))
    for path in export_embeddings(project, args.run):
        print(path)


def cmd_eval(args: argparse.Namespace) -> None:
    from engine.evaluate import evaluate_project
    from engine.faces import load_face_kit

    project = _project(args.project)
    _licence_notice(args.commercial)
    report = evaluate_project(project, args.runs or None, face_kit=load_face_kit(commercial=args.commercial))
    print(report.markdown())


def cmd_models(args: argparse.Namespace) -> None:
    from engine import assets

    if args.action == "list":
        rows = assets.list_assets()
        for row in rows:
            mark = "present" if row.present else "missing"
            print(f"{row.name:20} {mark:8} {row.licence:32} {row.path}")
        notice = assets.licence_notice([row.name for row in rows if row.present])
        if notice:
            print(notice)
    elif args.action == "download":
        for name in args.names or list(assets.REGISTRY):
            print(assets.download_asset(name))
    else:
        if len(args.names) != 2:
            raise SystemExit("usage: magicapture models import NAME PATH")
        print(assets.import_asset(args.names[0], args.names[1]))


def cmd_demo_models(args: argparse.Namespace) -> None:
    from engine.demo import build_demo_kit

    kit = build_demo_kit(Path(args.folder))
    print(
        f"tiny SD 1.x folder: {kit.sd.folder}\nsingle file: {kit.sd.single_file}\n"
        f"tiny decoder: {kit.tiny_decoder}\nassets: {kit.assets}"
    )


def _commercial_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--commercial",
        action="store_true",
        help="use only models whose licence allows commercial use (YuNet and SFace for faces, GFPGAN)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magicapture", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle (.ckpt/.bin) base models; they are read with weights_only",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("projects", help="list, create or delete projects")
    p.add_argument("action", choices=("list", "create", "delete"), nargs="?", default="list")
    p.add_argument("name", nargs="?")
    p.set_defaults(handler=cmd_projects)

    p = sub.add_parser("prepare", help="check and add photos to a project (created if new)")
    p.add_argument("project")
    p.add_argument("photos", nargs="+")
    p.add_argument(
        "--role", choices=("source", "reference"), required=True, help="selfies or style references"
    )
    _commercial_flag(p)
    p.set_defaults(handler=cmd_prepare)

    p = sub.add_parser("train", help="train the person and style tokens and the LoRA")
    p.add_argument("project")
    p.add_argument("--preset", default="released", help="released (default), paper or fast")
    p.add_argument("--base", help="SD 1.x base: hub id, diffusers folder or .safetensors file")
    p.add_argument("--profile", help="VRAM profile: auto, cpu, 6gb, 8gb, 12gb, 24gb")
    p.add_argument("--resume", action="store_true", help="continue the last stopped or crashed run")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any training setting"
    )
    _commercial_flag(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("generate", help="make portraits from a trained project")
    p.add_argument("project")
    p.add_argument("--run", help="training run (default: the latest finished)")
    p.add_argument("--prompt-extra", default="", help='extra words, e.g. "wearing a suit"')
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="euler_a", choices=("euler_a", "dpmpp_2m_karras", "ddim"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--restore", choices=("gfpgan", "codeformer"))
    p.add_argument("--upscale", type=int, choices=(1, 2, 4), default=1)
    p.add_argument("--preset", choices=("passport-eu", "passport-us", "headshot-1024", "headshot-2048"))
    _commercial_flag(p)
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("export", help="export the LoRA and embeddings")
    p.add_argument("project")
    p.add_argument("--run")
    p.add_argument("--format", choices=("a1111", "diffusers"), default="a1111")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("eval", help="CSIM, style and aesthetic scores of a project's outputs")
    p.add_argument("project")
    p.add_argument("--runs", nargs="*")
    _commercial_flag(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("models", help="list, download or import model weights")
    p.add_argument("action", choices=("list", "download", "import"))
    p.add_argument("names", nargs="*", help="asset names (import: NAME PATH)")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("demo-models", help="build the tiny offline model kit")
    p.add_argument("folder")
    p.set_defaults(handler=cmd_demo_models)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.allow_pickle:
        from engine.models import ALLOW_PICKLE_ENV

        os.environ[ALLOW_PICKLE_ENV] = "1"
    from engine.assets import AssetError
    from engine.models import ModelLoadError
    from engine.store import StoreError

    try:
        args.handler(args)
    except (StoreError, AssetError, ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from error


if __name__ == "__main__":
    main()
