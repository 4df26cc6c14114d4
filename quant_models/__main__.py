"""``python -m quant_models {list,info}``: the zoo from the command line (also ``sibnn-models``)."""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: as the console script, signal handlers come first,
    from sibnn_base.launch import run  # then this module's imports (torch: seconds), then main

    sys.exit(run("quant_models.__main__:main"))

import json

import yaml

from sibnn_base.errors import ArgumentParser, ConfigError, cli_errors

from .info import format_table, summary
from .registry import build_model, get_entry, list_models


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
    return out


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m quant_models", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list registered models")
    info = sub.add_parser("info", help="parameters per block and the SI share")
    info.add_argument("model")
    info.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a model argument, e.g. --set dataset=cifar10 --set r=8")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for name in list_models():
            print(f"{name:<18} {get_entry(name).doc}")
        return 0
    model = build_model(args.model, **parse_overrides(args.overrides))
    s = summary(model)
    print(json.dumps(s, indent=2) if args.json else format_table(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
