"""Publishing to the Hugging Face Hub: check a push target, push a folder or a finished run, download a model.

Hub code pushes folders and never calls into a model: ``TransferModel.push_to_hub`` saves itself and
its card into a folder and hands that to ``push_folder``. ``check_push_target`` is what
``--push_to_hub`` runs before the first training step (token, user name, repo id, branch, and the
repo itself, as transformers' ``Trainer`` does at start-up), so a push that cannot succeed fails in
seconds, not after training.

Every huggingface_hub / network error becomes an ``HFTransferError`` whose one-line message names
the problem and the fix (``errors.hub_error``; the recipes print it and exit with status 2); the
local output folder is never modified by a failed push. The token is read by huggingface_hub
itself (``token`` argument, ``HF_TOKEN``, or ``hf auth login``): it is never printed, written to a
card or a config, and a push refuses to upload a text file that contains it.

Retry a failed push of a finished run without retraining::

    python -m hftransfer.hub OUTPUT_DIR --hub_model_id user/name [--hub_private] [--hub_revision BRANCH] [--hub_create_pr]
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path

from ..errors import HFTransferError, exit_on_user_error, show_progress_messages
from ..files import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CONFIG_NAME,
    CONTRASTIVE_DIR,
    DAPT_DIR,
    DRAWS_DIR,
    EPISODIC_DIR,
    ENCODER_CONFIG_NAME,
    FEATURE_CACHE_DIR,
    IMAGE_PROCESSOR_NAME,
    NATIVE_CONFIG_NAME,
    REMOTE_CODE_NAME,
    SCRATCH_DIR,
    TMP_SUFFIX,
    TUNE_DIR,
    stale_native_files,
)
from .card import write_model_card
from .errors import hub_error

logger = logging.getLogger(__name__)

# Training state that is not part of the published model.
# scratch/: the from-scratch comparison runs; their numbers are in all_results.json and the card
# tune/: --tune's study database and trial records (the card and tune_results.json carry the study)
# draws/: few-shot draws 1..N-1 (few_shot_results.json carries their numbers); dapt/, contrastive/: the backbone
# weights a phase before the fine-tune wrote, already inside the exported model
PUSH_IGNORE_PATTERNS = [f"{CHECKPOINT_DIR}/*", f"{BEST_DIR}/*", f"{SCRATCH_DIR}/*", f"{FEATURE_CACHE_DIR}/*",
                        f"{TUNE_DIR}/*", f"{DRAWS_DIR}/*", f"{DAPT_DIR}/*", f"{CONTRASTIVE_DIR}/*", f"{EPISODIC_DIR}/*", f"*{TMP_SUFFIX}",
                        "*.lock"]
# Remote files that would mislead loaders if they outlived a re-push in another layout.
STALE_MODEL_PATTERNS = ["*.safetensors", "*.bin", NATIVE_CONFIG_NAME, ENCODER_CONFIG_NAME, CONFIG_NAME,
                        REMOTE_CODE_NAME, IMAGE_PROCESSOR_NAME]
TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".csv")
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.md"]


def is_main_process() -> bool:
    """False on every rank but 0 of a distributed launch (torchrun / accelerate set RANK)."""
    return os.environ.get("RANK", "0") == "0"


def check_push_target(repo_id: str | None, private: bool, revision: str | None, create_pr: bool,
                      output_dir_name: str) -> str:
    """Make sure a push can succeed before a run starts training; returns the repo id to push to.

    Resolves the token (one line if there is none) and ``repo_id`` ``None`` to ``<your
    user>/<output_dir_name>`` (whoami), checks the repo id / ``revision`` / ``create_pr``
    combination, and creates the repo if missing (``private`` applies only then), as transformers'
    ``Trainer`` does at start-up. Nothing is committed; the branch is created at push time.
    """
    if repo_id:
        _branch(repo_id, revision, create_pr)  # offline mistakes first: no network call for a typo
    api, token = _api()
    repo_id = repo_id or _default_repo_id(api, token, output_dir_name, retry=None)
    _branch(repo_id, revision, create_pr)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one actionable line
        raise hub_error(e, repo_id, None, action="create", token=token) from None
    return repo_id


def push_output_dir(output_dir: Path, repo_id: str | None, private: bool, revision: str | None, create_pr: bool,
                    commit_message: str = "Upload fine-tuned model with hftransfer") -> str:
    """Write the model card of a finished run, then upload the run folder; returns the commit or PR URL.

    Uploads everything in ``output_dir`` except ``checkpoints/`` and ``best_model/`` (the model,
    its native config and tokenizer, ``README.md``, ``all_results.json``, ``config.yaml``, eval
    predictions). ``repo_id`` ``None`` means ``<your user>/<output_dir name>``; the repo is created
    if missing (``private`` applies only then); ``revision`` names a branch, created from main if
    missing; ``create_pr`` opens a pull request against main. Re-pushing an unchanged folder makes
    no commit. Only the main process uploads: other ranks return ``""``.
    """
    output_dir = Path(output_dir)
    if not is_main_process():
        return ""
    if not (output_dir / CONFIG_NAME).is_file():
        raise HFTransferError(f"'{output_dir}' holds no exported model: push the output_dir of a finished run")
    api, token = _api()
    repo_id = repo_id or _default_repo_id(api, token, output_dir.name, _retry_command(output_dir, None, private,
                                                                                     revision, create_pr))
    _branch(repo_id, revision, create_pr)
    write_model_card(output_dir, repo_id=repo_id)
    retry = _retry_command(output_dir, repo_id, private, revision, create_pr)
    return _upload(api, token, output_dir, repo_id, private, revision, create_pr, commit_message, retry)


def push_folder(folder: Path, repo_id: str, private: bool = False, revision: str | None = None,
                create_pr: bool = False, commit_message: str = "Upload model with hftransfer",
                token: str | None = None) -> str:
    """Upload ``folder`` as it is (a saved model with its ``README.md``) to ``repo_id``; returns the commit or PR URL.

    The repo and the branch ``revision`` are created if missing; ``create_pr`` opens a pull request
    against main. Only the main process uploads: other ranks return ``""``.
    """
    if not is_main_process():
        return ""
    _branch(repo_id, revision, create_pr)
    api, token = _api(token)
    return _upload(api, token, Path(folder), repo_id, private, revision, create_pr, commit_message, retry=None)


def download_model(repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """``snapshot_download`` of the model files of ``repo_id`` (``hf-hub:`` prefix accepted) -> local folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    repo_id = repo_id.removeprefix("hf-hub:")
    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=MODEL_FILE_PATTERNS))
    except HFValidationError:
        raise HFTransferError(f"'{repo_id}' is neither an existing folder nor a Hub repo id (namespace/name): "
                              "check the path") from None
    except Exception as e:  # noqa: BLE001 - every failure becomes one actionable line
        raise hub_error(e, repo_id, revision, action="download", token=token) from None


