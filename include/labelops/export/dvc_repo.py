"""Dataset versions with DVC in a git "dataset repository": one version = `dvc add` + `dvc push` + a verified pull
+ a git commit + an annotated tag `<project>/v<N>`, commit and tag pushed together (`git push --atomic`).

DVC runs from its own venv (its S3 plugin pins a botocore older than the one Airflow's amazon provider needs), so
it is called as a CLI by subprocess (`dvc_binary()`); git is the system `git`.

Layout of the repository (one branch, shared by every project; each project owns its folder):
  .dvc/config                 one DVC remote per project, named after it, by URL only (no endpoint, no secret)
  <path>/data.dvc             the dataset: one DVC-tracked directory, with `remote: <project>` (a per-output
                              remote, so a plain `dvc pull` / `dvc get` of any version uses the right bucket)
  <path>/.gitignore           written by `dvc add` (`/data`)
  <path>/<extra files>        `extra_git_files` (card, version.json...) under git
Tags `<project>/v<N>` are annotated; their message carries `Labelops-Run`, `Labelops-Project`, `Labelops-Path`,
`Labelops-Version` and `Labelops-Data-Sha256` (our hash of the data files) trailers; the commit carries the same.

publish() is atomic and idempotent:
- every call works in a fresh clone in its own temporary folder (so concurrent exports never share a work tree);
- a tag of the project naming the run id means the run already created its version: nothing happens;
- data files identical (sha256 of every file and path) to the latest version's: no version, the reason says so;
- the verification before tagging is a clean pull, not `dvc status -c`: the new commit is cloned into a second
  folder with an empty DVC cache, `dvc pull` downloads the data from the remote and every file is hashed against
  the files exported. (`dvc status -c` and `dvc push` trust a directory whose `.dir` manifest is on the remote:
  with an object deleted under it they still report "in sync" / "Everything is up to date".);
- the tag is made last and pushed with the commit in one `git push --atomic`: a failure anywhere before or in
  that push leaves no tag and nothing on the branch. DVC objects a failed attempt already uploaded stay in the
  bucket: they are content-addressed (named by their md5), so they are harmless, shared by the next attempt and
  removable with `dvc gc -c`;
- a push rejected because another export moved the branch (or took the tag number) is redone on the new head:
  the project's folder is its own, so its files are re-applied (no merge), N recomputed, a few times.

S3 access: credentials only in the environment of the `dvc` subprocesses (never in a file, a log or a message:
any error text is scrubbed of the `s3_env` secrets and of URL userinfo); the endpoint of a non-AWS S3 goes to the
clone's untracked `.dvc/config.local` (`endpointurl`) and the environment (`AWS_ENDPOINT_URL`), so `dvc get`
from outside works with `AWS_ENDPOINT_URL` set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")  # a tag component and a DVC remote name
TAG_RE = re.compile(r"^(?P<project>.+)/v(?P<version>[1-9][0-9]*)$")
TRAILER_RE = re.compile(r"^Labelops-(?P<key>[A-Za-z0-9-]+): (?P<value>.*)$", re.MULTILINE)
_SECRET_KEY_RE = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_AMBIENT_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_PROFILE")
_TAG_FORMAT = ("%(refname)%00%(objecttype)%00%(objectname)%00%(*objectname)%00%(taggerdate:iso-strict)%00"
               "%(contents)%1e")
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "labelops export", "GIT_AUTHOR_EMAIL": "labelops-export@localhost",
                "GIT_COMMITTER_NAME": "labelops export", "GIT_COMMITTER_EMAIL": "labelops-export@localhost"}


def dvc_binary() -> str:
    """The `dvc` CLI: $LABELOPS_DVC, else this repository's `.venv-dvc/bin/dvc`, else `dvc` on PATH."""
    if os.environ.get("LABELOPS_DVC"):
        return os.environ["LABELOPS_DVC"]
    local = REPO_ROOT / ".venv-dvc" / "bin" / "dvc"
    if local.exists():
        return str(local)
    return shutil.which("dvc") or "dvc"


class DatasetRepoError(RuntimeError):
    """A git or DVC step failed; the message is scrubbed of credentials."""


