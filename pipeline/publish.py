"""Upload a run's finished export to the Hugging Face Hub as a dataset repo.

Everything but the upload is checked here and testable offline: the export is finished and intact
(its manifest's checksums), and the plan names exactly the files a dataset repo needs (tables,
card, quality report and its plots; never the run store's units, rejects or manifest). The upload
itself is one ``huggingface_hub`` call. The token is read, never printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .store import RunStore

UPLOAD_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".md", ".png")
DEFAULT_TOKEN_ENV = "HF_TOKEN"


class PublishError(UserError):
    """The export cannot be published as asked (unfinished, damaged, a bad repo id, no token)."""


@dataclass(frozen=True)
class Plan:
    repo_id: str
    folder: Path            # the export's finished version (the run's link resolved)
    files: list[str]        # relative to folder, sorted
    sizes: list[int]
    private: bool

    def describe(self, token_from: str) -> str:
        lines = [f"publish {self.folder} -> https://huggingface.co/datasets/{self.repo_id} "
                 f"({'private' if self.private else 'public'} if created; token: {token_from})"]
        lines += [f"  {f}  {n} bytes" for f, n in zip(self.files, self.sizes)]
        return "\n".join(lines)


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"--repo-id {repo_id!r}: {e}") from None
    if repo_id.count("/") != 1:
        raise PublishError(f"--repo-id {repo_id!r}: use OWNER/NAME")
    return repo_id


def plan_upload(store: RunStore, repo_id: str, private: bool = False) -> Plan:
    """What would be uploaded; refuses an export that is missing, unfinished or damaged."""
    check_repo_id(repo_id)
    if not store.exists():
        raise PublishError(f"{store.path}: no such run")
    export = store.stage("export")
    manifest = export.manifest()
    if manifest is None:
        raise PublishError(f"run '{store.run_id}': the export stage has not finished "
                           f"(hierarcaps stage export --run {store.run_id})")
    if problems := export.verify():
        raise PublishError(f"run '{store.run_id}': the export is damaged ({'; '.join(problems[:3])}); "
                           f"rerun hierarcaps stage export --run {store.run_id}")
    files = sorted(f for f in manifest.get("files") or {} if "/" not in f and f.endswith(UPLOAD_SUFFIXES))
    if "README.md" not in files:
        raise PublishError(f"run '{store.run_id}': the export has no dataset card (README.md)")
    folder = export.path.resolve()
    return Plan(repo_id, folder, files, [(folder / f).stat().st_size for f in files], private)


def token_from_env(var: str | None) -> tuple[str | None, str]:
    """(token, where it came from). A variable named on purpose must be set; the default one may be
    unset, and then huggingface_hub's own login is used."""
    token = os.environ.get(var or DEFAULT_TOKEN_ENV) or None
    if var and token is None:
        raise PublishError(f"--token-env {var}: the environment variable is not set")
    return token, f"${var or DEFAULT_TOKEN_ENV}" if token else "huggingface_hub login"


def upload(plan: Plan, token: str | None) -> str:
    """Create the dataset repo if needed, upload the plan's files in one commit; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(plan.repo_id, repo_type="dataset", private=plan.private, exist_ok=True)
    info = api.upload_folder(repo_id=plan.repo_id, repo_type="dataset", folder_path=str(plan.folder),
                             allow_patterns=plan.files, commit_message="Upload a hierarcaps export")
    return str(getattr(info, "commit_url", info))


def publish(store: RunStore, repo_id: str, *, private: bool = False, token_env: str | None = None,
            dry_run: bool = False, say=print) -> str | None:
    """Check, show the plan, upload (unless ``dry_run``); returns the commit URL. Holds the run's
    lock, so no rerun of export can switch or remove the folder while it is read."""
    check_repo_id(repo_id)
    if not store.exists():
        raise PublishError(f"{store.path}: no such run")
    token, token_from = token_from_env(token_env)
    if not dry_run:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise PublishError("the Hugging Face Hub is switched off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, "
                               "as scripts/env.sh sets them): run with HF_HUB_OFFLINE=0 to publish")
    with store.lock("publish"):
        plan = plan_upload(store, repo_id, private)
        say(plan.describe(token_from))
        if dry_run:
            say("dry run: nothing uploaded")
            return None
        url = upload(plan, token)
    say(f"uploaded {len(plan.files)} files: {url}")
    return url
