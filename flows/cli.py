"""The `hierarcaps` command line: it sits beside the Prefect flows because it runs them, serves
them and hands the test set to curation; the library (pipeline/) imports neither."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="tiny | small | paper")
    p.add_argument("--config", help="YAML config file (applied over the preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--run", dest="run_id", help="run id (default: derived from the config)")
    p.add_argument("--root", help="output root (default artifacts/)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hierarcaps", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="run the pipeline (default stages) through the Prefect flow")
    _common(p)
    p.add_argument("--stages", help="comma-separated stages (default: all but align, bench)")
    p.add_argument("--force", action="store_true", help="recompute even on a cache hit")
    p.add_argument("--limit", type=int, help="read at most N rows from each source")
    p.add_argument("--no-prefect", action="store_true", help="run stages in-process without Prefect")

    p = sub.add_parser("stage", help="(re)run one stage of a run")
    p.add_argument("name")
    _common(p)
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-prefect", action="store_true")

    for name, what in (("align", "RE-fine-tune a text encoder on the run's chains (align.* config)"),
                       ("bench", "HierarCaps benchmark, zero-shot vs fine-tuned (bench.* config)")):
        p = sub.add_parser(name, help=what)
        _common(p)
        p.add_argument("--force", action="store_true")
        p.add_argument("--no-prefect", action="store_true")

    p = sub.add_parser("status", help="show each stage of a run")
    p.add_argument("run_id")
    p.add_argument("--root")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="start a local Prefect server (SQLite) and serve the deployments")
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--no-server", action="store_true", help="only serve deployments (server already running)")

    p = sub.add_parser("curation-export", help="write the run's test chains to a CSV for manual correction")
    p.add_argument("run_id")
    p.add_argument("out")
    p.add_argument("--root")
    p = sub.add_parser("curation-import", help="read a corrected curation CSV back into the run")
    p.add_argument("run_id")
    p.add_argument("csv")
    p.add_argument("--root")

    p = sub.add_parser("tiny-models", help="build (or locate) the offline tiny models")
    p.add_argument("--cache-dir")
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    from pipeline.config import ConfigError
    from pipeline.errors import UserError
    from pipeline.io.readers import ReaderError

    try:
        return _dispatch(args)
    except (ConfigError, UserError, ReaderError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"hierarcaps: error: {msg}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from pipeline import runner

    if args.cmd in ("run", "stage", "align", "bench"):
        stages = {"stage": [getattr(args, "name", None)], "align": ["align"], "bench": ["bench"]}.get(
            args.cmd, args.stages.split(",") if getattr(args, "stages", None) else None)
        config, store = runner.resolve(args.preset, args.config, args.overrides, args.run_id,
                                       getattr(args, "limit", None), args.root)
        stages = runner.check_stages(stages)
        print(f"run {store.run_id} -> {store.path}", file=sys.stderr)
        if args.no_prefect:
            runner.run_stages(config, store, stages, force=args.force)
        else:
            from flows.build import build_hierarcaps

            build_hierarcaps(config=config.model_dump(mode="json"), run_id=store.run_id, stages=stages,
                             force=args.force)
        print(runner.format_status(runner.status_rows(config, store)))
        return 0
    if args.cmd == "status":
        config, store = runner.resolve(run_id=args.run_id, root=args.root)
        if not store.exists():
            print(f"hierarcaps: error: no run '{args.run_id}' under {store.root}/runs", file=sys.stderr)
            return 2
        rows = runner.status_rows(config, store)
        print(json.dumps(rows, indent=2) if args.json else runner.format_status(rows))
        return 0
    if args.cmd == "serve":
        from flows.serve import serve

        return serve(port=args.port, start_server=not args.no_server)
    if args.cmd in ("curation-export", "curation-import"):
        from curation import curate

        config, store = runner.resolve(run_id=args.run_id, root=args.root)
        if args.cmd == "curation-export":
            n = curate.export_for_curation(store, config.export, args.out)
            print(f"wrote {n} chains to {args.out}")
        else:
            res = curate.import_curation(store, config.export, args.csv)
            print(json.dumps(res, indent=2))
        return 0
    if args.cmd == "tiny-models":
        from pipeline.models.tiny import resolve_model

        for mid in ("tiny/llama-chat", "tiny/t5", "tiny/nli"):
            print(mid, resolve_model(mid, args.cache_dir or os.environ.get("HIERARCAPS_CACHE")))
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
