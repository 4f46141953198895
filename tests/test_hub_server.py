"""The local Hub server speaks enough of the Hub protocol for the unmodified clients.

Every test talks over a real socket to ``tests/hub_server.py`` through huggingface_hub's
``HfApi`` / ``hf_hub_download`` / ``snapshot_download``, timm's ``push_to_hf_hub`` /
``create_model("hf-hub:...")`` or transformers' ``push_to_hub`` / ``from_pretrained``.
Models are tiny and randomly initialised: nothing is downloaded from the internet.
"""

from __future__ import annotations

import hashlib
import json
import time
import types
from pathlib import Path

import pytest
import torch
from builders import TINY_ENCODER, run_python
from hub_fixtures import hub  # noqa: F401  (pytest fixture)
from hub_server import git_blob_sha1
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The transport's connect error class, whichever HTTP library this huggingface_hub uses."""
    errors: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module_name).ConnectError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        errors.append(requests.exceptions.ConnectionError)
    except ImportError:
        pass
    return tuple(errors)


def _make_folder(folder: Path) -> dict[str, bytes]:
    """README with YAML card, a small JSON, a real safetensors file. Returns {path: bytes}."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("---\nlicense: mit\ntags:\n- test\n---\n# Tiny\n")
    (folder / "config.json").write_text(json.dumps({"hidden": 4, "labels": ["a", "b"]}))
    save_file({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, str(folder / "model.safetensors"))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _lfs_puts(server) -> list:
    return server.requests_to("PUT", "/lfs-upload/")


# ----------------------------------------------------------------------------- (a) HfApi round trip
def test_upload_folder_then_download_gives_identical_bytes(hub, tmp_path):
    api = HfApi()
    repo_url = api.create_repo("user/tiny")
    assert repo_url.repo_id == "user/tiny"
    files = _make_folder(tmp_path / "src")

    commit = api.upload_folder(repo_id="user/tiny", folder_path=tmp_path / "src", commit_message="add files")
    assert len(commit.oid) == 40
    assert commit.oid == api.model_info("user/tiny").sha

    for name, content in files.items():
        path = hf_hub_download("user/tiny", name, cache_dir=tmp_path / "cache1")
        assert Path(path).read_bytes() == content
    snapshot = Path(snapshot_download("user/tiny", cache_dir=tmp_path / "cache2"))
    assert {p.name for p in snapshot.iterdir()} == set(files) | {".gitattributes"}
    for name, content in files.items():
        assert (snapshot / name).read_bytes() == content

    # regular file: ETag is the git blob sha1; LFS file: X-Linked-Etag is the sha256
    regular = get_hf_file_metadata(hf_hub_url("user/tiny", "config.json"))
    lfs = get_hf_file_metadata(hf_hub_url("user/tiny", "model.safetensors"))
    assert regular.etag == git_blob_sha1(files["config.json"])
    assert regular.commit_hash == commit.oid
    assert lfs.etag == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert lfs.size == len(files["model.safetensors"])
    stored = hub.server.repo("user/tiny").resolve("main").files
    assert stored["model.safetensors"].lfs
    assert not stored["config.json"].lfs

    # the token goes only in the Authorization header, and never to the LFS storage URL
    assert all(r.headers.get("authorization") == f"Bearer {hub.token}"
               for r in hub.server.requests if not r.route.startswith("/lfs-upload/"))
    assert len(_lfs_puts(hub.server)) == 1
    assert all("authorization" not in r.headers and hub.token not in r.path for r in _lfs_puts(hub.server))
    assert hub.server.errors == []


def test_tree_revision_and_refs_endpoints(hub, tmp_path):
    api = HfApi()
    api.create_repo("user/tree")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "a.txt").write_text("a")
    (tmp_path / "d" / "b.txt").write_text("b")
    commit = api.upload_folder(repo_id="user/tree", folder_path=tmp_path / "d")

    top = {e.path for e in api.list_repo_tree("user/tree")}
    assert top == {".gitattributes", "b.txt", "sub"}
    deep = {e.path for e in api.list_repo_tree("user/tree", recursive=True)}
    assert deep == top | {"sub/a.txt"}
    assert api.list_repo_files("user/tree", revision=commit.oid) == [".gitattributes", "b.txt", "sub/a.txt"]
    assert api.file_exists("user/tree", "sub/a.txt")
    assert not api.file_exists("user/tree", "nope.txt")
    assert api.repo_info("user/tree", revision=commit.oid[:10]).sha == commit.oid
    refs = api.list_repo_refs("user/tree")
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", commit.oid)]
    assert api.whoami()["name"] == "user"


@pytest.mark.integration
def test_subprocess_env_reaches_the_server(hub):
    api = HfApi()
    api.create_repo("user/sub")
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="user/sub")
    code = ("from huggingface_hub import hf_hub_download\n"
            "print(open(hf_hub_download('user/sub', 'a.txt')).read())")
    env = {"PATH": "/usr/bin:/bin", **hub.env}
    out = run_python("-c", code, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello"
    assert Path(hub.env["HF_HOME"], "hub", "models--user--sub").is_dir()


def test_raw_protocol_headers_range_and_error_codes(hub):
    """What any HTTP client sees: resolve headers, Range answers, X-Error-Code on misses."""
    import http.client
    from urllib.parse import urlsplit

    api = HfApi()
    api.create_repo("user/raw")
    blob = bytes(range(256)) * 4
    api.upload_file(path_or_fileobj=blob, path_in_repo="w.bin", repo_id="user/raw")
    api.upload_file(path_or_fileobj=b"text", path_in_repo="t.txt", repo_id="user/raw")
    sha = api.model_info("user/raw").sha

    conn = http.client.HTTPConnection(urlsplit(hub.url).netloc, timeout=5)

    def call(method: str, path: str, **headers):
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response, response.read()

    response, body = call("HEAD", "/user/raw/resolve/main/w.bin")
    assert response.status == 200
    assert body == b""
    assert response.headers["X-Repo-Commit"] == sha
    assert response.headers["X-Linked-Etag"] == f'"{hashlib.sha256(blob).hexdigest()}"'
    assert response.headers["X-Linked-Size"] == response.headers["Content-Length"] == str(len(blob))
    response, body = call("HEAD", f"/user/raw/resolve/{sha}/t.txt")
    assert response.headers["ETag"] == f'"{git_blob_sha1(b"text")}"'
    assert "X-Linked-Etag" not in response.headers
    response, body = call("GET", "/user/raw/resolve/main/w.bin", Range="bytes=1000-")
    assert response.status == 206
    assert body == blob[1000:]
    assert response.headers["Content-Range"] == f"bytes 1000-{len(blob) - 1}/{len(blob)}"
    for path, code in [("/user/nope/resolve/main/w.bin", "RepoNotFound"),
                       ("/user/raw/resolve/v2/w.bin", "RevisionNotFound"),
                       ("/user/raw/resolve/main/nope.bin", "EntryNotFound"),
                       ("/api/models/user/nope", "RepoNotFound"),
                       ("/api/models/user/raw/revision/refs%2Fpr%2F9", "RevisionNotFound")]:
        response, _ = call("GET", path)
        assert (response.status, response.headers["X-Error-Code"]) == (404, code), path
    conn.close()


def test_dataset_repos_use_the_datasets_prefix(hub, tmp_path):
    api = HfApi()
    api.create_repo("user/data", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="train.csv", repo_id="user/data",
                    repo_type="dataset")
    path = hf_hub_download("user/data", "train.csv", repo_type="dataset")
    assert Path(path).read_bytes() == b"a,b\n1,2\n"
    snapshot = Path(snapshot_download("user/data", repo_type="dataset", cache_dir=tmp_path / "c"))
    assert (snapshot / "train.csv").read_bytes() == b"a,b\n1,2\n"
    assert any(r.route == "/datasets/user/data/resolve/main/train.csv" for r in hub.server.requests)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/data")  # a dataset is not a model


# ----------------------------------------------------------------------------- (b) timm
def test_timm_push_and_load_back(hub):
    import timm
    from timm.models import push_to_hf_hub

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).eval()
    push_to_hf_hub(model, "user/timm-tiny")

    loaded = timm.create_model("hf-hub:user/timm-tiny", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.num_classes == 3
    pushed = {e.path for e in HfApi().list_repo_tree("user/timm-tiny")}
    assert {"config.json", "model.safetensors", "README.md"} <= pushed
    assert hub.server.errors == []
    assert hub.server.unrouted == []


# ----------------------------------------------------------------------------- (c) transformers
def test_transformers_push_and_from_pretrained(hub):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(**TINY_ENCODER, num_labels=3)
    model = BertForSequenceClassification(config).eval()
    model.push_to_hub("user/bert-tiny")

    loaded = BertForSequenceClassification.from_pretrained("user/bert-tiny").eval()
    input_ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, loaded(input_ids).logits)
    assert hub.server.repo("user/bert-tiny").resolve("main").files["model.safetensors"].lfs
    assert hub.server.errors == []
    assert hub.server.unrouted == []


# ----------------------------------------------------------------------------- (d) PRs and branches
def test_create_pr_and_branch_revisions(hub):
    api = HfApi()
    api.create_repo("user/revs")
    base = api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id="user/revs")

    pr = api.upload_file(path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id="user/revs", create_pr=True)
    assert pr.pr_num == 1
    assert pr.pr_revision == "refs/pr/1"
    assert pr.pr_url.endswith("/discussions/1")
    assert Path(hf_hub_download("user/revs", "f.txt", revision="refs/pr/1")).read_bytes() == b"v2"
    assert Path(hf_hub_download("user/revs", "f.txt")).read_bytes() == b"v1"
    assert api.repo_info("user/revs").sha == base.oid
    second = api.upload_file(path_or_fileobj=b"x", path_in_repo="g.txt", repo_id="user/revs", create_pr=True)
    assert second.pr_num == 2

    api.create_branch("user/revs", branch="dev")
    api.create_branch("user/revs", branch="dev", exist_ok=True)
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="only_dev.txt", repo_id="user/revs", revision="dev")
    assert Path(hf_hub_download("user/revs", "only_dev.txt", revision="dev")).read_bytes() == b"dev"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/revs", "only_dev.txt")
    with pytest.raises(RevisionNotFoundError):  # like the Hub, a commit does not create a branch
        api.upload_file(path_or_fileobj=b"z", path_in_repo="z.txt", repo_id="user/revs", revision="nope")
    refs = api.list_repo_refs("user/revs", include_pull_requests=True)
    assert sorted(b.name for b in refs.branches) == ["dev", "main"]
    assert sorted(p.ref for p in refs.pull_requests) == ["refs/pr/1", "refs/pr/2"]


def test_commit_with_stale_parent_is_rejected_and_deletes_work(hub):
    api = HfApi()
    api.create_repo("user/ops")
    first = api.upload_file(path_or_fileobj=b"1", path_in_repo="a/x.txt", repo_id="user/ops")
    api.upload_file(path_or_fileobj=b"2", path_in_repo="a/y.txt", repo_id="user/ops")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"3", path_in_repo="b.txt", repo_id="user/ops", parent_commit=first.oid)
    assert err.value.response.status_code == 412
    api.delete_file("a/x.txt", repo_id="user/ops")
    assert api.list_repo_files("user/ops") == [".gitattributes", "a/y.txt"]
    api.delete_folder("a", repo_id="user/ops")
    assert api.list_repo_files("user/ops") == [".gitattributes"]
    assert [c.commit_id for c in api.list_repo_commits("user/ops")][-2] == first.oid


# ----------------------------------------------------------------------------- (e) no-op re-push
def test_reupload_of_unchanged_files_sends_no_lfs_put_and_no_commit(hub, tmp_path):
    api = HfApi()
    api.create_repo("user/noop")
    _make_folder(tmp_path / "src")
    first = api.upload_folder(repo_id="user/noop", folder_path=tmp_path / "src")
    assert len(_lfs_puts(hub.server)) == 1
    hub.server.requests.clear()

    again = api.upload_folder(repo_id="user/noop", folder_path=tmp_path / "src")
    assert again.oid == first.oid
    assert _lfs_puts(hub.server) == []
    assert hub.server.requests_to("POST", "/commit/") == []

    (tmp_path / "src" / "config.json").write_text('{"hidden": 5}')
    changed = api.upload_folder(repo_id="user/noop", folder_path=tmp_path / "src")
    assert changed.oid != first.oid
    assert _lfs_puts(hub.server) == []
    (commit_request,) = hub.server.requests_to("POST", "/commit/")
    sent = [json.loads(line) for line in commit_request.body.splitlines()]
    assert [(op["key"], op["value"].get("path")) for op in sent[1:]] == [("file", "config.json")]


# ----------------------------------------------------------------------------- (f) failures
def test_wrong_token_gets_401_and_is_not_echoed(hub, tmp_path):
    hub.server.require_token = "hf_the_right_token"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi().create_repo("user/denied")
    assert err.value.response.status_code == 401
    assert hub.token not in str(err.value)
    with pytest.raises(HfHubHTTPError) as err:
        hf_hub_download("user/denied", "x.txt")
    assert err.value.response.status_code == 401
    assert ("model", "user/denied") not in hub.server.repos

    # with the right token everything, including the token-less LFS PUT, goes through;
    # an explicit token wins over HF_TOKEN, which is then sent nowhere
    start = len(hub.server.requests)
    api = HfApi(token="hf_the_right_token")
    api.create_repo("user/allowed")
    _make_folder(tmp_path / "src")
    api.upload_folder(repo_id="user/allowed", folder_path=tmp_path / "src")
    assert len(_lfs_puts(hub.server)) == 1
    assert all(hub.token not in json.dumps([r.path, dict(r.headers)]) for r in hub.server.requests[start:])


def test_stopped_server_raises_connection_errors_quickly(hub, monkeypatch):
    from huggingface_hub.utils import _http

    HfApi().create_repo("user/down")
    hub.server.stop()
    start = time.monotonic()
    with pytest.raises(_connection_errors()):
        HfApi().model_info("user/down")

    # On a connection error hf_hub_download retries the HEAD through http_backoff, sleeping
    # 1+2+4+8+8 s in huggingface_hub 2.4: make the sleeps free so the test stays fast.
    sleeps: list[float] = []
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(**{**vars(time), "sleep": sleeps.append}))
    with pytest.raises(LocalEntryNotFoundError) as err:
        hf_hub_download("user/down", "config.json")
    assert isinstance(err.value.__cause__, _connection_errors())
    assert time.monotonic() - start < 5


def test_missing_repo_file_and_revision_map_to_hub_errors(hub):
    api = HfApi()
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("user/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/missing", "config.json")
    api.create_repo("user/present")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/present", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/present", ".gitattributes", revision="v9")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("user/present")
    assert err.value.response.status_code == 409
    assert api.create_repo("user/present", exist_ok=True).repo_id == "user/present"
