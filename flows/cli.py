"""The `hierarcaps` command line: it sits beside the Prefect flows because it runs them, serves
them and hands the test set to curation; the library (pipeline/) imports neither.

Bad input (a config, a source file, a model id, a curation file) ends in one line,
``hierarcaps: error: <where>: <reason>``, and exit status 2; ``--debug`` shows the traceback
instead. Anything else is a bug: its traceback is shown, followed by one summary line (status 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

USAGE_ERROR = 2      # bad input, as argparse uses it
INTERNAL_ERROR = 1


def _debug_flag(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the traceback of an error instead of one line")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="tiny | small | paper")
    p.add_argument("--config", help="YAML config file (applied over the preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--run", dest="run_id", help="run id (default: derived from the config)")
    p.add_argument("--root", help="output root (default artifacts/)")
    p.add_argument("--executor", choices=["local", "ray"],
                   help="where model stages' units run (run.executor; the cluster: --set run.ray.address=...)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hierarcaps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _debug_flag(ap, False)
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
    p.add_argument("--allow-test-overlap", action="store_true",  # bench only
                   help="score a fine-tuned model whose training data overlapped the test set (recorded in the result)")

    p = sub.add_parser("status", help="show each stage of a run")
    p.add_argument("run_id")
    p.add_argument("--root")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="start a local Prefect server (SQLite) and serve the deployments")
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--no-server", action="store_true", help="only serve deployments (server already running)")

    p = sub.add_parser("curation-export", help="write the run's test chains to a CSV (or Label Studio tasks) for manual correction")
    p.add_argument("run_id")
    p.add_argument("out")
    p.add_argument("--root")
    p.add_argument("--format", choices=["csv", "label-studio"], default="csv",
                   help="label-studio: a tasks JSON at OUT and its labeling config beside it (OUT with .xml)")
    p.add_argument("--allow-tier4-edits", action="store_true", help="let curators edit tier 4 (the caption)")
    p = sub.add_parser("curation-review", help="write a self-contained review page (HTML + images) for the run's test chains")
    p.add_argument("run_id")
    p.add_argument("--out", required=True, help="folder to write (index.html, images/)")
    p.add_argument("--images", help="folder of local images, matched by the COCO id in their names")
    p.add_argument("--root")
    p.add_argument("--allow-tier4-edits", action="store_true", help="let curators edit tier 4 (the caption)")
    p = sub.add_parser("curation-import", help="read corrections (review page JSON, Label Studio export or CSV) into the run")
    p.add_argument("run_id")
    p.add_argument("csv", metavar="FILE")
    p.add_argument("--root")
    p.add_argument("--allow-tier4-edits", action="store_true", help="accept edits of tier 4 (the caption)")
    p.add_argument("--recheck", action="store_true", help="judge edited links with the run's NLI model (warnings)")

    p = sub.add_parser("publish", help="upload the run's export to the Hugging Face Hub as a dataset repo")
    p.add_argument("run_id")
    p.add_argument("--repo-id", required=True, metavar="OWNER/NAME")
    p.add_argument("--root", help="output root (default artifacts/)")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing one keeps its visibility)")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the token "
                   "(default HF_TOKEN, else huggingface_hub's login)")
    p.add_argument("--dry-run", action="store_true", help="check the export and print the plan; upload nothing")

    p = sub.add_parser("tiny-models", help="build (or locate) the offline tiny models")
    p.add_argument("--cache-dir")
    for p in sub.choices.values():     # --debug before or after the command (SUPPRESS keeps the first)
        _debug_flag(p, argparse.SUPPRESS)
    return ap


def _one_line(text: str) -> str:
    """A message on one line: a header ending in ':' runs into the first item, items join with '; '."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    if not parts:
        return ""
    head, rest = parts[0], parts[1:]
    return f"{head} {'; '.join(rest)}" if head.endswith(":") and rest else "; ".join(parts)


