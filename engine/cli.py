"""The ``magicapture`` command: the studio's work, headless.

Every subcommand is a thin call into the engine; heavy imports happen inside the handlers so that
``magicapture --help`` is instant. Under ``accelerate launch`` the ``train`` subcommand runs on
several processes (the trainer uses accelerate itself).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from engine.faces import FaceKit
    from engine.store import Project, ProjectStore

EXIT_USER_ERROR = 2
EXIT_BUG = 1
LOG_LIMIT = 2**20
"""``logs/cli.log`` is moved to ``cli.log.1`` (replacing it) once it grows past this many bytes."""
USER_ERRORS = frozenset({
    "engine.cli.CommandError",
    "engine.store.StoreError",
    "engine.assets.errors.AssetError",
    "engine.models.ModelLoadError",
    "engine.families.UnsupportedModel",
    "engine.config.ConfigError",
    "engine.preflight.table.PreflightError",
    "engine.intake.PhotoFileError",
    "engine.data.DataError",
    "engine.tokens.TokenError",
    "engine.faces.detect.FaceModelError",
    "engine.training.errors.TrainingError",
    "engine.training.errors.TrainingCancelled",
    "engine.artefact.ArtefactError",
    "engine.runs.UnknownRun",
    "engine.generate.GenerationError",
    "engine.postprocess.PostprocessError",
    "engine.presets.PresetError",
    "engine.export.ExportError",
    "engine.metrics.MetricsModelError",
    "engine.evaluate.EvaluationError",
})  # fmt: skip
"""Exceptions whose message is a sentence for the user, by qualified name (no import needed to tell)."""


class CommandError(Exception):
    """A mistake in the command line that the user can fix; the message says how."""


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


def _project(name: str) -> Project:
    from engine.store import ProjectStore

    return ProjectStore().open(name)


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON where they parse, else as text."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise CommandError(f"--set takes key=value (got {pair!r}); for example --set phase1_steps=400.")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


def _check_base(source: str) -> None:
    """Refuse a local single-file base whose safetensors header is damaged, before any slow work."""
    from engine.models import safetensors_header

    path = Path(source).expanduser()
    if path.suffix == ".safetensors" and path.is_file():
        safetensors_header(path)


def _licence_line(commercial: bool, restore: str | None = None) -> str | None:
    """The line saying which non-commercial weights this command uses and what replaces them, if any."""
    from engine.assets import licence_notice
    from engine.preflight import assets_in_use

    notice = licence_notice(assets_in_use(commercial=commercial, restore=restore), alternatives=True)
    return f"Licence: {notice} (Pass --commercial.)" if notice else None


def _licence_notice(commercial: bool, restore: str | None = None) -> None:
    """Say once, on stderr, which non-commercial weights this command uses and what replaces them."""
    line = _licence_line(commercial, restore)
    if line:
        print(line, file=sys.stderr)


def _progress_printer(notes: Sequence[str | None] = ()) -> Callable[[Any], None]:
    """An event callback that draws a tqdm bar for steps and prints everything else once, on stderr.

    ``notes`` are printed before the first event, so a command refused before its work starts
    prints its error alone. Stdout is left to the command's results (paths), so a script can read
    them. It also warns, once, when training steps suddenly take several times longer (a GPU
    spilling into system memory). A `Failed` event is not printed: its error reaches `main`.
    """
    from tqdm import tqdm

    from engine import events, preflight

    state: dict[str, Any] = {"bar": None, "seconds": [], "last": None, "warned": False, "notes": notes}

    def on_event(event: events.Event) -> None:
        for note in filter(None, state.pop("notes", ())):
            tqdm.write(note, file=sys.stderr)
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
        elif isinstance(event, events.Failed) and bar is not None:
            bar.close()
        elif isinstance(event, events.Cancelled):
            if bar is not None:
                bar.close()
            tqdm.write(f"cancelled at step {event.global_step}", file=sys.stderr)

    return on_event


def cmd_projects(args: argparse.Namespace) -> None:
    from engine.store import ProjectStore, data_root

    store = ProjectStore()
    if args.action == "list":
        print(f"projects in {data_root() / 'projects'}:")
        for name in store.list():
            print(f"  {name}")
        return
    if not args.name:
        raise CommandError(
            f"projects {args.action} needs a project name: magicapture projects {args.action} NAME."
        )
    if args.action == "create":
        print(store.create(args.name).root)
    elif args.action == "delete":
        store.delete(args.name)
        print(f"deleted {args.name}")
    else:
        from engine.repair import repair_manifest

        print(repair_manifest(store.open(args.name)))


def cmd_prepare(args: argparse.Namespace) -> None:
    from engine.faces import load_face_kit
    from engine.intake import check_photo_file
    from engine.store import ProjectStore, StoreError

    paths = [Path(photo) for photo in args.photos]
    for path in paths:
        check_photo_file(path)
    store = ProjectStore()
    try:
        project, created = store.open(args.project), False
    except StoreError:
        project, created = store.create(args.project), True
    try:
        _licence_notice(args.commercial)
        kit = load_face_kit(commercial=args.commercial)
        if kit.is_fallback:
            print("Using the offline fallback face detector (approximate masks).", file=sys.stderr)
        accepted = _add_photos(project, paths, args.role, kit)
    finally:
        if created:
            _discard_if_empty(store, args.project)
    if not accepted:
        outcome = "was not created" if created else "is unchanged"
        raise CommandError(
            f"No photo was accepted (reasons above), so project {args.project!r} {outcome}; choose other photos."
        )


def _add_photos(project: Project, paths: Sequence[Path], role: str, kit: FaceKit) -> int:
    """Add each photo to ``project``, saying on stdout which were accepted; returns how many were."""
    from engine.intake import Refused, add_photo, read_photo

    accepted = 0
    for path in paths:
        result = add_photo(project, read_photo(path), path.name, role, kit)
        if isinstance(result, Refused):
            print(f"refused {path.name}: {result.message}")
        else:
            accepted += 1
            print(f"accepted {path.name}")
    return accepted


def _discard_if_empty(store: ProjectStore, name: str) -> None:
    """Delete project ``name``, which this command created, if it holds no photo."""
    from engine.store import StoreError

    with contextlib.suppress(StoreError):
        if not store.open(name).manifest()["images"]:
            store.delete(name)


def cmd_train(args: argparse.Namespace) -> None:
    from engine import preflight
    from engine.config import preset

    overrides = _parse_overrides(args.set)
    if args.base:
        overrides["base_model"] = args.base
    if args.profile:
        overrides["vram_profile"] = args.profile
    config = preset(args.preset, **overrides)
    project = _project(args.project)
    _check_base(config.base_model)
    try:
        estimate = f"Pre-flight estimate: {preflight.summary(preflight.estimate(config))}"
    except preflight.PreflightError as error:
        estimate = f"Pre-flight estimate unavailable: {error}"
    from engine.faces import load_face_kit
    from engine.training import train

    kit = load_face_kit(commercial=True) if args.commercial else None
    notes = [_licence_line(args.commercial), estimate]
    artefact = train(project, config, on_event=_progress_printer(notes), resume=args.resume, face_kit=kit)
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
    settings = GenerationSettings(
        prompt_extra=args.prompt_extra,
        count=args.n,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.cfg,
    )
    notes = [_licence_line(args.commercial, args.restore)]
    records = generate(
        project, args.run, settings, commercial=args.commercial, on_event=_progress_printer(notes)
    )
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
            raise CommandError(
                f"models import takes NAME PATH (got {' '.join(args.names) or 'nothing'}); "
                "for example magicapture models import bisenet ~/Downloads/79999_iter.pth."
            )
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
    parser = _Parser(prog="magicapture", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle (.ckpt/.bin) base models; they are read with weights_only",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("projects", help="list, create, delete or repair projects")
    p.add_argument("action", choices=("list", "create", "delete", "repair"), nargs="?", default="list")
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
    p.add_argument("--n", type=_count, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="euler_a", choices=("euler_a", "dpmpp_2m_karras", "ddim"))
    p.add_argument("--steps", type=_count, default=50)
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
    try:
        args.handler(args)
    except Exception as error:
        raise SystemExit(_report(error, argv)) from error


def _report(error: Exception, argv: Sequence[str] | None) -> int:
    """Print one line about ``error`` on stderr and log its traceback; returns the exit status."""
    log = _log_traceback(error, sys.argv[1:] if argv is None else argv)
    message = " ".join(str(error).split()) or type(error).__name__
    if _is_user_error(error):
        details = f" (Details: {log}.)" if log else ""
        print(f"error: {message}{details}", file=sys.stderr)
        return EXIT_USER_ERROR
    if log is None:
        traceback.print_exception(error)
    where = f"the details in {log}" if log else "the traceback above"
    print(
        f"error: unexpected {type(error).__name__}: {message}. This is a bug; please report it with {where}.",
        file=sys.stderr,
    )
    return EXIT_BUG


def _is_user_error(error: Exception) -> bool:
    return any(f"{kind.__module__}.{kind.__qualname__}" in USER_ERRORS for kind in type(error).__mro__)


def _log_traceback(error: Exception, argv: Sequence[str]) -> Path | None:
    """Append the command and ``error``'s traceback to ``<data root>/logs/cli.log``; None if it cannot be written."""
    from engine.store import data_root

    try:
        path = data_root() / "logs" / "cli.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size > LOG_LIMIT:
            os.replace(path, path.with_name("cli.log.1"))
        entry = f"{time.strftime('%Y-%m-%d %H:%M:%S')} magicapture {' '.join(argv)}\n"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(entry + "".join(traceback.format_exception(error)) + "\n")
    except OSError:
        return None
    return path


if __name__ == "__main__":
    main()
