"""The Dockerfile's steps, run here: no container runtime exists on these machines, so this test reads
the Dockerfile and does what `docker build` would do under a temporary root (every absolute path of
the image lives below it), from a clean build context (the tree less .dockerignore): the build
stage's COPY and RUN lines as written, then the runtime stage, which gets only what its COPY
--from lines take (the build stage's tree is deleted before anything runs). Then the image's CMD
starts, in sandbox mode, and must serve a cancel and the OpenAPI document through its Envoy, the
`batchgate` command must run, and SIGTERM (the STOPSIGNAL) must stop everything cleanly.

What only a real build can check (the base image, users, layers) is checked on the file instead:
a numeric non-root USER, exec-form CMD, no compiler or pip cache carried into the runtime.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from gateway.render import OPENAPI_PATH
from gateway.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): instructions with continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            stages.append(Stage(words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def env_pairs(rest: str) -> list[tuple[str, str]]:
    return [tuple(word.split("=", 1)) for word in shlex.split(rest)]


def dockerignore_filter(context: Path):
    patterns = [p.strip() for p in (context / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]

    def excluded(relative: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!")
            parts = relative.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            hit = any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes)
            if hit:
                result = not negate
        return result

    def ignore(directory: str, names: list[str]) -> set[str]:
        base = Path(directory).relative_to(context)
        return {n for n in names if excluded(str(base / n) if str(base) != "." else n)}

    return ignore


class Builder:
    """Runs a Dockerfile's instructions with every absolute image path below `root`."""

    def __init__(self, root: Path, context: Path, args: dict[str, str]) -> None:
        self.root = root
        self.context = context
        self.args = args
        self.env: dict[str, str] = {}
        self.cwd = root

    def rooted(self, path: str) -> Path:
        return Path(path) if path.startswith(str(self.root)) else self.root / path.lstrip("/")

    def expand(self, text: str) -> str:
        values = {**self.args, **self.base_env(), **self.env}
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), ""), text)

    @staticmethod
    def base_env() -> dict[str, str]:
        """The host's environment, less this checkout's virtualenv: the base image's Python is the
        machine's python3 (the test checks the versions match)."""
        path = [p for p in os.environ["PATH"].split(":") if not p.startswith(str(ROOT))]
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        return {**env, "PATH": ":".join(path), "HOME": os.environ.get("HOME", "/root")}

    def set_env(self, rest: str) -> None:
        for name, value in env_pairs(rest):
            value = ":".join(str(self.rooted(v)) if v.startswith("/") else v for v in value.split(":"))
            self.env[name] = self.expand(value)

    def workdir(self, rest: str) -> None:
        path = self.expand(rest)
        self.cwd = self.rooted(path) if path.startswith("/") or path.startswith(str(self.root)) else self.cwd / path
        self.cwd.mkdir(parents=True, exist_ok=True)

    def destination(self, dest: str) -> Path:
        dest = self.expand(dest)
        return self.rooted(dest) if dest.startswith("/") else self.cwd / dest

    def copy(self, rest: str, source_root: Path | None) -> None:
        words = [w for w in shlex.split(rest) if not w.startswith("--chown") and not w.startswith("--from")]
        *sources, dest = words
        target = self.destination(dest)
        into_directory = dest.endswith("/") or len(sources) > 1 or dest in (".", "./")
        for source in sources:
            source = self.expand(source)
            if source_root is None:
                path = self.context / source
            else:
                path = source_root / source.lstrip("/")
            if not path.exists():
                raise AssertionError(
                    f"COPY {rest}: {source} is not in the {'context' if source_root is None else 'stage'}"
                )
            if path.is_dir():
                final = target if not (into_directory and source not in (".", "./")) else target / path.name
                if source_root is None and source in (".", "./"):
                    shutil.copytree(
                        path, final, dirs_exist_ok=True, symlinks=True, ignore=dockerignore_filter(self.context)
                    )
                else:
                    shutil.copytree(path, final, dirs_exist_ok=True, symlinks=True)
            else:
                final = target / path.name if into_directory else target
                final.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, final)

    def run(self, rest: str) -> None:
        command = re.sub(r"--mount=\S+\s*", "", rest).strip()
        for literal in re.findall(r"(?<![\w$/.])/(?:opt|src|app|usr|var|etc|srv|home)\b\S*", command):
            raise AssertionError(f"RUN names the image path {literal} literally: use an ENV variable")
        proc = subprocess.run(
            ["sh", "-c", command],
            cwd=self.cwd,
            env={**self.base_env(), **self.env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, f"RUN {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory):
    """Builds the Dockerfile's stages under a temporary root; returns (root, runtime env, cwd, CMD)."""
    base = tmp_path_factory.mktemp("image")
    root, context = base / "root", base / "context"
    shutil.copytree(ROOT, context, symlinks=True, ignore=dockerignore_filter(ROOT))
    args, stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert [s.name for s in stages] == ["build", "1"], "a build stage and one runtime stage"
    tag = args["PYTHON_IMAGE"]
    assert f"python:{sys.version_info.major}.{sys.version_info.minor}-" in tag, "the image's Python is not this one"
    build, runtime = stages
    builder = Builder(root, context, args)
    for keyword, rest in build.instructions:
        {"ENV": builder.set_env, "WORKDIR": builder.workdir, "RUN": builder.run}.get(
            keyword, lambda rest, keyword=keyword: builder.copy(rest, None) if keyword == "COPY" else None
        )(rest)
    # The runtime stage starts from the base image: only its COPY --from lines bring anything over.
    built = base / "built"
    root.rename(built)
    root.mkdir()
    final = Builder(root, context, args)
    cmd = None
    for keyword, rest in runtime.instructions:
        if keyword == "ENV":
            final.set_env(rest)
        elif keyword == "WORKDIR":
            final.workdir(rest)
        elif keyword == "COPY":
            assert "--from=build" in rest, f"the runtime stage copies only from the build stage: {rest}"
            final.copy(rest, built)
        elif keyword == "RUN":
            final.run(rest)
        elif keyword == "CMD":
            cmd = json.loads(rest)
    shutil.rmtree(built)
    return root, final.env, final.cwd, cmd, runtime.instructions


def test_the_runtime_stage_carries_no_build_tools_and_runs_as_non_root(image) -> None:
    root, env, cwd, cmd, instructions = image
    user = dict(instructions)["USER"]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), f"USER {user}: numeric and not root"
    assert dict(instructions)["STOPSIGNAL"] == "SIGTERM"
    assert cmd and cmd[0] == "python", "exec-form CMD, so the stop signal reaches Python as PID 1"
    site = next(root.rglob("site-packages"))
    assert not list(site.glob("grpc_tools*")), "protoc (grpcio-tools) left in the runtime venv"
    assert not list(site.glob("setuptools*"))
    assert not list(root.rglob(".cache")), "a build cache in the image"
    assert (cwd / "service" / "gen" / "batchgate" / "v1" / "batchgate_pb2.py").is_file()
    assert {p.name for p in (cwd / "build").iterdir()} == {"batchgate.pb", "openapi.json"}
    assert not (root / "src").exists()


def test_the_image_runs_the_gateway_and_the_command(image) -> None:
    root, env, cwd, cmd, _ = image
    ports = {name: str(free_port()) for name in ("HTTP_PORT", "GRPC_PORT", "ADMIN_PORT", "METRICS_PORT")}
    run_env = {**Builder.base_env(), **env, **ports, "WORKERS": "1", "ENVOY_CONCURRENCY": "1"}
    venv_bin = Path(env["VENV"]) / "bin"
    assert shutil.which(cmd[0], path=run_env["PATH"]) == str(venv_bin / "python")
    version = subprocess.run(["batchgate", "--help"], env=run_env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "batchgate" in version.stdout, version.stderr
    check = subprocess.run(
        ["batchgate", "config", "check", str(cwd / "config.example.json")],
        env={
            **run_env,
            "OPENAI_API_KEY": "sk-x",
            "AZURE_OPENAI_API_KEY": "k",
            "AZURE_OPENAI_ENDPOINT": "https://a.example",
            "ANTHROPIC_API_KEY": "k",
            "ANTHROPIC_BACKUP_API_KEY": "k",
        },
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(cmd, env=run_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "batchgate is up" in line or len(lines) > 200:
                break
        assert "batchgate is up" in "".join(lines), "".join(lines)
        edge = f"http://127.0.0.1:{ports['HTTP_PORT']}"
        resp = requests.post(f"{edge}/v1/batches/batch_image_1/cancel?provider=openai", timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] in ("cancelling", "cancelled")
        doc = requests.get(edge + OPENAPI_PATH, timeout=10)
        assert doc.status_code == 200 and doc.json()["openapi"] == "3.1.0"
        metrics = requests.get(f"http://127.0.0.1:{ports['METRICS_PORT']}/metrics", timeout=10)
        assert "batchgate_requests_total" in metrics.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        rest = proc.stdout.read()
        proc.stdout.close()
    assert code == 0, rest[-2000:]