def data_digest(folder: Path) -> tuple[str, int]:
    """(sha256 over every file's relative path and bytes, number of files) of a folder: what DVC will track."""
    h, n = hashlib.sha256(), 0
    for p in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        if p.is_file():
            f = hashlib.sha256()
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    f.update(chunk)
            h.update(f"{p.relative_to(folder).as_posix()}\0{p.stat().st_size}\0{f.hexdigest()}\n".encode())
            n += 1
    return h.hexdigest(), n


def remote_name(project: str) -> str:
    """The DVC remote of a project (DVC lower-cases remote names)."""
    return re.sub(r"[^a-z0-9_-]", "_", project.lower())


def parse_tags(for_each_ref_output: str) -> list[dict]:
    """Version tags (`<project>/v<N>`) out of `git for-each-ref --format=_TAG_FORMAT refs/tags`, by version."""
    out = []
    for rec in for_each_ref_output.split("\x1e"):
        rec = rec.lstrip("\n")
        if not rec:
            continue
        ref, otype, oid, target, date, contents = rec.split("\0", 5)
        name = ref.removeprefix("refs/tags/")
        m = TAG_RE.match(name)
        if not m:
            continue
        trailers = {t["key"].lower(): t["value"].strip() for t in TRAILER_RE.finditer(contents)} \
            if otype == "tag" else {}
        out.append({"tag": name, "project": m["project"], "version": int(m["version"]),
                    "commit": target if otype == "tag" else oid, "run_id": trailers.get("run"),
                    "path": trailers.get("path"), "data_sha256": trailers.get("data-sha256"),
                    "created_at": date or None})
    return sorted(out, key=lambda v: (v["project"], v["version"]))


def _dvc_config_remotes(text: str) -> dict[str, dict[str, str]]:
    """The remotes of a DVC config file (configobj: `['remote "name"']` then `key = value` lines)."""
    remotes: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("["):
            m = re.fullmatch(r"\[\s*'?\s*remote\s+\"([^\"]+)\"\s*'?\s*\]", s)
            current = remotes.setdefault(m[1], {}) if m else None
        elif current is not None and "=" in s:
            k, v = s.split("=", 1)
            current[k.strip()] = v.strip().strip("'\"")
    return remotes


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