# ---------------------------------------------------------------------------------------------
def _api(token: str | None = None):
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise HFTransferError("no Hugging Face token: set HF_TOKEN to a token with write access or run `hf auth login`")
    return HfApi(token=token), token


def _retry_command(output_dir: Path, repo_id: str | None, private: bool, revision: str | None, create_pr: bool) -> str:
    args = [str(output_dir)] + (["--hub_model_id", repo_id] if repo_id else []) + (["--hub_private"] if private else [])
    args += (["--hub_revision", revision] if revision else []) + (["--hub_create_pr"] if create_pr else [])
    return "python -m hftransfer.hub " + shlex.join(args)


def _default_repo_id(api, token: str, name: str, retry: str | None) -> str:
    try:
        user = api.whoami()["name"]
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, f"<you>/{name}", None, action="look up your user name", token=token, retry=retry) from None
    return f"{user}/{name}"


def _branch(repo_id: str, revision: str | None, create_pr: bool) -> str | None:
    """Validate the push target before anything is written or sent; the branch to commit to (None: main)."""
    from huggingface_hub.utils import validate_repo_id

    branch = revision if revision not in (None, "", "main") else None
    if create_pr and branch:
        raise HFTransferError(f"--hub_create_pr opens a pull request against main, so it cannot target branch "
                              f"'{revision}': drop --hub_revision, or drop --hub_create_pr to commit to the branch")
    try:
        validate_repo_id(repo_id)
    except Exception:  # noqa: BLE001
        raise HFTransferError(f"'{repo_id}' is not a valid Hub repo id: use namespace/name with letters, digits, "
                              "'-', '_' and '.' (e.g. --hub_model_id your-user/my-model)") from None
    return branch


def _upload(api, token: str, folder: Path, repo_id: str, private: bool, revision: str | None, create_pr: bool,
            commit_message: str, retry: str | None) -> str:
    branch = _branch(repo_id, revision, create_pr)
    _check_no_token_inside(folder, token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        head = api.repo_info(repo_id, revision=branch or "main").sha
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=branch, create_pr=create_pr,
                                 commit_message=commit_message,
                                 ignore_patterns=PUSH_IGNORE_PATTERNS + stale_native_files(folder),
                                 delete_patterns=STALE_MODEL_PATTERNS)
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, repo_id, branch, action="push", token=token, retry=retry) from None
    url = info.pr_url or info.commit_url
    where = f"{repo_id}@{branch}" if branch else repo_id
    if info.oid == head and not info.pr_url:
        logger.info(f"hub: nothing changed, {where} already holds this model ({url})")
    else:
        logger.info(f"hub: pushed to {where}: {url}")
    return url


def _check_no_token_inside(folder: Path, token: str) -> None:
    """Refuse to publish a text file that contains the token (a config or log that captured it)."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or not path.name.endswith(TEXT_SUFFIXES) or rel.split("/")[0] in (CHECKPOINT_DIR, BEST_DIR):
            continue
        if token in path.read_text(errors="ignore"):
            raise HFTransferError(f"'{rel}' contains your Hugging Face token: remove it from that file and "
                                  "revoke the token before pushing")


def main(argv: list[str] | None = None) -> None:
    """``python -m hftransfer.hub OUTPUT_DIR --hub_model_id ...``: (re)push a finished run."""
    parser = argparse.ArgumentParser(description="Push a finished hftransfer run folder to the Hugging Face Hub.",
                                     allow_abbrev=False)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--hub_model_id", default=None, help="namespace/name (default: <your user>/<folder name>)")
    parser.add_argument("--hub_private", action="store_true", help="create the repo as private")
    parser.add_argument("--hub_revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--hub_create_pr", action="store_true", help="open a pull request against main")
    args = parser.parse_args(argv)
    show_progress_messages()
    with exit_on_user_error():
        push_output_dir(args.output_dir, args.hub_model_id, args.hub_private, args.hub_revision, args.hub_create_pr)


if __name__ == "__main__":
    main()
