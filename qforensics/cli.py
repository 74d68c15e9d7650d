"""Command line: argument parsing and the choice of renderer, nothing else.

Exit codes follow qemu-img where it has the same command: info exits 0, or 1
when the image cannot be opened (as qemu-img would refuse it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import QforensicsError, UsageError
from .info import build_info, render_human
from .model import Image

EXIT_OK = 0
EXIT_FAILED = 1


def _cmd_info(args: argparse.Namespace) -> int:
    with Image(args.image) as img:
        info = build_info(img, args.image)
        refusals = img.refusals
    if refusals and not args.force:
        for f in refusals:
            print(f"qforensics: {args.image}: {f.one_line()} (qemu: {f.qemu_message})", file=sys.stderr)
        return EXIT_FAILED
    if args.output == "json":
        sys.stdout.write(json.dumps(info, indent=4) + "\n")
    else:
        sys.stdout.write(render_human(info))
    return EXIT_OK


def _write_report(image: str, output: str) -> None:
    from .report import build_report

    out = _output_path(image, output)
    out.write_text(build_report(image, sys.argv), encoding="utf-8")


def _cmd_report(args: argparse.Namespace) -> int:
    _write_report(args.image, args.o)
    print(f"report written to {args.o}", file=sys.stderr)
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from .checks import check_image, render_human as render_check

    if args.html:
        _write_report(args.image, args.html)
    with Image(args.image) as img:
        report = check_image(img)
    if args.output == "json":
        sys.stdout.write(json.dumps(report.to_json(args.image), indent=4) + "\n")
    else:
        sys.stdout.write(render_check(report, args.image))
    return report.exit_code


def _output_path(image: str, output: str) -> Path:
    """Where to write; never the evidence itself."""
    out = Path(output)
    if out.exists() and out.resolve() == Path(image).resolve():
        raise UsageError(f"refusing to write {output}: it is the input image")
    return out


def _cmd_graph(args: argparse.Namespace) -> int:
    from .graph import build_graph, summarize, write_graph

    out = _output_path(args.image, args.o)
    if out.suffix not in (".graphml", ".json"):
        raise UsageError(f"-o {args.o}: use a .graphml or .json file name")
    with Image(args.image) as img:
        g, _ = build_graph(img)
    write_graph(g, out)
    summary = summarize(g)
    if args.output == "json":
        sys.stdout.write(json.dumps(summary, indent=4) + "\n")
    else:
        print(f"{summary['nodes']} nodes, {summary['edges']} edges written to {out}")
        print("nodes: " + ", ".join(f"{k} {v}" for k, v in summary["nodes-by-kind"].items()))
        print("edges: " + ", ".join(f"{k} {v}" for k, v in summary["edges-by-kind"].items()))
        for u in summary["unreachable"]:
            print(f"unreachable from the header: {u['label']}")
        for c in summary["cycles"]:
            print("cycle: " + " -> ".join(c))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qforensics", description="Forensic analysis of qcow2 disk images.")
    parser.add_argument("--version", action="version", version=f"qforensics {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe an image: header, features, extensions, snapshots, bitmaps")
    info.add_argument("image")
    info.add_argument("--output", choices=("human", "json"), default="human")
    info.add_argument("--force", action="store_true",
                      help="describe the image even when qemu would refuse to open it (the reasons are findings)")
    info.set_defaults(func=_cmd_info)
    check = sub.add_parser("check", help="check consistency as qemu-img check does, and what it misses; "
                           "exit 0 clean, 1 failed, 2 corruptions, 3 leaks only")
    check.add_argument("image")
    check.add_argument("--output", choices=("human", "json"), default="human")
    check.add_argument("--html", metavar="REPORT.html", help="also write the HTML audit report")
    check.set_defaults(func=_cmd_check)
    report = sub.add_parser("report", help="write the HTML audit report (self-contained, safe to hand over)")
    report.add_argument("image")
    report.add_argument("-o", required=True, metavar="REPORT.html")
    report.set_defaults(func=_cmd_report)
    graph = sub.add_parser("graph", help="export the structure graph (GraphML for Gephi/yEd, or node-link JSON)")
    graph.add_argument("image")
    graph.add_argument("-o", required=True, metavar="FILE.graphml|FILE.json")
    graph.add_argument("--output", choices=("human", "json"), default="human", help="format of the summary")
    graph.set_defaults(func=_cmd_graph)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QforensicsError as exc:
        print(f"qforensics: {args.image}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: a bug must not print a traceback over the evidence
        if os.environ.get("QFORENSICS_DEBUG"):
            raise
        print(f"qforensics: {args.image}: internal error: {type(exc).__name__}: {exc} "
              "(set QFORENSICS_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
