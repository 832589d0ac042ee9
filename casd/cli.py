"""The ``casd`` console script: one sub-command per package entry point.

Each sub-command lives in the module that does the work, as a function
``main(argv: list[str]) -> None`` that parses its own arguments; this file only
dispatches, so that importing ``casd.cli`` stays cheap (no torch until needed).
"""

from __future__ import annotations

import importlib
import sys

from casd.errors import user_error_message

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("casd.data.synthetic", "cli_main", "write the synthetic DeepFashion dataset"),
    "split": ("casd.data.prepare", "split_cli", "copy listed images into train/ and test/ under flat names"),
    "resize": ("casd.data.prepare", "resize_cli", "resize images to the training size"),
    "pose": ("casd.data.pose", "cli_main", "annotation CSV -> compact keypoints (+ optional upstream .npy maps)"),
    "segment": ("casd.data.prepare", "segment_cli", "LIP-20 parsing -> 8 merged regions"),
    "train": ("casd.train", "cli_main", "train the model"),
    "test": ("casd.inference", "run_test_cli", "generate every test pair"),
    "evaluate": ("casd.evaluation.evaluate", "cli_main",
                 "score generated pictures: the evaluate stage, or any folder (--generated DIR)"),
    "generate": ("casd.inference", "generate_cli", "pose transfer, try-on, head swap, style interpolation"),
    "app": ("casd.app", "cli_main", "the same in the browser: galleries, a pose editor, donors (the [app] extra)"),
    "import-checkpoint": ("casd.checkpoints", "import_cli", "convert upstream generator (+ discriminator) weights"),
    "weights": ("casd.weights", "cli_main", "list (or fetch) the pretrained files the project uses"),
    "annotate": ("casd.annotate", "cli_main", "photos -> keypoints + LIP parsing in the dataset's formats"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: casd <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
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
    module, func, _ = COMMANDS[name]
    try:
        getattr(importlib.import_module(module), func)(rest)
    except Exception as e:
        message = user_error_message(e)
        if message is None:  # a bug: keep the traceback
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
