"""Command line: argument parsing and the choice of renderer, nothing else.

Exit codes follow qemu-img where it has the same command: info exits 0, or 1
when the image cannot be opened (as qemu-img would refuse it). A usage error
exits 1, as qemu-img's do: argparse's 2 would read as "corruptions" from check
and "ranges missing" from recover.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ImageOpenError, QforensicsError, UsageError
from .text import clip_lines, terminal_safe

# before numpy loads: its BLAS is never used here, and one thread spares starting a pool (~40 ms a run)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from .model import Image  # noqa: E402
from .render.check_text import MAX_LINES_PER_CODE  # noqa: E402  (for the help text; no checks loaded)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INCOMPLETE = 2  # recover: some guest ranges are missing


def _say(message: str) -> None:
    """One line on stderr; image strings in it (names, paths) cannot drive the terminal, and it is at most
    MAX_LINE characters long."""
    print(clip_lines(terminal_safe(message)), file=sys.stderr)


def _show(text: str) -> None:
    """Human output on stdout, made terminal-safe and clipped as _say's (JSON escapes control characters
    itself)."""
    sys.stdout.write(clip_lines(terminal_safe(text)))


def _say_refusals(image: str, refusals) -> None:
    """qemu-img's "Could not open" line for each reason, as `qforensics: IMAGE: <qemu's message>`, then where
    and what in brackets (qemu prints only its first reason; scripts may match the line's start)."""
    for f in refusals:
        _say(f"qforensics: {image}: {f.qemu_message} [{f.one_line()}]")


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import build_info  # info brings the layout; map and recover start without it
    from .render.info_text import render_human

    with Image(args.image) as img:
        info = build_info(img, args.image)
        refusals = img.refusals
    _say_refusals(args.image, refusals)
    if refusals and not args.force:
        return EXIT_FAILED
    if args.output == "json":
        sys.stdout.write(json.dumps(info, indent=4) + "\n")
    else:
        _show(render_human(info))
    return EXIT_OK


def _write_report(image: str, output: str, hash_method: str = "auto") -> None:
    from .report import build_report

    out = _output_path(image, output)
    out.write_text(build_report(image, sys.argv, hash_method), encoding="utf-8")


def _cmd_report(args: argparse.Namespace) -> int:
    from . import progress

    with progress.Progress("report", 1, enabled=progress.wanted(args.quiet)):
        _write_report(args.image, args.o, args.hash)
    if not args.quiet:
        _say(f"report written to {args.o}")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from . import progress
    from .checks import check_image, unopened_report
    from .render.check_text import render_human as render_check

    with progress.Progress("check", 2 if args.html else 1,
                           enabled=progress.wanted(args.quiet, args.output == "json")) as bar:
        if args.html:
            with bar.share(1):
                _write_report(args.image, args.html)
        try:
            with Image(args.image) as img:
                report = check_image(img, _consent(args), args.image)
                cluster_size = img.header.cluster_size
        except ImageOpenError as exc:
            if exc.qemu_message is None:
                raise  # not a qcow2 image as qemu would see it either: the one-line error
            report, cluster_size = unopened_report(exc), 0
    if args.output == "json":
        sys.stdout.write(json.dumps(report.to_json(args.image), indent=4) + "\n")
    else:
        _show(render_check(report, args.image, cluster_size, args.verbose))
    _say_refusals(args.image, report.refusals)
    if not report.completed and not report.refusals:
        _say(f"qforensics: {args.image}: {report.failure}")
    return report.exit_code


def _consent(args: argparse.Namespace):
    """The user's consent to open backing and data files, or None when they gave none."""
    from .layers.chain import Consent

    if not (args.backing_dir or args.allow_image_dir):
        return None
    return Consent(Path(args.backing_dir) if args.backing_dir else None, args.allow_image_dir)


def _output_path(image: str, output: str) -> Path:
    """Where to write; never the evidence itself (same file by any path, symlink or hard link)."""
    from .paths import refuse_overwrite

    return refuse_overwrite(output, [image])


def _cmd_graph(args: argparse.Namespace) -> int:
    from .graph import build_graph, summarize
    from .render.graph_files import write_graph

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
        _show(f"{summary['nodes']} nodes, {summary['edges']} edges written to {out}\n")
        _show("nodes: " + ", ".join(f"{k} {v}" for k, v in summary["nodes-by-kind"].items()) + "\n")
        _show("edges: " + ", ".join(f"{k} {v}" for k, v in summary["edges-by-kind"].items()) + "\n")
        for u in summary["unreachable"]:
            _show(f"unreachable from the header: {u['label']}\n")
        for c in summary["cycles"]:
            _show("cycle: " + " -> ".join(c) + "\n")
    return EXIT_OK


def _guest_view(img, args: argparse.Namespace, opened: list, cipher=None):
    """The image's guest view (snapshot, backing chain, data file) as the user's consent allows."""
    from .layers.chain import Consent, open_chain
    from .model.snapshot_table import find_snapshot

    consent = _consent(args) or Consent()
    snapshot = find_snapshot(img.snapshots, args.snapshot) if args.snapshot else None
    return open_chain(img, consent, snapshot=snapshot, cipher=cipher, opened=opened, named=args.image)


def _cmd_map(args: argparse.Namespace) -> int:
    from .recovery.map import map_rows
    from .render.map_output import human_chunks, json_chunks

    opened: list = []
    unreadable: list = []  # the first 20, then only counted
    count = 0
    try:
        with Image(args.image) as img:
            refusals = img.open_refusals
            _say_refusals(args.image, refusals)
            if refusals and not args.force:
                return EXIT_FAILED
            layer = _guest_view(img, args, opened)
            names, at = [], layer
            while at is not None:
                names.append(at.name)
                at = at.backing

            def noted(batches):
                nonlocal count
                for rows in batches:
                    count += len(rows.reasons)
                    for i, why in sorted(rows.reasons.items())[:max(0, 20 - len(unreadable))]:
                        unreadable.append((int(rows.start[i]), int(rows.length[i]), why))
                    yield rows

            batches = noted(map_rows(layer))
            if args.output == "json":
                sys.stdout.writelines(json_chunks(batches))
            else:
                for chunk in human_chunks(batches, names):
                    _show(chunk)
    finally:
        for f in opened:
            f.close()
    for start, length, why in unreadable:
        _say(f"qforensics: {args.image}: guest 0x{start:x}+0x{length:x}: {why}")
    if count > len(unreadable):
        _say(f"qforensics: {args.image}: {count - len(unreadable)} more unreadable ranges")
    return EXIT_FAILED if count else EXIT_OK


def _read_passphrase(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--passphrase-file {path}: {exc.strerror}") from None
    return raw[:-1] if raw.endswith(b"\n") else raw


def _cmd_recover(args: argparse.Namespace) -> int:
    from . import progress
    from .recovery.evidence import recover_image

    passphrase = _read_passphrase(args.passphrase_file)
    with progress.Progress("recover", 1, enabled=progress.wanted(args.quiet)):
        result = recover_image(args.image, Path(args.o), passphrase=passphrase,
                               backing_dir=Path(args.backing_dir) if args.backing_dir else None,
                               allow_image_dir=args.allow_image_dir, snapshot=args.snapshot, scan=args.scan,
                               carve_dir=Path(args.carve_dir) if args.carve_dir else None,
                               log_path=Path(args.log) if args.log else None, argv=sys.argv)
    for line in result.notes:
        _say(f"qforensics: {args.image}: {line}")
    rec = result.recovery
    if args.output == "json":
        doc = {"output": args.o, "log": args.log, **rec.summary(),
               # the first MAX_MISSING_KEPT; --log lists them all
               "missing": [{"start": s, "length": n, "reason": why} for s, n, why in rec.missing],
               "notes": result.notes}
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        _say(_recover_line(rec, args.o, args.log))
    return EXIT_OK if rec.complete else EXIT_INCOMPLETE


def _recover_line(rec, out: str, log: str | None) -> str:
    """recover's closing line: what was written, and every reason it is not complete."""
    from .recovery.recover import ZEROED

    done = rec.size - rec.missing_bytes - rec.uncertain_bytes
    parts = []
    if rec.missing_bytes:
        unknown = f", {rec.unknown_bytes} of them unknown (unplaced tables may map them)" if rec.unknown_bytes else ""
        parts.append(f"{rec.missing_bytes} bytes in {rec.missing_count} ranges missing{unknown}")
    if rec.uncertain_count:
        codes = ", ".join(rec.uncertain)
        parts.append(f"{rec.uncertain_bytes} bytes in {rec.uncertain_count} ranges uncertain (read through "
                     f"structures the check faults: {codes})")
    u = rec.unplaced
    if u["tables"] or u["clusters"]:
        parts.append(f"{u['tables']} L2 tables and {u['clusters']} clusters ({u['bytes']} bytes) found but not "
                     "placed")
    if rec.zero_clusters and not rec.uncertain.get(ZEROED):
        parts.append(f"{rec.zero_clusters} allocated clusters hold only zeros (written by the guest, or wiped: "
                     "zero-cluster-ranges in the log)")
    tail = "; ".join(parts)
    return (f"recovered {done} of {rec.size} guest bytes to {out}" + (f"; {tail}" if tail else "")
            + (f" (see {log})" if tail and log else ""))


def _add_chain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", metavar="NAME|ID", help="the view of an internal snapshot (id first, then name, "
                   "as qemu-img -l)")
    p.add_argument("--backing-dir", metavar="DIR", help="open backing and data files named by the image only "
                   "inside DIR")
    p.add_argument("--allow-image-dir", action="store_true", help="allow backing and data files from the image's "
                   "own folder (never outside it)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits EXIT_FAILED (qemu-img's 1), never a code a command gives a verdict."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILED, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    # the subcommands' parsers are of the same class (add_subparsers takes the parser's own)
    parser = _Parser(prog="qforensics", description="Forensic analysis of qcow2 disk images.")
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
    check.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    check.add_argument("--verbose", action="store_true", help="every finding on its own line (human output "
                       f"folds runs over consecutive clusters and shows at most {MAX_LINES_PER_CODE} lines a code)")
    check.add_argument("--backing-dir", metavar="DIR", help="open the backing chain and data file (only inside DIR) "
                       "as qemu-img check does, and give its verdict when one cannot be opened")
    check.add_argument("--allow-image-dir", action="store_true", help="the same, from the image's own folder")
    check.set_defaults(func=_cmd_check)
    report = sub.add_parser("report", help="write the HTML audit report (self-contained, safe to hand over)")
    report.add_argument("image")
    report.add_argument("-o", required=True, metavar="REPORT.html")
    report.add_argument("--hash", choices=("auto", "full", "sparse"), default="auto",
                        help="evidence digest: full SHA-256 (sha256sum's), the sparse digest of the data extents, "
                        "or auto: full unless the file is over 4 GiB and more than half holes (default)")
    report.add_argument("--quiet", action="store_true", help="no progress bar and no closing message on stderr")
    report.set_defaults(func=_cmd_report)
    gmap = sub.add_parser("map", help="guest-to-host mapping, as qemu-img map (JSON identical to qemu's)")
    gmap.add_argument("image")
    gmap.add_argument("--output", choices=("human", "json"), default="human")
    gmap.add_argument("--force", action="store_true", help="map even when qemu would refuse to open the image")
    _add_chain_options(gmap)
    gmap.set_defaults(func=_cmd_map)
    rec = sub.add_parser("recover", help="write the guest disk as a sparse raw file, from intact or damaged "
                         "metadata; exit 0 complete, 1 failed, 2 ranges missing")
    rec.add_argument("image")
    rec.add_argument("-o", required=True, metavar="OUT.raw")
    _add_chain_options(rec)
    rec.add_argument("--passphrase-file", metavar="F", help="the passphrase of an encrypted image (one trailing "
                     "newline is dropped)")
    rec.add_argument("--scan", action="store_true", help="when the L1 table cannot place everything, scan the "
                     "file for L2 tables and place them from the evidence left (snapshot L1s, stale L1 copies, "
                     "dedup offsets)")
    rec.add_argument("--carve-dir", metavar="DIR", help="write clusters nothing references but that hold data, "
                     "with an index")
    rec.add_argument("--log", metavar="LOG.json", help="where each guest range came from, or why it is missing")
    rec.add_argument("--output", choices=("human", "json"), default="human",
                     help="json: the summary (bytes by source, missing ranges) as JSON on stdout")
    rec.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stderr")
    rec.set_defaults(func=_cmd_recover)
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
        qemu = getattr(exc, "qemu_message", None)  # a chain that cannot be opened: qemu-img's own words first
        _say(f"qforensics: {args.image}: {qemu} [{exc}]" if qemu else f"qforensics: {args.image}: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (| head): nothing more to say, and no noise about it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # last resort: a bug must not print a traceback over the evidence
        if os.environ.get("QFORENSICS_DEBUG"):
            raise
        _say(f"qforensics: {args.image}: internal error: {type(exc).__name__}: {exc} "
             "(set QFORENSICS_DEBUG=1 for the traceback)")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
