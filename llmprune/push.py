"""Publishing a pruned output directory to the Hugging Face Hub, with a generated model card.

`plan_push` is local and pure of network: it checks the directory is an llmprune output (config.json,
weights, run.json), lists the files to upload and renders the card. `push` runs the plan with
`huggingface_hub`: one `create_commit` holding every file plus README.md (the card). The library uploads
large files through LFS/Xet before committing and skips blobs the Hub already has, so rerunning after a
network failure re-sends only what is missing; nothing is committed until every file is up.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import LlmpruneError

ALWAYS_REMOTE = {".gitattributes", "README.md"}  # created by the Hub / replaced by the card: never a conflict
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".png", ".jpg", ".model")
LOGIN_HINT = "run `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN to a token with write access"


@dataclass(frozen=True)
class UploadFile:
    path_in_repo: str
    local: Path
    size: int

    @property
    def lfs(self) -> bool:
        return self.local.suffix in LFS_SUFFIXES or self.size > 10 << 20


@dataclass(frozen=True)
class PushPlan:
    folder: Path
    repo_id: str
    revision: str | None
    private: bool
    commit_message: str
    files: tuple[UploadFile, ...]
    card: str
    run: dict = field(repr=False, default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files) + len(self.card.encode())

    def to_json(self) -> dict:
        return {"folder": str(self.folder), "repo_id": self.repo_id, "revision": self.revision, "private": self.private,
                "commit_message": self.commit_message, "total_bytes": self.total_bytes,
                "files": [{"path": f.path_in_repo, "bytes": f.size, "lfs": f.lfs} for f in self.files]
                + [{"path": "README.md", "bytes": len(self.card.encode()), "lfs": False, "generated": True}],
                "card": self.card}


def check_pruned_dir(folder: str | Path) -> dict:
    """run.json of an llmprune output directory; a LlmpruneError naming everything missing otherwise."""
    from .io import weight_files

    folder = Path(folder)
    if not folder.is_dir():
        raise LlmpruneError(f"{folder} is not a directory: pass an output directory of `llmprune prune`.")
    rounds = sorted(p.parent.name for p in folder.glob("round*/config.json"))
    if rounds and not (folder / "config.json").exists():
        raise LlmpruneError(f"{folder} holds the rounds of an IMP run ({', '.join(rounds)}): push one of them, "
                            f"e.g. {folder / rounds[-1]}.")
    missing = []
    if not (folder / "config.json").exists():
        missing.append("config.json")
    try:
        weight_files(folder)
    except LlmpruneError:
        missing.append("weights (*.safetensors)")
    if not (folder / "run.json").exists():
        missing.append("run.json")
    if missing:
        raise LlmpruneError(f"{folder} is not an llmprune output: missing {', '.join(missing)} "
                            f"(an output of `llmprune prune ... -o DIR` has config.json, weights and run.json).")
    try:
        run = json.loads((folder / "run.json").read_text())
    except (ValueError, UnicodeDecodeError):
        run = None
    if not isinstance(run, dict):
        raise LlmpruneError(f"{folder}/run.json is not a JSON object; rerun the command that made {folder} to regenerate it.")
    return run


def upload_files(folder: Path) -> list[UploadFile]:
    """Every regular file under `folder` except hidden ones, leftovers of interrupted writes and README.md
    (replaced by the generated card); sorted by path."""
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts) or p.name.endswith((".partial", ".old")):
            continue
        if rel.as_posix() == "README.md":
            continue
        files.append(UploadFile(rel.as_posix(), p, p.stat().st_size))
    return files


def plan_push(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
              commit_message: str | None = None, base_model: str | None = None) -> PushPlan:
    """What `push` would upload (files, sizes, the card), without touching the network."""
    from .card import model_card, read_extras, run_facts
    from .io import read_config

    folder = Path(folder)
    run = check_pruned_dir(folder)
    _check_repo_id(repo_id)
    card = model_card(run, read_config(folder), read_extras(folder), repo_id=repo_id, base_model=base_model)
    facts = run_facts(run)
    what = facts["config"].get("pattern") or f"{100 * float(facts['sparsity']['global'].get('sparsity') or 0):.0f}%"
    kind = {"prune": "pruned", "finetune": f"sparse fine-tuned ({facts['task']})", "convert": "converted"}[facts["kind"]]
    version = run.get("llmprune_version") or __version__
    message = commit_message or (f"Upload {facts['method']} {what} {kind} model (llmprune {version})" if facts["kind"] != "convert"
                                 else f"Upload {facts['format']} model converted by llmprune {version}")
    return PushPlan(folder, repo_id, revision, private, message, tuple(upload_files(folder)), card, run)


def _check_repo_id(repo_id: str) -> None:
    import re

    if not re.fullmatch(r"[\w.-]+/[\w.-]+|[\w.-]+", repo_id) or repo_id.startswith((".", "-")) or ".." in repo_id:
        raise LlmpruneError(f"Invalid repo id '{repo_id}': use owner/name (letters, digits, '-', '_', '.').")


def git_blob_sha(data: bytes) -> str:
    """The git object id of a file's content, which the Hub reports as `blob_id` for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]  # ConnectionError, timeouts; HfHubHTTPError is one too
    for mod in ("httpx2", "httpx", "requests"):
        try:
            errors.append(__import__(mod).HTTPError if mod != "requests" else __import__(mod).RequestException)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def push(plan: PushPlan, *, token: str | None = None, force: bool = False, api=None) -> str:
    """Create the repo (and branch) if needed, refuse to overwrite another model unless `force`, then commit
    every file and the card in one commit. Returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = token or get_token()
    if not token:
        raise LlmpruneError(f"No Hugging Face token found: {LOGIN_HINT}.")
    api = api or HfApi(token=token)
    where = plan.repo_id + (f"@{plan.revision}" if plan.revision else "")
    try:
        api.create_repo(plan.repo_id, private=True if plan.private else None, exist_ok=True, repo_type="model")
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
        remote = set(api.list_repo_files(plan.repo_id, revision=plan.revision)) - ALWAYS_REMOTE
        stale = sorted(remote - {f.path_in_repo for f in plan.files})
        if remote and not force and not _same_run(api, plan):
            raise LlmpruneError(
                f"{where} already holds different content ({len(remote)} files, e.g. {sorted(remote)[0]}; its run.json "
                f"{'differs' if 'run.json' in remote else 'is missing'}): pass --force to overwrite it"
                f"{' (deleting ' + str(len(stale)) + ' files not in this upload)' if stale else ''}, "
                f"or choose another repo id or --revision.")
        ops = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.local)) for f in plan.files]
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.card.encode()))
        if force:
            ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        info = api.create_commit(plan.repo_id, ops, commit_message=plan.commit_message, revision=plan.revision)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise LlmpruneError(f"The Hub refused access to {plan.repo_id} (HTTP {status}): {LOGIN_HINT}, "
                                f"and check you may write to '{plan.repo_id.split('/')[0]}'.") from None
        raise LlmpruneError(_failed(where, e)) from None
    except _network_errors() as e:
        raise LlmpruneError(_failed(where, e)) from None
    return str(getattr(info, "commit_url", info))


def _failed(where: str, e: BaseException) -> str:
    detail = f"{type(e).__name__}: {e}".splitlines()[0][:160]
    return (f"Upload to {where} failed ({detail}); nothing was committed. Rerun the same command to continue: "
            f"files the Hub already received are skipped.")


def _same_run(api, plan: PushPlan) -> bool:
    """True when the remote run.json is byte-identical to ours (a rerun of the same upload)."""
    local = plan.folder / "run.json"
    try:
        infos = api.get_paths_info(plan.repo_id, ["run.json"], revision=plan.revision)
    except _network_errors() as e:
        if _is_not_found(e):
            return False
        raise
    return any(getattr(i, "path", None) == "run.json" and getattr(i, "blob_id", None) == git_blob_sha(local.read_bytes())
               for i in infos)


def _is_not_found(e: BaseException) -> bool:
    return getattr(getattr(e, "response", None), "status_code", None) == 404
