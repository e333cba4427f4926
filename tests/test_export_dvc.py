"""Dataset versions (labelops.export.dvc_repo) against the real DVC CLI (.venv-dvc), real git (a bare repository
in tmp_path as the "remote") and the local S3 (the moto server of the `s3` fixture).

One module-scoped history (v1 then v2 of one project) is shared by the tests that only read it or must leave it
unchanged; each of those compares the bare repository's refs before and after itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from labelops.export.dvc_repo import DatasetRepo, DatasetRepoError, dvc_binary

DVC = dvc_binary()
pytestmark = pytest.mark.skipif(
    shutil.which(DVC) is None,
    reason=f"no DVC CLI at {DVC!r}: `make setup` builds .venv-dvc (or set LABELOPS_DVC)")

# moto checks no signature: a distinctive secret that must never show up in the repository, a log or an error.
SECRET = f"labelops-test-secret-{uuid.uuid4().hex}"
PROJECT = "banking_support"
PATH = f"datasets/{PROJECT}"

V1 = {"dataset.jsonl": b'{"id": 1, "label": "card_arrival"}\n{"id": 2, "label": "top_up"}\n',
      "splits/train.jsonl": b'{"id": 1}\n', "splits/test.jsonl": b'{"id": 2}\n',
      "annotations.parquet": os.urandom(150_000)}
V2 = {"dataset.jsonl": V1["dataset.jsonl"] + b'{"id": 3, "label": "lost_card"}\n',
      "splits/train.jsonl": b'{"id": 1}\n{"id": 3}\n',  # splits/test.jsonl is gone in v2
      "annotations.parquet": V1["annotations.parquet"], "held_back.jsonl": b""}


def s3_env(s3) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "labelops-test-key", "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3.meta.endpoint_url}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def bare_repo(path: Path) -> Path:
    """A bare repository as the dataset repository's remote. Its HEAD names git's default branch (`master`),
    not `main`: clones of it warn about a HEAD to a ref that does not exist; the export must not mind."""
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def refs(bare: Path) -> dict[str, str]:
    return dict(reversed(line.split(" ", 1)) for line in git(bare, "for-each-ref", "--format=%(objectname) %(refname)")
                .splitlines())


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def read_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def dvc_env(s3, tmp: Path) -> dict[str, str]:
    """What a person needs for `dvc pull` / `dvc get` from outside: the S3 settings in the environment only."""
    return {**os.environ, **s3_env(s3), "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site")}


def make_repo(bare: Path, s3, tmp: Path, project: str = PROJECT, **kw) -> DatasetRepo:
    kw.setdefault("remote_url", f"s3://labelops/{project}/dvc/")
    return DatasetRepo(str(bare), path=f"datasets/{project}", s3_env=s3_env(s3), workdir=tmp / "work", **kw)


@pytest.fixture(scope="module")
def history(s3, tmp_path_factory):
    """v1 then v2 of PROJECT in a new dataset repository; the seconds each publish took."""
    root = tmp_path_factory.mktemp("dvc-history")
    bare = bare_repo(root / "datasets.git")
    repo = make_repo(bare, s3, root)
    seconds = []
    results = []
    for n, files in ((1, V1), (2, V2)):
        t0 = time.monotonic()
        results.append(repo.publish(write_files(root / f"v{n}", files), project=PROJECT, run_id=f"manual__{n}",
                                    message=f"{PROJECT}: export {n}",
                                    extra_git_files={"card.md": f"# {PROJECT} v{n}\n".encode(),
                                                     "version.json": b'{"n": %d}\n' % n}))
        seconds.append(round(time.monotonic() - t0, 1))
    print(f"publish seconds (v1 with the repository's init, v2): {seconds}")
    return SimpleNamespace(root=root, bare=bare, repo=repo, v1=results[0], v2=results[1], seconds=seconds)


def test_v1_and_v2_are_created_as_tagged_commits(history):
    v1, v2 = history.v1, history.v2
    assert v1 == {"created": True, "tag": f"{PROJECT}/v1", "commit": v1["commit"], "version": 1, "reason": None}
    assert v2 == {"created": True, "tag": f"{PROJECT}/v2", "commit": v2["commit"], "version": 2, "reason": None}
    r = refs(history.bare)
    assert r["refs/heads/main"] == v2["commit"]
    assert git(history.bare, "rev-parse", f"{PROJECT}/v1^{{commit}}").strip() == v1["commit"]
    assert git(history.bare, "cat-file", "-t", f"{PROJECT}/v1").strip() == "tag"  # annotated
    assert "Labelops-Run: manual__1" in git(history.bare, "tag", "-l", "--format=%(contents)", f"{PROJECT}/v1")
    body = git(history.bare, "log", "-1", "--format=%B", v2["commit"])
    assert body.startswith(f"{PROJECT}: export 2\n") and "Labelops-Run: manual__2" in body
    assert f"Labelops-Project: {PROJECT}" in body
    # the first commit initialised DVC; the repository holds pointers, never the data
    assert git(history.bare, "log", "--format=%s", "main").splitlines()[-1] == "Dataset repository: DVC initialised"
    tree = git(history.bare, "ls-tree", "-r", "--name-only", "main").split()
    assert sorted(tree) == sorted([".dvc/.gitignore", ".dvc/config", ".dvcignore", f"{PATH}/.gitignore",
                                   f"{PATH}/data.dvc", f"{PATH}/card.md", f"{PATH}/version.json"])
    assert git(history.bare, "show", f"main:{PATH}/card.md") == f"# {PROJECT} v2\n"
    assert f"remote: {PROJECT}" in git(history.bare, "show", f"main:{PATH}/data.dvc")
    config = git(history.bare, "show", "main:.dvc/config")
    assert f"url = s3://labelops/{PROJECT}/dvc/" in config and "endpoint" not in config


def test_versions_and_latest_from_the_remote(history):
    vs = history.repo.versions()
    assert [(v["tag"], v["version"], v["commit"], v["run_id"]) for v in vs] == [
        (f"{PROJECT}/v1", 1, history.v1["commit"], "manual__1"), (f"{PROJECT}/v2", 2, history.v2["commit"], "manual__2")]
    assert history.repo.latest()["tag"] == f"{PROJECT}/v2"
    assert history.repo.versions("no_such_project") == [] and history.repo.latest("no_such_project") is None


def test_each_tag_gives_its_bytes_back_from_a_fresh_clone(history, s3, tmp_path):
    """checkout() (clone at the tag + dvc pull), then the tools a person would use with only the environment:
    `git clone -b <tag>` + `dvc pull`, and `dvc get <repo> <path>/data --rev <tag>`."""
    for n, files in ((1, V1), (2, V2)):
        folder = history.repo.checkout(f"{PROJECT}/v{n}", tmp_path / f"checkout{n}")
        assert folder == tmp_path / f"checkout{n}" / PATH
        assert read_files(folder / "data") == files
        assert (folder / "card.md").read_text() == f"# {PROJECT} v{n}\n"
    env = dvc_env(s3, tmp_path)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--branch", f"{PROJECT}/v1", str(history.bare), str(clone)], check=True,
                   capture_output=True)
    out = subprocess.run([DVC, "pull", "-q"], cwd=clone, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert read_files(clone / PATH / "data") == V1
    got = tmp_path / "got"
    out = subprocess.run([DVC, "get", str(history.bare), f"{PATH}/data", "--rev", f"{PROJECT}/v1", "-o", str(got)],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert read_files(got) == V1


def test_the_same_run_again_creates_nothing(history, tmp_path):
    before = refs(history.bare)
    for files in (V1, {"other.jsonl": b"other data\n"}):  # whatever the files: the run has its version
        result = history.repo.publish(write_files(tmp_path / uuid.uuid4().hex, files), project=PROJECT,
                                      run_id="manual__1", message="again")
        assert result == {"created": False, "tag": f"{PROJECT}/v1", "commit": history.v1["commit"], "version": 1,
                          "reason": f"this run created {PROJECT}/v1 already"}
    assert refs(history.bare) == before


def test_unchanged_data_makes_no_version_and_says_so(history, tmp_path):
    before = refs(history.bare)
    result = history.repo.publish(write_files(tmp_path / "same", V2), project=PROJECT, run_id="manual__3",
                                  message="nothing new", extra_git_files={"card.md": b"a new card, same data\n"})
    assert result == {"created": False, "tag": f"{PROJECT}/v2", "commit": history.v2["commit"], "version": 2,
                      "reason": f"no change since {PROJECT}/v2"}
    assert refs(history.bare) == before


def test_a_failed_dvc_push_leaves_no_tag_and_no_commit(history, s3, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="labelops.export.dvc_repo")
    before = refs(history.bare)
    repo = make_repo(history.bare, s3, tmp_path, project="broken", remote_url="s3://no-such-bucket/broken/dvc/")
    with pytest.raises(DatasetRepoError) as err:
        repo.publish(write_files(tmp_path / "files", V1), project="broken", run_id="manual__1", message="x")
    assert "dvc push" in str(err.value) and "bucket does not exist" in str(err.value)
    assert refs(history.bare) == before
    assert SECRET not in str(err.value) and SECRET not in caplog.text


def test_a_rejected_git_push_leaves_nothing_and_a_rerun_creates_the_version(history, s3, tmp_path):
    """The data was pushed and verified; the atomic push of commit + tag is refused: no tag, no commit. The
    objects already in S3 are content-addressed: the re-run finds them and makes the version."""
    before = refs(history.bare)
    hook = history.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refused by the test' >&2\nexit 1\n")
    hook.chmod(0o755)
    repo = make_repo(history.bare, s3, tmp_path, project="gamma")
    try:
        with pytest.raises(DatasetRepoError, match="nothing pushed.*refused by the test"):
            repo.publish(write_files(tmp_path / "files", V1), project="gamma", run_id="scheduled__1", message="x")
    finally:
        hook.unlink()
    assert refs(history.bare) == before
    result = repo.publish(tmp_path / "files", project="gamma", run_id="scheduled__1", message="x")
    assert result["created"] and result["tag"] == "gamma/v1"
    assert read_files(repo.checkout("gamma/v1", tmp_path / "co") / "data") == V1
    assert refs(history.bare)[f"refs/tags/{PROJECT}/v2"] == before[f"refs/tags/{PROJECT}/v2"]


def test_credentials_never_reach_the_repository_or_an_error(history, s3, tmp_path):
    """No blob, tree, commit or tag of the repository holds the secret (nor the endpoint, which is machine-local);
    a failing `dvc` that prints its environment has it scrubbed from the error."""
    objects = subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=history.bare,
                             capture_output=True, check=True).stdout
    assert objects and SECRET.encode() not in objects
    assert s3.meta.endpoint_url.encode() not in objects
    fake = tmp_path / "dvc"
    fake.write_text('#!/bin/sh\necho "boom: key=$AWS_ACCESS_KEY_ID secret=$AWS_SECRET_ACCESS_KEY" >&2\nexit 3\n')
    fake.chmod(0o755)
    before = refs(history.bare)
    repo = make_repo(history.bare, s3, tmp_path, project="delta", dvc=str(fake))
    with pytest.raises(DatasetRepoError) as err:
        repo.publish(write_files(tmp_path / "files", V1), project="delta", run_id="r1", message="x")
    assert "boom: key=*** secret=***" in str(err.value) and SECRET not in str(err.value)
    assert refs(history.bare) == before
    assert SECRET not in repr(repo)
    with pytest.raises(ValueError, match="credential"):
        repo.publish(tmp_path / "files", project="delta", run_id="r1", message="x",
                     extra_git_files={"card.md": f"oops {SECRET}".encode()})


def test_two_projects_exporting_at_once(s3, tmp_path, caplog):
    """Into an empty repository, at once: alpha, beta, and a second run of alpha with other data. They race to
    initialise the repository and to push; the losers redo their version on the new head (recomputing N). All
    versions land, both folders are at the branch head, and a plain `dvc pull` of the head gets each project's
    data from its own remote."""
    caplog.set_level(logging.INFO, logger="labelops.export.dvc_repo")
    bare = bare_repo(tmp_path / "shared.git")
    runs = {("alpha", "scheduled__1"): {"a.jsonl": b"alpha data\n"},
            ("alpha", "scheduled__2"): {"a.jsonl": b"alpha data, more of it\n"},
            ("beta", "scheduled__1"): {"b.jsonl": b"beta data\n", "x/y.bin": os.urandom(5000)}}
    barrier, results, errors = threading.Barrier(len(runs)), {}, []

    def export(project: str, run_id: str) -> None:
        try:
            repo = make_repo(bare, s3, tmp_path / project / run_id, project=project)
            files = write_files(tmp_path / project / run_id / "files", runs[project, run_id])
            barrier.wait()
            results[project, run_id] = repo.publish(files, project=project, run_id=run_id, message=f"{project} export")
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=export, args=key) for key in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(r["created"] for r in results.values()), results
    assert sorted(r["tag"] for r in results.values()) == ["alpha/v1", "alpha/v2", "beta/v1"]
    assert "redoing on the new head" in caplog.text  # the losers of the race did retry
    tree = git(bare, "ls-tree", "-r", "--name-only", "main").split()
    assert "datasets/alpha/data.dvc" in tree and "datasets/beta/data.dvc" in tree
    assert git(bare, "log", "--format=%s", "main").count("Dataset repository: DVC initialised") == 1
    config = git(bare, "show", "main:.dvc/config")
    assert "s3://labelops/alpha/dvc/" in config and "s3://labelops/beta/dvc/" in config
    alpha_v1 = next(key for key, r in results.items() if r["tag"] == "alpha/v1")
    alpha_v2 = next(key for key, r in results.items() if r["tag"] == "alpha/v2")
    got = make_repo(bare, s3, tmp_path, project="alpha").checkout("alpha/v1", tmp_path / "alpha_v1")
    assert read_files(got / "data") == runs[alpha_v1]
    head = tmp_path / "head"
    subprocess.run(["git", "clone", "-q", "--branch", "main", str(bare), str(head)], check=True, capture_output=True)
    out = subprocess.run([DVC, "pull", "-q"], cwd=head, env=dvc_env(s3, tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert read_files(head / "datasets" / "alpha" / "data") == runs[alpha_v2]
    assert read_files(head / "datasets" / "beta" / "data") == runs["beta", "scheduled__1"]
