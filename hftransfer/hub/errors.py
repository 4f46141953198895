"""Every huggingface_hub / HTTP / network failure as one ``HFTransferError`` line naming the problem and the fix.

Kept apart from ``push`` so that downloads, uploads and the start-up check of ``--push_to_hub`` word
the same failure the same way; the token is never part of a message.
"""
from __future__ import annotations

from ..errors import HFTransferError


def hub_error(e: Exception, repo_id: str, revision: str | None, action: str, token: str | None = None,
              retry: str | None = None) -> HFTransferError:
    """One line naming what failed and how to fix it, for any huggingface_hub / HTTP / network error."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    status = getattr(getattr(e, "response", None), "status_code", None)
    rev = f" revision '{revision}'" if revision else ""
    if isinstance(e, HFValidationError):
        problem = f"'{repo_id}' is not a valid Hub repo id: use namespace/name"
    elif isinstance(e, OfflineModeIsEnabled):
        problem = "HF_HUB_OFFLINE is set: unset it to reach the Hub"
    elif isinstance(e, GatedRepoError):
        problem = f"'{repo_id}' is gated: request access on its Hub page, then use a token of that account"
    elif status == 401:
        problem = (f"the Hub at {endpoint} rejected the token (401 Unauthorized) while trying to {action} '{repo_id}': "
                   "set HF_TOKEN to a valid token (write access to push) or run `hf auth login`")
    elif status == 403:
        problem = (f"the token may not {action} '{repo_id}' (403 Forbidden): use a token with write access to "
                   "that namespace, or another --hub_model_id")
    elif isinstance(e, RevisionNotFoundError):
        problem = f"'{repo_id}' has no{rev or ' such revision'} (404): check the branch, tag or PR name"
    elif (isinstance(e, RepositoryNotFoundError) or status == 404) and action == "download":
        problem = (f"model '{repo_id}' not found at {endpoint} (404): check the repo id (namespace/name) or the "
                   "local folder path, and for a private repo that your token can read it")
    elif isinstance(e, RepositoryNotFoundError) or status == 404:
        problem = (f"repo '{repo_id}' not found at {endpoint} (404) while trying to {action}: check --hub_model_id "
                   "(namespace/name) and that your token may create or write to that repo")
    elif isinstance(e, HfHubHTTPError) and status is not None:
        problem = f"the Hub at {endpoint} answered {status} while trying to {action} '{repo_id}': {_first_line(e)}"
    elif isinstance(e, LocalEntryNotFoundError) or _is_connection_error(e):
        problem = (f"cannot reach the Hub at {endpoint} to {action} '{repo_id}' ({type(e).__name__}): check the "
                   "network, a proxy or HF_ENDPOINT")
    else:
        problem = f"could not {action} '{repo_id}'{rev} ({type(e).__name__}: {_first_line(e)})"
    if retry is not None:
        problem += f"; the local output is complete, push it again with: {retry}"
    if token:
        problem = problem.replace(token, "***")
    return HFTransferError(problem)


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__


def _is_connection_error(e: BaseException) -> bool:
    """Transport failures of whichever HTTP library huggingface_hub uses (httpx or requests)."""
    for _ in range(5):  # the transport error may sit a few causes deep
        if e is None:
            return False
        library = type(e).__module__.split(".")[0]
        name = type(e).__name__
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if library.startswith(("httpx", "httpcore", "requests", "urllib3")) and "Error" in name and "Status" not in name:
            return True
        e = e.__cause__ or e.__context__
    return False