class _Tree:
    """A work folder of one call: runs git and dvc there with the call's environments, scrubbing every error."""

    def __init__(self, repo: DatasetRepo, root: Path) -> None:
        self.repo, self.root = repo, root
        self.site = root.parent / f".dvc-site-{root.name}"

    def git(self, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return self.repo._run(["git", *args], cwd=cwd or self.root, env=self.repo._git_env(),
                              timeout=self.repo.git_timeout, check=check)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.repo._run([self.repo.dvc, *args], cwd=self.root, env=self.repo._dvc_env(self.site),
                              timeout=self.repo.dvc_timeout, check=check)

    def rev(self, ref: str) -> str | None:
        p = self.git("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
        return (p.stdout.strip() or None) if p.returncode == 0 else None

    def tags(self) -> list[dict]:
        return parse_tags(self.git("for-each-ref", f"--format={_TAG_FORMAT}", "refs/tags").stdout)

    def write_local_config(self, remotes: list[str]) -> None:
        """The S3 endpoint of each remote in `.dvc/config.local` (untracked: DVC's own .gitignore lists it)."""
        endpoint = self.repo.endpoint
        cfg = self.root / ".dvc" / "config.local"
        if endpoint:
            cfg.write_text("".join(f"['remote \"{r}\"']\n    endpointurl = {endpoint}\n" for r in remotes))
        elif cfg.exists():
            cfg.unlink()


class DatasetRepo:
    """A dataset repository (git URL or path) and this dataset's folder and DVC remote in it."""

    max_attempts = 5  # pushes rejected because another export moved the branch
    git_timeout = 600
    dvc_timeout = 3600

    def __init__(self, repo_url: str, *, branch: str = "main", path: str, remote_url: str, s3_env: dict[str, str],
                 workdir: Path | None = None, dvc: str | None = None) -> None:
        p = PurePosixPath(str(path).strip("/"))
        if not p.parts or p.is_absolute() or any(part in ("", ".", "..") or part.startswith(".")
                                                  for part in p.parts):
            raise ValueError(f"path {path!r}: a relative folder of the repository without . or .. parts")
        if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or ".." in branch:
            raise ValueError(f"branch {branch!r} is not a plain branch name")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", remote_url):
            raise ValueError(f"remote_url {remote_url!r}: a URL such as s3://bucket/prefix/")
        self.repo_url, self.branch, self.path, self.remote_url = str(repo_url), branch, p.as_posix(), remote_url
        self._s3_env = {k: str(v) for k, v in s3_env.items()}
        self.endpoint = self._s3_env.get("AWS_ENDPOINT_URL_S3") or self._s3_env.get("AWS_ENDPOINT_URL")
        self._secrets = sorted({v for k, v in self._s3_env.items() if _SECRET_KEY_RE.search(k) and len(v) >= 3},
                               key=len, reverse=True)
        self.workdir = Path(workdir) if workdir else None
        self.dvc = dvc or dvc_binary()

    def __repr__(self) -> str:
        return f"DatasetRepo({self._scrub(self.repo_url)!r}, branch={self.branch!r}, path={self.path!r})"

    # -- processes --------------------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return _USERINFO_RE.sub(r"\g<scheme>***@", text)

    def _git_env(self) -> dict[str, str]:
        env = {**GIT_IDENTITY, **{k: v for k, v in os.environ.items() if k not in _AMBIENT_AWS}}
        env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C", LANG="C")
        return env

    def _dvc_env(self, site: Path) -> dict[str, str]:
        env = dict(os.environ) if "AWS_ACCESS_KEY_ID" not in self._s3_env else \
            {k: v for k, v in os.environ.items() if k not in _AMBIENT_AWS}
        env.update(self._s3_env)
        env.update(GIT_TERMINAL_PROMPT="0", DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(site),
                   DVC_STUDIO_OFFLINE="1", LC_ALL="C.UTF-8", LANG="C.UTF-8")
        return env

    def _run(self, args: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
             check: bool = True) -> subprocess.CompletedProcess:
        shown = " ".join(args[:3]) + (" ..." if len(args) > 3 else "")
        t0 = time.monotonic()
        try:
            p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, errors="replace",
                               timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DatasetRepoError(self._scrub(f"`{shown}` timed out after {timeout:.0f} s")) from None
        except FileNotFoundError:
            raise DatasetRepoError(f"`{args[0]}` not found (DVC: `make setup` builds .venv-dvc, or set "
                                   "LABELOPS_DVC)") from None
        log.debug("%s: exit %d in %.2f s", self._scrub(shown), p.returncode, time.monotonic() - t0)
        if check and p.returncode != 0:
            # (not `dvc -q`: it hides the error too)
            detail = "\n".join(x for x in (p.stderr.strip(), p.stdout.strip()) if x)
            detail = "\n".join(line for line in detail.splitlines() if line.strip() and not line.startswith(
                "Having any troubles?"))[-3000:]
            raise DatasetRepoError(self._scrub(f"`{' '.join(args)}` failed (exit {p.returncode}): {detail}"))
        return p

    def _tmp(self, prefix: str) -> Path:
        if self.workdir:
            self.workdir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.workdir))

    # -- reading --------------------------------------------------------------------------------------------

    def versions(self, project: str | None = None) -> list[dict]:
        """Versions on the remote, oldest first: {tag, project, version, commit, run_id, path, data_sha256,
        created_at}. Those of `project` (by tag name), or by default those of this repository's `path`."""
        tmp = self._tmp("labelops-tags-")
        try:
            t = _Tree(self, tmp)
            ls = t.git("ls-remote", "--tags", self.repo_url).stdout
            names = {line.split("\t", 1)[1].removeprefix("refs/tags/").removesuffix("^{}")
                     for line in ls.splitlines() if "\t" in line}
            if not any((m := TAG_RE.match(n)) and (project is None or m["project"] == project) for n in names):
                return []
            t.git("init", "-q", "--bare")
            spec = f"+refs/tags/{project}/v*:refs/tags/{project}/v*" if project else "+refs/tags/*:refs/tags/*"
            t.git("fetch", "-q", "--no-tags", "--depth=1", self.repo_url, spec)
            tags = t.tags()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if project:
            return [v for v in tags if v["project"] == project]
        return sorted((v for v in tags if v["path"] == self.path), key=lambda v: (v["version"], v["tag"]))

    def latest(self, project: str | None = None) -> dict | None:
        """The newest version (see versions()), or None."""
        vs = self.versions(project)
        return max(vs, key=lambda v: v["version"]) if vs else None

    def checkout(self, tag: str, dest: Path) -> Path:
        """A clone of the repository at `tag` in `dest` (new or empty) with the dataset pulled from its DVC
        remote; returns the dataset folder (`dest/<path>`, the files under `data/`)."""
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise ValueError(f"{dest} is not empty")
        site = self._tmp("labelops-dvc-site-")
        try:
            t = _Tree(self, dest)
            t.site = site
            dest.mkdir(parents=True, exist_ok=True)
            t.git("-c", "advice.detachedHead=false", "clone", "-q", "--branch", tag, self.repo_url, ".")
            pointer = dest / self.path / "data.dvc"
            if not pointer.exists():
                raise DatasetRepoError(f"{tag} has no {self.path}/data.dvc")
            m = re.search(r"^\s+remote:\s*(\S+)\s*$", pointer.read_text(), re.MULTILINE)
            remotes = [m[1]] if m else list(_dvc_config_remotes((dest / ".dvc" / "config").read_text()))
            t.write_local_config(remotes)
            t.dvc("pull", f"{self.path}/data.dvc")
        finally:
            shutil.rmtree(site, ignore_errors=True)
        return dest / self.path

    # -- publishing -----------------------------------------------------------------------------------------

    def publish(self, files_dir: Path, *, project: str, run_id: str, message: str,
                extra_git_files: dict[str, bytes] | None = None) -> dict:
        """The files of `files_dir` as the next version `<project>/v<N>` (see the module doc). Returns
        {"created", "tag", "commit", "version", "reason"}; raises DatasetRepoError when a step fails (then no
        tag and no commit reached the remote)."""
        files_dir = Path(files_dir)
        if not PROJECT_RE.match(project):
            raise ValueError(f"project {project!r}: letters, digits, _ and - only")
        if not run_id or not run_id.strip() or "\n" in run_id or "\r" in run_id or len(run_id) > 250:
            raise ValueError(f"run id {run_id!r}: one line, at most 250 characters")
        extras = self._check_extras(extra_git_files or {})
        message = (message or "").strip() or f"{project}: dataset export, run {run_id}"
        for text in (message, *[b.decode("utf-8", "replace") for b in extras.values()]):
            if any(s in text for s in self._secrets if len(s) >= 8):
                raise ValueError("the commit message or an extra file contains an S3 credential")
        if not files_dir.is_dir():
            raise ValueError(f"{files_dir} is not a folder")
        t0 = time.monotonic()
        tmp = self._tmp(f"labelops-export-{project}-")
        try:
            result = self._publish(tmp, files_dir, project, run_id, message, extras)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("export %s run %s: %s in %.1f s", project, run_id,
                 f"created {result['tag']}" if result["created"] else result["reason"], time.monotonic() - t0)
        return result

    def _check_extras(self, extras: dict[str, bytes]) -> dict[str, bytes]:
        out = {}
        for name, content in extras.items():
            p = PurePosixPath(name)
            if (not p.parts or p.is_absolute() or any(part in ("", ".", "..") for part in p.parts)
                    or p.parts[0] in ("data", "data.dvc", ".gitignore")):
                raise ValueError(f"extra git file {name!r}: a relative path, not data, data.dvc or .gitignore")
            if not isinstance(content, (bytes, bytearray)):
                raise TypeError(f"extra git file {name!r}: bytes expected")
            out[p.as_posix()] = bytes(content)
        return out

    def _publish(self, tmp: Path, files_dir: Path, project: str, run_id: str, message: str,
                 extras: dict[str, bytes]) -> dict:
        work = _Tree(self, tmp / "work")
        work.root.mkdir()
        work.git("clone", "-q", "--no-checkout", self.repo_url, ".")
        work.git("fetch", "-q", "--tags", "origin")  # every tag, also any not reachable from a branch
        remote = remote_name(project)
        folder = work.root / self.path
        staged = tmp / "data"  # the files as DVC will see them: copied once, hashed once
        shutil.copytree(files_dir, staged, symlinks=False)
        digest, n_files = data_digest(staged)
        if not n_files:
            raise ValueError(f"{files_dir} has no file to export")
        pointer: dict[str, bytes] | None = None  # data.dvc and .gitignore once DVC made and pushed them
        for attempt in range(1, self.max_attempts + 1):
            base = work.rev(f"refs/remotes/origin/{self.branch}")
            mine = [v for v in work.tags() if v["project"] == project]
            done = next((v for v in mine if v["run_id"] == run_id), None)
            if done:
                return {"created": False, "tag": done["tag"], "commit": done["commit"], "version": done["version"],
                        "reason": f"this run created {done['tag']} already"}
            last = max(mine, key=lambda v: v["version"]) if mine else None
            if last and last["data_sha256"] == digest:
                return {"created": False, "tag": last["tag"], "commit": last["commit"], "version": last["version"],
                        "reason": f"no change since {last['tag']}"}
            version = (last["version"] if last else 0) + 1
            tag = f"{project}/v{version}"
            self._checkout_head(work, base, remote)
            # The project's folder is its own: emptied (but for data/ once added) and written anew.
            if folder.exists():
                for child in folder.iterdir():
                    if child.name != "data" or pointer is None:
                        _remove(child)
            folder.mkdir(parents=True, exist_ok=True)
            if pointer is None:
                shutil.move(staged, folder / "data")
                pointer = self._add_and_push(work, remote, folder, digest)
            for name, content in pointer.items():
                (folder / name).write_bytes(content)
            for name, content in extras.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(content)
            work.git("add", "-A", "--", self.path, ".dvc/config")
            trailers = (f"Labelops-Project: {project}\nLabelops-Run: {run_id}\nLabelops-Version: {version}\n"
                        f"Labelops-Path: {self.path}\nLabelops-Data-Sha256: {digest}\nLabelops-Files: {n_files}\n")
            (tmp / "commit-msg").write_text(f"{message}\n\n{trailers}")
            work.git("commit", "-q", "--no-verify", "--allow-empty", "-F", str(tmp / "commit-msg"))
            commit = work.rev("HEAD")
            if attempt == 1:
                self._verify(tmp, work, remote, digest)
            (tmp / "tag-msg").write_text(f"{project} v{version}\n\n{trailers}")
            work.git("tag", "-a", tag, "-F", str(tmp / "tag-msg"))
            push = work.git("push", "--atomic", "--porcelain", "origin", f"HEAD:refs/heads/{self.branch}",
                            f"refs/tags/{tag}", check=False)
            if push.returncode == 0:
                return {"created": True, "tag": tag, "commit": commit, "version": version, "reason": None}
            # Rejected: retry on the new head if another export moved the branch (or took the tag), else fail.
            work.git("tag", "-d", tag)
            work.git("fetch", "-q", "--force", "--prune", "--prune-tags", "--tags", "origin")
            theirs = work.rev(f"refs/remotes/origin/{self.branch}")
            if theirs == base:
                raise DatasetRepoError(self._scrub(
                    f"git push of {tag} to {self.repo_url} failed (nothing pushed): "
                    f"{(push.stderr.strip() or push.stdout.strip())[-2000:]}"))
            ours = next((v for v in work.tags() if v["tag"] == tag and v["commit"] == commit), None)
            if ours:  # the push went through after all (its answer was lost)
                return {"created": True, "tag": tag, "commit": commit, "version": version, "reason": None}
            log.info("export %s: %s was taken or the branch moved (attempt %d of %d): redoing on the new head",
                     project, tag, attempt, self.max_attempts)
            time.sleep(random.uniform(0.1, 0.5) * attempt)
        raise DatasetRepoError(f"export {project} run {run_id}: the branch kept moving, {self.max_attempts} "
                               "attempts rejected (nothing pushed)")

    def _checkout_head(self, work: _Tree, base: str | None, remote: str) -> None:
        """The work tree at the remote branch's head (or a new branch, DVC initialised in a first commit), with
        this project's DVC remote in .dvc/config and its endpoint in .dvc/config.local."""
        if base:
            work.git("checkout", "-q", "-f", "-B", self.branch, base)
        else:  # empty repository, or no such branch yet: a branch with no commit, an empty index and tree
            work.git("symbolic-ref", "HEAD", f"refs/heads/{self.branch}")
            work.git("read-tree", "--empty")
            for child in work.root.iterdir():
                if child.name != ".git":
                    _remove(child)
        config, local = work.root / ".dvc" / "config", work.root / ".dvc" / "config.local"
        local.unlink(missing_ok=True)  # an endpoint for a remote not (yet) in .dvc/config would be invalid
        initialised = config.exists() and work.git("ls-files", "--error-unmatch", ".dvc/config",
                                                   check=False).returncode == 0
        if not initialised:
            if (work.root / ".dvc").exists():
                _remove(work.root / ".dvc")
            work.dvc("init", "-q")
        url = _dvc_config_remotes(config.read_text()).get(remote, {}).get("url")
        if url is None:  # what `dvc remote add` writes, without its second of start-up
            text = config.read_text()
            if text and not text.endswith("\n"):
                text += "\n"
            config.write_text(f"{text}['remote \"{remote}\"']\n    url = {self.remote_url}\n")
        elif url != self.remote_url:
            work.dvc("remote", "modify", remote, "url", self.remote_url)
        work.write_local_config([remote])
        if not initialised:
            work.git("add", "-A", "--", ".dvc", ".dvcignore")
            (work.root.parent / "init-msg").write_text(
                "Dataset repository: DVC initialised\n\nDatasets live in <folder>/data (DVC-tracked) with one "
                "DVC remote per project; versions are the tags <project>/v<N>.\n")
            work.git("commit", "-q", "--no-verify", "-F", str(work.root.parent / "init-msg"))

    def _add_and_push(self, work: _Tree, remote: str, folder: Path, digest: str) -> dict[str, bytes]:
        """`dvc add` of <path>/data with the project's remote named in data.dvc, then `dvc push` to it."""
        import yaml

        t0 = time.monotonic()
        rel = f"{self.path}/data"
        work.dvc("add", rel)
        doc = yaml.safe_load((folder / "data.dvc").read_text())
        doc["outs"][0]["remote"] = remote
        (folder / "data.dvc").write_text(yaml.safe_dump(doc, sort_keys=False))
        t1 = time.monotonic()
        work.dvc("push", "-r", remote, f"{rel}.dvc")
        log.info("dvc add %.1f s, dvc push %.1f s (%s)", t1 - t0, time.monotonic() - t1, digest[:12])
        return {name: (folder / name).read_bytes() for name in ("data.dvc", ".gitignore")}

    def _verify(self, tmp: Path, work: _Tree, remote: str, digest: str) -> None:
        """The new commit cloned into an empty folder, its data pulled from the remote (empty cache: every object
        downloaded) and hashed against the exported files: the version is readable before it gets its tag."""
        t0 = time.monotonic()
        check = _Tree(self, tmp / "verify")
        check.root.mkdir()
        check.git("clone", "-q", "--branch", self.branch, str(work.root), ".")
        check.write_local_config([remote])
        check.dvc("pull", f"{self.path}/data.dvc")
        got, n = data_digest(check.root / self.path / "data")
        if got != digest:
            raise DatasetRepoError(f"verification failed: the data pulled back from {self.remote_url} differs from "
                                   f"the files exported ({n} files)")
        log.info("verified by a clean pull in %.1f s", time.monotonic() - t0)
        shutil.rmtree(check.root, ignore_errors=True)
