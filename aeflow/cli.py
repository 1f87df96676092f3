"""`aeflow` command line: each subcommand parses flags and calls one library function.

The flags of `train` and of the four jobs are made from the fields of TrainConfig and JobConfig (their
types and defaults), so a field added there is a flag here. jobs/*.py call the same `main(argv)` entry
points, so `ray job submit ... python jobs/compress.py` and `aeflow compress` run one code path.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import sys
import textwrap
import tokenize
import typing

from aeflow import pipeline, storage
from aeflow.pipeline import runtime

JOBS = {"compress": "images -> latents Parquet", "decompress": "latents Parquet -> PNG images",
        "restore": "images -> restored images",
        "generate": "variations of images, interpolations and samples from the codec's hyperprior"}

# What TrainConfig's fields and their comments do not say: flag names kept from earlier releases, required
# flags, help where a field has no comment (choices are added in build_parser).
TRAIN_FLAGS: dict[str, dict] = {
    "task": {"help": "hyperprior: add a scale hyperprior for the top quality level to the --init codec"},
    "data": {"required": True},
    "out": {"required": True},
    "use_gpu": {"flag": "--gpu", "help": "train on GPUs (one per worker)"},
    "no_ray": {"help": "plain PyTorch loop (machines without Ray)"},
}


def field_comments(cls: type) -> dict[str, str]:
    """The comment after each field of a dataclass's source (`name: type = default  # comment`): the help of
    a field whose class says no more."""
    comments: dict[str, str] = {}
    name, depth = "", 0
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(inspect.getsource(cls))).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.NAME and depth == 1 and tok.start[1] == 4 and not name:
            name = tok.string
        elif tok.type == tokenize.COMMENT and name and depth == 1:
            comments[name] = tok.string.lstrip("#").strip().replace("%", "%%")
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            name = ""
    return comments


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows a flag's default where it says something: not for switches, required or empty ones."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.nargs == 0 or action.default in ("", None, ()):
            return action.help
        return super()._get_help_string(action)


def _comma_list(item_type: type):
    def parse(text: str) -> tuple:
        return tuple(item_type(v) for v in text.split(",") if v.strip())

    parse.__name__ = f"comma-separated {item_type.__name__}s"  # argparse names the type in its errors
    return parse


def add_fields(p: argparse.ArgumentParser, cls: type, fields: list[dataclasses.Field],
               specs: dict[str, dict]) -> list[str]:
    """A flag per dataclass field, from its type and default: --a-name for a_name; booleans as switches,
    tuples as comma-separated lists, fields without a default required. specs (or the field's metadata)
    may give help, choices, required and another flag name. Returns the flags added."""
    hints = typing.get_type_hints(cls)
    added = []
    for f in fields:
        spec = {**f.metadata, **specs.get(f.name, {})}
        flag = spec.get("flag") or "--" + f.name.replace("_", "-")
        kw: dict = {"dest": f.name, "help": spec.get("help") or "default: %(default)s"}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kw["required"] = spec.get("required", True)
            kw["default"] = ""
        else:
            kw["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kw["required"] = spec.get("required", False)
        hint = hints[f.name]
        if hint is bool:
            kw["action"] = "store_false" if kw["default"] else "store_true"
        elif typing.get_origin(hint) is tuple and "nargs" in spec:
            kw.update(type=typing.get_args(hint)[0], nargs=spec["nargs"], metavar=spec.get("metavar"))
        elif typing.get_origin(hint) is tuple:
            kw["type"] = _comma_list(typing.get_args(hint)[0])
            kw["metavar"] = spec.get("metavar", "A,B,...")
        else:
            kw["type"] = hint
        if "choices" in spec:
            kw["choices"] = spec["choices"]
        if kw.get("required"):
            kw.pop("default", None)
        p.add_argument(flag, **kw)
        added.append(flag)
    return added


def _endpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS); credentials from the AWS environment")


def _job_fields(command: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(pipeline.JobConfig) if command in f.metadata.get("jobs", ())]


def build_parser() -> argparse.ArgumentParser:
    from aeflow.training import TASKS, TrainConfig
    from aeflow.training.config import PRECISIONS

    parser = argparse.ArgumentParser(prog="aeflow", description="Autoencoder image work at archive scale on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    flags: dict[str, list[str]] = {}  # each subcommand's flags, to name the one a stray flag belongs to

    p = sub.add_parser("train", help="fit a model with Ray Train (or plain PyTorch with --no-ray)",
                       formatter_class=_Help)
    specs = {name: {"help": text} for name, text in field_comments(TrainConfig).items()}
    for name, spec in {**TRAIN_FLAGS, "task": {**TRAIN_FLAGS["task"], "choices": TASKS},
                       "precision": {"choices": PRECISIONS}}.items():
        specs[name] = {**specs.get(name, {}), **spec}
    flags["train"] = add_fields(p, TrainConfig, list(dataclasses.fields(TrainConfig)), specs)
    _endpoint_flag(p)

    for command, description in JOBS.items():
        p = sub.add_parser(command, help=description, formatter_class=_Help)
        optional = {f.name: {"required": False} for f in _job_fields(command)
                    if command in f.metadata.get("optional_for", ())}
        flags[command] = add_fields(p, pipeline.JobConfig, _job_fields(command), optional)
        _endpoint_flag(p)

    p = sub.add_parser("eval", help="codec rate-distortion vs JPEG/WebP, or restoration vs classical denoisers")
    p.add_argument("--input", required=True, help="clean images (local path or s3://)")
    p.add_argument("--output", required=True, help="folder for eval.json and its pictures")
    p.add_argument("--model", default="")
    p.add_argument("--task", default="codec", choices=["codec", "denoise", "deblock", "deblur", "inpaint"])
    p.add_argument("--level", type=float, default=0.0,
                   help="degradation: noise sigma (denoise, default 25), JPEG quality (deblock, default 20), "
                        "blur sigma in px (deblur, default 2), rectangles missing (inpaint, default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradations")
    _endpoint_flag(p)

    p = sub.add_parser("demo", help="the whole product on bundled real photos, with a results table")
    p.add_argument("--out", default="aeflow-demo", help="folder for the demo's inputs and outputs")
    parser.set_defaults(flags_of=flags)
    return parser


def _options(args: argparse.Namespace) -> storage.StorageOptions:
    return storage.StorageOptions(endpoint_url=args.endpoint_url)


def job_config(args: argparse.Namespace) -> pipeline.JobConfig:
    """The JobConfig a parsed job command line describes."""
    given = {f.name: getattr(args, f.name) for f in _job_fields(args.command)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}  # nargs flags give lists
    return pipeline.JobConfig(**{"input": "", **given, "storage": _options(args)})


def _print_summary(s: pipeline.JobSummary) -> None:
    before = f", {s.done_before} done before" if s.done_before else ""
    print(f"{s.job}: {s.written} written, {s.failed} failed{before}, {s.skipped} skipped of {s.inputs} inputs "
          f"in {s.seconds:.1f} s -> {s.output}")
    for e in s.errors[:10]:
        print(f"  error: {e['path']} [{e['stage']}] {e['error']}")
    if len(s.errors) > 10:
        print(f"  ... {len(s.errors) - 10} more in {s.output}/errors.parquet")


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed command line; returns the exit code."""
    if args.command == "train":
        from aeflow.training import TrainConfig, train

        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
        print(json.dumps(train(cfg, _options(args))))
        return 0
    if args.command == "demo":
        from aeflow.demo import run_demo

        run_demo(args.out)
        return 0
    if args.command == "eval" and args.task != "codec":
        from aeflow.evaluate_restore import evaluate_restorer

        level = args.level or {"denoise": 25.0, "deblock": 20.0, "deblur": 2.0, "inpaint": 4.0}[args.task]
        report = evaluate_restorer(args.input, args.output, args.task, level, args.model, args.seed,
                                   options=_options(args))
        print(json.dumps({"task": args.task, "level": level, "mean": report["mean"],
                          "aeflow_seconds_per_megapixel": report["aeflow_seconds_per_megapixel"]}, indent=1))
        return 0
    if args.command == "eval":
        from aeflow.evaluate import evaluate_codec

        report = evaluate_codec(args.input, args.output, args.model, _options(args))
        mean = report["mean"]
        print(json.dumps({k: v for k, v in mean.items() if k != "classic"}, indent=1))
        print(f"per image: {args.output.rstrip('/')}/eval.json; curves: rd-psnr.png, rd-msssim.png", file=sys.stderr)
        return 0
    _print_summary(getattr(pipeline, args.command)(job_config(args)))
    return 0


def _stray_flag(args: argparse.Namespace, unknown: list[str]) -> str:
    """The error for flags the subcommand does not take, naming the subcommands that do."""
    flag = next((a.split("=", 1)[0] for a in unknown if a.startswith("-")), unknown[0])
    others = [c for c, fl in args.flags_of.items() if flag in fl]
    where = f" (a flag of {', '.join(others)})" if others else ""
    return f"aeflow {args.command}: error: {flag} does not apply to {args.command}{where}"


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        print(_stray_flag(args, unknown), file=sys.stderr)
        return 2
    runtime.keep_freed_memory()  # eval, demo and small jobs run models in this process
    try:
        return run(args)
    except pipeline.JobFailed as e:
        _print_summary(e.summary)
        print(f"aeflow {args.command}: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"aeflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
