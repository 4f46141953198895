"""pytest fixture ``hub``: a fresh local Hub server per test, with every client pointed at it.

``from hub_fixtures import hub`` in a conftest (or test module) makes it available. The fixture
yields a ``HubHandle`` with:

* ``url``    – base URL, e.g. ``http://127.0.0.1:41234`` (also what ``HF_ENDPOINT`` is set to);
* ``server`` – the ``HubServer`` (``requests`` log, ``require_token``, ``stop()``, ``file_bytes()``...);
* ``token``  – the token the in-process client sends (``HF_TOKEN``);
* ``env``    – the environment variables a *subprocess* needs to talk to this server:
  ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET``, ``HF_HOME``, ``HF_TOKEN`` (plus ``HF_HUB_CACHE``,
  timeouts and telemetry off); use ``{**os.environ, **hub.env}``;
* ``home``   – the temporary ``HF_HOME`` (download cache under ``home / "hub"``).

``huggingface_hub`` reads its settings into module constants at import time, so setting env
vars is not enough in-process: the fixture also patches ``huggingface_hub.constants``, the
endpoint frozen into the module-level ``HfApi`` behind ``huggingface_hub.create_repo`` /
``upload_folder`` / ``model_info`` (used by timm), transformers' cached ``HfApi`` and
``datasets.config``'s endpoint if those are imported. Everything is restored afterwards.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hub_server import HubServer

__all__ = ["hub", "HubHandle", "TEST_TOKEN", "point_clients_at"]

TEST_TOKEN = "hf_test_token_0123456789abcdef"
# Short on purpose: a down server must fail fast (the client still retries with backoff, see tests).
ETAG_TIMEOUT_S = 3
DOWNLOAD_TIMEOUT_S = 10


@dataclass
class HubHandle:
    url: str
    server: HubServer
    token: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)


def point_clients_at(monkeypatch: pytest.MonkeyPatch, url: str, home: Path, token: str) -> dict[str, str]:
    """Point huggingface_hub (and timm / transformers / datasets) at ``url`` for this test.

    Returns the environment a subprocess needs. All changes go through ``monkeypatch``.
    """
    import huggingface_hub.hf_api as hf_api_module
    from huggingface_hub import constants

    cache = home / "hub"
    env = {
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_TOKEN": token,
        "HF_HUB_ETAG_TIMEOUT": str(ETAG_TIMEOUT_S),
        "HF_HUB_DOWNLOAD_TIMEOUT": str(DOWNLOAD_TIMEOUT_S),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGING_FACE_HUB_TOKEN",
                 "HF_TOKEN_PATH", "HUGGINGFACE_HUB_CACHE", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(name, raising=False)

    patches = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_ETAG_TIMEOUT": ETAG_TIMEOUT_S,
        "HF_HUB_DOWNLOAD_TIMEOUT": DOWNLOAD_TIMEOUT_S,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    # `huggingface_hub.create_repo`, `.upload_folder`, `.model_info`... are bound methods of an
    # HfApi built at import time, whose endpoint was frozen then.
    monkeypatch.setattr(hf_api_module.api, "endpoint", url)

    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # restored (not rebuilt) afterwards
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        monkeypatch.setattr(datasets_config, "HF_ENDPOINT", url, raising=False)
        monkeypatch.setattr(datasets_config, "HUB_DATASETS_URL",
                            url + "/datasets/{repo_id}/resolve/{revision}/{path}", raising=False)
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(datasets_config, name):
                monkeypatch.setattr(datasets_config, name, False)
    return env


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Start a ``HubServer`` on a free port, point all clients at it, yield a ``HubHandle``."""
    server = HubServer()
    url = server.start()
    home = tmp_path_factory.mktemp("hf_home")
    try:
        env = point_clients_at(monkeypatch, url, home, TEST_TOKEN)
        yield HubHandle(url=url, server=server, token=TEST_TOKEN, home=home, env=env)
    finally:
        server.stop()
        # pooled keep-alive connections to the dead port must not leak into the next test
        from huggingface_hub.utils import _http

        close = getattr(_http, "close_session", None)
        if close is not None:
            close()
