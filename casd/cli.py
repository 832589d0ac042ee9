"""The ``casd`` console script: every command's arguments, and the call into the package or casd.stages.

Each command is a parser builder and a runner; both import the package inside, so that importing
``casd.cli`` (and ``casd --help``) stays cheap: no torch until a command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from casd.config import DEFAULT_PARAMS, Params, from_dict, run_stage
from casd.errors import CasdError, ConfigError, DataError, WeightsError


class Command(NamedTuple):
    help: str                                                # one line in ``casd --help``
    parser: Callable[[], argparse.ArgumentParser]            # the command's arguments
    run: Callable[[argparse.Namespace], None]


def _params_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"casd {name}", description=description)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    return parser


def _stage(name: str) -> Callable[[argparse.Namespace], None]:
    """Runner of a stage command that takes only ``--params``."""
    def run(args: argparse.Namespace) -> None:
        from casd import stages

        stages.STAGES[name](Params.load(args.params))
    return run


# --------------------------------------------------------------------------- data stages

def _synth_parser() -> argparse.ArgumentParser:
    parser = _params_parser("synth", "Procedural synthetic DeepFashion in the raw DeepFashion layout (the synth "
                                     "stage), or a check of a real folder.")
    parser.add_argument("--out", default=None, help="write the synthetic set here instead of data/raw")
    return parser


def _synth(args: argparse.Namespace) -> None:
    params = Params.load(args.params)
    if args.out is None:
        from casd import stages

        stages.synth(params)
        return
    from casd.data.config import DataConfig
    from casd.data.synthetic import SynthConfig, generate

    data, config = params.section(DataConfig, "data"), params.section(SynthConfig, "synth")
    print(f"synth: {json.dumps(generate(config, data.annotation_size, args.out, data.workers), sort_keys=True)}")


def _prepare_parser(name: str) -> Callable[[], argparse.ArgumentParser]:
    return lambda: _params_parser(name, f"the {name} stage (see casd.data.prepare)")


def _pose_parser() -> argparse.ArgumentParser:
    return _params_parser("pose", "Keypoints: the ``pose`` stage (annotation CSV -> compact npz) and the batched "
                                  "keypoint and limb maps.")


# --------------------------------------------------------------------------- train, test, evaluate

def _train_parser() -> argparse.ArgumentParser:
    return _params_parser("train", "Train the CASD generator (the train stage).")


def _test_parser() -> argparse.ArgumentParser:
    parser = _params_parser("test", "Generate every test pair (the test stage).")
    parser.add_argument("--checkpoint", help="override test.checkpoint")
    parser.add_argument("--batch-size", type=int, help="override test.batch_size")
    parser.add_argument("--device", help="override test.device")
    return parser


def _test(args: argparse.Namespace) -> None:
    from casd.config import resolve_device
    from casd.generation import GenerationJob, run_test

    if args.batch_size is not None and args.batch_size < 1:
        raise CasdError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.device is not None:
        resolve_device(args.device)
    params = Params.load(args.params)
    job = GenerationJob.from_params(params.values, params.path)
    overrides = {k: v for k, v in {"checkpoint": args.checkpoint, "batch_size": args.batch_size,
                                   "device": args.device}.items() if v is not None}
    if overrides:
        job = dataclasses.replace(job, config=dataclasses.replace(job.config, **overrides))
    run_test(job)


def _evaluate_parser() -> argparse.ArgumentParser:
    from casd.evaluation.evaluate import DEFAULT_PATTERNS, LPIPS_TRUNKS, SCORING_FILTERS, EvaluatePaths

    parser = argparse.ArgumentParser(
        prog="casd evaluate", description="Score generated pictures under the field's protocol.",
        epilog="Without --generated: the evaluate stage (data/generated, metrics/eval.json, reports/).")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS),
                        help="params file whose evaluate section sets the protocol (default: params.yaml)")
    parser.add_argument("--no-mlflow", action="store_true", help="stage: do not log to MLflow")
    parser.add_argument("--generated", type=Path, help="folder of generated pictures to score")
    parser.add_argument("--pairs", type=Path, help="pairs CSV (from,to); default: every picture in --generated")
    parser.add_argument("--out", type=Path, help="JSON of numbers, protocol and skip reasons "
                                                 "(default: reports/eval-<folder name>.json)")
    parser.add_argument("--report", type=Path, help="also write an HTML report here")
    parser.add_argument("--phase", choices=["test", "train"], default="test",
                        help="which split the pairs come from: the default ground truth data/resized/<phase> "
                             "and parsing maps <parsing>/<phase>/ (train: how well people seen in training are "
                             "rendered; default test)")
    parser.add_argument("--ground-truth", type=Path,
                        help="ground-truth and source images, by name (default: data/resized/<phase>)")
    parser.add_argument("--train-images", type=Path, default=EvaluatePaths.train_images,
                        help="training images: FID reference and mean colours (default: data/resized/train)")
    parser.add_argument("--parsing", type=Path, default=EvaluatePaths.parsing,
                        help="parsing maps <dir>/{train,test}/<stem>.png (default: data/parsing)")
    parser.add_argument("--predicted-parsing", type=Path, help="predicted target parsing <from>___<to>.png")
    parser.add_argument("--pattern", action="append", dest="patterns",
                        help="file naming with {from} and {to} (stems), repeatable "
                             f"(default: {' and '.join(DEFAULT_PATTERNS)})")
    parser.add_argument("--panel", help="INDEX/COUNT: score panel INDEX (0-based) of COUNT equal-width panels "
                                        "(default: 6/7 for upstream's _vis.jpg strips, whole picture otherwise)")
    protocol = parser.add_argument_group("protocol (default: the params file's evaluate section)")
    protocol.add_argument("--image-size", help="HxW scored at, e.g. 256x176 (default: the ground truth's size)")
    protocol.add_argument("--resize-filter", choices=list(SCORING_FILTERS), help="PIL filter (default bicubic)")
    protocol.add_argument("--fid-reference", choices=["train", "test"], help="FID reference set (default train)")
    protocol.add_argument("--reference-format", choices=["any", "jpg", "png"], help="FID reference files (any)")
    protocol.add_argument("--ssim-data-range", choices=["generated", "fixed"], help="ssim's range (generated)")
    protocol.add_argument("--lpips-net", choices=list(LPIPS_TRUNKS), help="LPIPS network (alex)")
    return parser


def _panel(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        index, count = (int(v) for v in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--panel must be INDEX/COUNT, got {spec!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"--panel {spec}: INDEX must lie in 0..COUNT-1")
    return index, count


def _evaluate(args: argparse.Namespace) -> None:
    """The evaluate stage, or ``--generated DIR`` to score any folder of pictures."""
    if args.generated is None:
        from casd import stages

        stages.evaluate(Params.load(args.params), track=not args.no_mlflow)
        return
    from casd.data.layout import PREPARED
    from casd.evaluation.evaluate import DEFAULT_PATTERNS, EvaluateConfig, EvaluatePaths, evaluate_folder

    params = Params.load(args.params) if Path(args.params).is_file() else Params(Path(args.params), {})
    section = dict(params.values.get("evaluate") or {})
    if args.image_size:
        try:
            section["image_size"] = [int(v) for v in args.image_size.lower().split("x")]
        except ValueError:
            raise ConfigError(f"--image-size must be HxW, got {args.image_size!r}") from None
    for name in ("resize_filter", "fid_reference", "reference_format", "ssim_data_range", "lpips_net"):
        if getattr(args, name) is not None:
            section[name] = getattr(args, name)
    panel = _panel(args.panel)
    paths = dataclasses.replace(EvaluatePaths(), test_images=args.ground_truth or PREPARED.images(args.phase),
                                train_images=args.train_images, parsing=args.parsing,
                                predicted_parsing=args.predicted_parsing, phase=args.phase)
    out = args.out or Path("reports") / f"eval-{Path(args.generated).resolve().name}.json"
    evaluate_folder(args.generated, from_dict(EvaluateConfig, section, "evaluate", params.path), paths, out,
                    pairs_csv=args.pairs, patterns=args.patterns or DEFAULT_PATTERNS, panel=panel,
                    report=args.report)


# --------------------------------------------------------------------------- generate

def _generate_parser() -> argparse.ArgumentParser:
    from casd.control import REGION_GROUPS
    from casd.data.images import REGION_NAMES
    from casd.data.layout import PREPARED

    parser = argparse.ArgumentParser(
        prog="casd generate",
        description="Pose transfer, try-on (--swap upper_clothes=IMAGE), head swap (--swap head=IMAGE) and style "
                    "interpolation (--mix IMAGE --alpha T [--regions hair,face]) with a trained checkpoint. "
                    f"Regions: {', '.join(REGION_NAMES)}; groups: {', '.join(REGION_GROUPS)}.")
    parser.add_argument("--checkpoint", required=True,
                        help="generator file: models/generator.pt, checkpoints/*.pt, or upstream latest_net_netG.pth")
    parser.add_argument("--source", help="person: prepared image name, or an image path with --parsing")
    parser.add_argument("--pose", help="target pose: name of an annotated image, or a JSON file of 18 [y, x]")
    parser.add_argument("--pairs", help="pairs CSV (from,to) of prepared names: a batch instead of --source/--pose")
    parser.add_argument("--swap", action="append", default=[], metavar="REGION=IMAGE",
                        help="take REGION's style from IMAGE (repeatable)")
    parser.add_argument("--mix", metavar="IMAGE", help="interpolate style tokens towards this person")
    parser.add_argument("--alpha", type=float, help="--mix amount: 0 = source, 1 = the other person (default 0.5)")
    parser.add_argument("--regions", help="--mix only these regions (comma-separated), default all")
    parser.add_argument("--parsing", action="append", default=[], metavar="[IMAGE=]PNG",
                        help="parsing (merged ids 0..7) of an image given by path; plain PNG = the source's")
    parser.add_argument("--out", default="reports/generate", help="output folder (default: %(default)s)")
    parser.add_argument("--params", help="params file the checkpoint was trained with: its model, data.image_size "
                                         "and pose sections must match the checkpoint (default: params.yaml, "
                                         "used only for what the checkpoint does not record)")
    parser.add_argument("--data-root", default=str(PREPARED.root), help="prepared data (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument("--no-strip", action="store_true", help="write only the generated images")
    parser.add_argument("--strip-scale", type=int, default=1, metavar="N",
                        help="enlarge the strip N times (nearest neighbour) and caption its panels when N > 1")
    return parser


def _swaps(values: Sequence[str]) -> dict[str, str]:
    """``--swap REGION=IMAGE`` values -> {region: donor}."""
    from casd.control import region_indices

    swaps: dict[str, str] = {}
    for value in values:
        region, sep, donor = value.partition("=")
        if not sep or not region or not donor:
            raise CasdError(f"--swap expects REGION=IMAGE (e.g. upper_clothes=NAME.jpg), got {value!r}")
        region_indices(region)
        swaps[region.strip()] = donor.strip()
    return swaps


def _parsing_files(values: Sequence[str], source: str | None) -> dict[str, str]:
    """``--parsing [IMAGE=]PNG`` values -> {image: parsing PNG}; a plain PNG belongs to ``--source``."""
    out: dict[str, str] = {}
    for value in values:
        image, sep, png = value.partition("=")
        if sep:
            out[image] = png
        elif source is None:
            raise CasdError(f"--parsing {value}: give IMAGE=PNG (no --source to attach it to)")
        else:
            out[source] = value
    return out


def _generate(args: argparse.Namespace) -> None:
    if args.pairs and (args.source or args.pose):
        raise CasdError("give either --pairs or --source with --pose, not both")
    if not args.pairs and not (args.source and args.pose):
        raise CasdError("give --source and --pose (or --pairs CSV)")
    if args.regions and not args.mix:
        raise CasdError("--regions applies to --mix; for a swap name the region in --swap REGION=IMAGE")
    if args.alpha is not None and args.mix is None:
        raise CasdError("--alpha applies to --mix IMAGE; without --mix it would be ignored")
    alpha = 0.5 if args.alpha is None else args.alpha
    if not 0.0 <= alpha <= 1.0:
        raise CasdError(f"--alpha must lie in [0, 1], got {alpha}")
    if args.batch_size < 1:
        raise CasdError(f"--batch-size must be >= 1, got {args.batch_size}")
    from casd.config import resolve_device
    from casd.control import region_indices
    from casd.data.tables import read_pairs
    from casd.inference import Synthesizer, generate_pairs

    if args.regions:
        region_indices(args.regions)
    swaps = _swaps(args.swap)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CasdError(f"{out}: --out must be a folder, but a file of that name exists")
    device = resolve_device(args.device)

    # An explicit --params must match the checkpoint; the implicit params.yaml only fills gaps.
    params_file = args.params or (DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else None)
    synthesizer = Synthesizer.from_checkpoint(args.checkpoint, params=params_file, data_root=args.data_root,
                                              device=device, check=bool(args.params),
                                              parsing=_parsing_files(args.parsing, args.source))
    if args.pairs:
        pairs = read_pairs(args.pairs)
        if not pairs:
            raise DataError(args.pairs, "no pairs")
    else:
        pairs = [(args.source, args.pose)]
    written = generate_pairs(synthesizer, pairs, out, swaps=swaps, mix=args.mix, alpha=alpha, regions=args.regions,
                             batch_size=args.batch_size, strips=not args.no_strip,
                             strip_scale=max(1, args.strip_scale), labels=args.strip_scale > 1)
    for path in written[:4]:
        print(path)
    if len(written) > 4:
        print(f"... {len(written)} files in {out}")


# --------------------------------------------------------------------------- tools

def _import_parser() -> argparse.ArgumentParser:
    from casd.checkpoints import POSE_MODES, UPSTREAM_IMAGE_SIZE

    parser = argparse.ArgumentParser(
        prog="casd import-checkpoint",
        description="Convert upstream CASD weights (latest_net_netG.pth, optionally the discriminators) into a "
                    "project checkpoint for casd generate / casd test. Loaded with weights_only=True.")
    parser.add_argument("source", metavar="SRC", help="upstream generator state dict (latest_net_netG.pth)")
    parser.add_argument("output", metavar="DST", help="project checkpoint to write (e.g. models/upstream.pt)")
    parser.add_argument("--netD-PB", dest="netd_pb", help="upstream latest_net_netD_PB.pth (image + pose critic)")
    parser.add_argument("--netD-PP", dest="netd_pp", help="upstream latest_net_netD_PP.pth (image pair critic)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=list(UPSTREAM_IMAGE_SIZE),
                        help="frame the weights were trained at (default: %(default)s, upstream's DeepFashion)")
    parser.add_argument("--pose-mode", choices=POSE_MODES, default="onehot",
                        help="pose maps the weights expect (upstream: onehot)")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    return parser


def _import_checkpoint(args: argparse.Namespace) -> None:
    from casd.checkpoints import CONFIG_FIELDS_NOT_IN_WEIGHTS, import_upstream

    summary = import_upstream(args.source, args.output, netd_pb=args.netd_pb, netd_pp=args.netd_pp,
                              image_size=tuple(args.image_size), pose_mode=args.pose_mode, overwrite=args.force)
    config = ", ".join(f"{k}={v}" for k, v in summary["model_config"].items() if k not in CONFIG_FIELDS_NOT_IN_WEIGHTS)
    print(f"{args.source} -> {summary['output']}")
    print(f"  generator: {summary['generator_values']:,} values ({summary['trainable_values']:,} trainable, "
          f"the rest the frozen VGG19)")
    print(f"  model config: {config}")
    print(f"  frame: {summary['image_size'][0]}x{summary['image_size'][1]}, pose maps {summary['pose_mode']}")
    for role in ("d_pb", "d_pp"):
        if f"{role}_values" in summary:
            print(f"  {role}: {summary[f'{role}_values']:,} values")


def _weights_parser() -> argparse.ArgumentParser:
    from casd.weights import REGISTRY

    parser = argparse.ArgumentParser(prog="casd weights",
                                     description="The pretrained files the project can use: where each is looked "
                                                 "for, and checked.")
    parser.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    parser.add_argument("keys", nargs="*", metavar="KEY", help=f"files to fetch (default: all): {', '.join(REGISTRY)}")
    parser.add_argument("--dest", help="fetch into this folder instead of each file's standard folder")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a server")
    return parser


def _weights(args: argparse.Namespace) -> None:
    from casd.weights import REGISTRY, fetch, search_paths, sha256, status

    unknown = [k for k in args.keys if k not in REGISTRY]
    if unknown:
        raise WeightsError(f"unknown pretrained file(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    keys = args.keys or list(REGISTRY)
    if args.action == "list":
        for key in keys:
            w = REGISTRY[key]
            where = ", ".join(map(str, search_paths(key))) or "(lpips package not installed)"
            print(f"{w.filename}  [{w.key}]{'  ~' + w.size_hint if w.size_hint else ''}\n"
                  f"  used by:   {w.used_by}\n  expected:  {w.expected()}\n  source:    {w.url}\n"
                  f"  looked in: {where}\n  status:    {status(key)}")
        return
    failed = 0
    if not args.keys:
        for key in [k for k in keys if not REGISTRY[k].fetch_by_default]:
            print(f"skipped  {REGISTRY[key].filename}: not used by default; `casd weights fetch {key}` gets it")
        keys = [k for k in keys if REGISTRY[k].fetch_by_default]
    for key in keys:
        w = REGISTRY[key]
        try:
            path = fetch(key, args.dest, timeout=args.timeout)
        except WeightsError as e:
            failed += 1
            print(f"FAILED   {e}", file=sys.stderr)
            continue
        note = "" if (w.sha256 or w.sha256_prefix) else f" (unverified, SHA-256 {sha256(path)})"
        print(f"ok       {w.filename}: {path}{note}")
    if failed:
        raise WeightsError(f"{failed} of {len(keys)} pretrained file(s) could not be fetched")


def _annotate_parser() -> argparse.ArgumentParser:
    import casd.annotate

    parser = argparse.ArgumentParser(
        prog="casd annotate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Photos -> the person framed at 256x176, 18 OpenPose keypoints and LIP-20 parsing, in the "
                    "dataset's formats.",
        epilog="Outputs:" + casd.annotate.__doc__.split("Outputs of")[1].split("\n", 1)[1])
    parser.add_argument("photos", nargs="*", help="photo files or folders of photos")
    parser.add_argument("--out", default="reports/annotate", help="output folder (default: reports/annotate)")
    parser.add_argument("--deepfashion", metavar="SRC",
                        help="annotate a DeepFashion-layout folder into a complete data.root at --out")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    return parser


def _annotate(args: argparse.Namespace) -> None:
    from casd.annotate import Annotator, annotate, annotate_deepfashion, expand_photos

    if bool(args.photos) == bool(args.deepfashion):
        raise CasdError("casd annotate: give either photos or --deepfashion SRC")
    if args.photos:
        photos = expand_photos(args.photos)  # a typo fails before the models load
    annotator = Annotator.from_weights(args.device)
    start = time.perf_counter()
    if args.deepfashion:
        counts = annotate_deepfashion(args.deepfashion, args.out, annotator)
        print(f"annotate: {json.dumps(counts)} -> {args.out} (data.root)")
    else:
        table = annotate(photos, args.out, annotator)
        print(f"annotate: {len(table)} photo(s) -> {args.out} in {time.perf_counter() - start:.1f} s")


def _app_parser() -> argparse.ArgumentParser:
    from casd.app import DEFAULT_CHECKPOINT
    from casd.data.layout import PREPARED

    parser = argparse.ArgumentParser(
        prog="casd app",
        description="Pose transfer, try-on, head swap and style mixing in the browser (needs the [app] extra).")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="generator checkpoint (default: %(default)s)")
    parser.add_argument("--params", help="params file the checkpoint was trained with (default: params.yaml, "
                                         "used only for what the checkpoint does not record)")
    parser.add_argument("--data-root", default=str(PREPARED.root), help="prepared data (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    return parser


def _app(args: argparse.Namespace) -> None:
    from casd.app import serve

    serve(args.checkpoint, params=args.params, data_root=args.data_root, host=args.host, port=args.port,
          device=args.device)


COMMANDS: dict[str, Command] = {
    "synth": Command("write the synthetic DeepFashion dataset", _synth_parser, _synth),
    "split": Command("copy listed images into train/ and test/ under flat names", _prepare_parser("split"),
                     _stage("split")),
    "resize": Command("resize images to the training size", _prepare_parser("resize"), _stage("resize")),
    "pose": Command("annotation CSV -> compact keypoints (+ optional upstream .npy maps)", _pose_parser,
                    _stage("pose")),
    "segment": Command("LIP-20 parsing -> 8 merged regions", _prepare_parser("segment"), _stage("segment")),
    "train": Command("train the model", _train_parser, _stage("train")),
    "test": Command("generate every test pair", _test_parser, _test),
    "evaluate": Command("score generated pictures: the evaluate stage, or any folder (--generated DIR)",
                        _evaluate_parser, _evaluate),
    "generate": Command("pose transfer, try-on, head swap, style interpolation", _generate_parser, _generate),
    "app": Command("the same in the browser: galleries, a pose editor, donors (the [app] extra)",
                   _app_parser, _app),
    "import-checkpoint": Command("convert upstream generator (+ discriminator) weights", _import_parser,
                                 _import_checkpoint),
    "weights": Command("list (or fetch) the pretrained files the project uses", _weights_parser, _weights),
    "annotate": Command("photos -> keypoints + LIP parsing in the dataset's formats", _annotate_parser, _annotate),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: casd <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "casd <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"casd: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    command = COMMANDS[name]
    run_stage(lambda: command.run(command.parser().parse_args(rest)))

if __name__ == "__main__":
    main()