def user_error(e: BaseException) -> str | None:
    """``<where>: <reason>`` for an error caused by the input, None for one that is a bug."""
    from pipeline.config import ConfigError
    from pipeline.errors import UserError
    from pipeline.io.readers import ReaderError
    from pipeline.prompts import PromptError

    if isinstance(e, (ConfigError, UserError, ReaderError, PromptError)):
        return _one_line(str(e))
    if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) and " " in e.args[0]:
        return _one_line(e.args[0])      # a sentence (unknown stage, no such field), not a bare dict key
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text: {e.reason} at byte {e.start}"
    if isinstance(e, OSError):           # a bad path, no permission, disk full
        where = ": ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        return _one_line(f"{where}: {e.strerror or e}" if where else str(e))
    if type(e) is RuntimeError and " crashed in its process:" in str(e):
        # execute.py's report of an isolated stage's crash: the stage, the child's exception, its traceback
        head, _, child = str(e).partition("\n")
        exc = _one_line(child.split("\nTraceback (most recent call last)")[0])
        return f"{head} {exc} (--debug shows its traceback)"
    return None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:          # argparse has printed its usage and "hierarcaps: error: ..."
        return e.code if isinstance(e.code, int) else USAGE_ERROR
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("hierarcaps: interrupted (finished units are kept; rerun to resume)", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        if (msg := user_error(e)) is not None:
            print(f"hierarcaps: error: {msg}", file=sys.stderr)
            return USAGE_ERROR
        traceback.print_exc()
        print(f"hierarcaps: internal error: {type(e).__name__}: {_one_line(str(e))[:500]} "
              "(a bug: the traceback above shows where)", file=sys.stderr)
        return INTERNAL_ERROR


def _dispatch(args) -> int:
    from pipeline import runner

    if args.cmd in ("run", "stage", "align", "bench"):
        if getattr(args, "executor", None):
            args.overrides.append(f"run.executor={args.executor}")
        if getattr(args, "allow_test_overlap", False):
            args.overrides.append("bench.allow_test_overlap=true")
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
            print(f"hierarcaps: error: {store.root}/runs: no run '{args.run_id}'", file=sys.stderr)
            return USAGE_ERROR
        rows = runner.status_rows(config, store)
        print(json.dumps(rows, indent=2) if args.json else runner.format_status(rows))
        return 0
    if args.cmd == "serve":
        from flows.serve import serve

        return serve(port=args.port, start_server=not args.no_server)
    if args.cmd in ("curation-export", "curation-import", "curation-review"):
        from curation import curate, importer, label_studio, review

        config, store = runner.resolve(run_id=args.run_id, root=args.root)
        if args.cmd == "curation-export" and args.format == "label-studio":
            res = label_studio.export_label_studio(store, config.export, args.out, allow_tier4=args.allow_tier4_edits)
            print(f"wrote {res['items']} tasks to {res['tasks']} and the labeling config to {res['config']}")
        elif args.cmd == "curation-export":
            n = curate.export_for_curation(store, config.export, args.out)
            print(f"wrote {n} chains to {args.out}")
        elif args.cmd == "curation-review":
            res = review.write_review(store, config, args.out, args.images, allow_tier4=args.allow_tier4_edits)
            print(f"wrote {res['page']}: {res['items']} items, {res['local_images']} local images")
        else:
            res = importer.import_curation(store, config, args.csv, allow_tier4=args.allow_tier4_edits,
                                           recheck=args.recheck, model_cache=os.environ.get("HIERARCAPS_CACHE"))
            print(json.dumps(res, indent=2))
        return 0
    if args.cmd == "publish":
        from pipeline.publish import publish
        from pipeline.store import RunStore

        publish(RunStore(args.root or "artifacts", args.run_id), args.repo_id, private=args.private,
                token_env=args.token_env, dry_run=args.dry_run)
        return 0
    if args.cmd == "tiny-models":
        from pipeline.models.tiny import TINY_IDS, resolve_models

        for mid, path in resolve_models(list(TINY_IDS), args.cache_dir or os.environ.get("HIERARCAPS_CACHE")).items():
            print(mid, path)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
