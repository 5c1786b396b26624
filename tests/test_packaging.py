"""The wheel: what it ships, and that it drops into a fresh Django site exactly
as README.md ("Add to an existing Django site") says.

The install test runs the marked blocks of that section verbatim in a fresh
``django-admin startproject`` site and a fresh virtualenv, then runs a batch
end to end with the SDK against the fake upstream. It needs PyPI (through pip's
cache) and takes a few minutes, so it runs when ``PACKAGING_DJANGO`` names the
Django to install (``.ci/steps/50-packaging.sh`` runs it twice):

    PACKAGING_DJANGO='django>=5.2,<6' pytest -m packaging tests/test_packaging.py
    PACKAGING_PYTHON=~/.pyenv/versions/3.12.1/bin/python PACKAGING_DJANGO='django>=6,<7' pytest ...
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.conftest import chat_line, jsonl
from tests.live import free_port, wait_until

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parent.parent
INSTALL_DOC = ROOT / "README.md"
PACKAGES = ("files_app", "batches")
# Files of a package that are not code but must ship (setuptools package-data).
PACKAGE_DATA_DIRS = ("templates", "static")
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A clean copy of the repository, as a fresh clone would have it (no build leftovers)."""
    copy = tmp_path_factory.mktemp("checkout") / "django-openai-batches"
    shutil.copytree(ROOT, copy, ignore=NOT_SOURCE)
    return copy


@pytest.fixture(scope="module")
def wheel(checkout, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(checkout)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = dist.glob("django_openai_batches-*.whl")
    return path


def expected_package_files(checkout):
    """Every module and every template/static file of the two apps in the source tree."""
    expected = set()
    for package in PACKAGES:
        for path in (checkout / package).rglob("*"):
            relative = path.relative_to(checkout)
            if path.is_file() and (path.suffix == ".py" or any(part in PACKAGE_DATA_DIRS for part in relative.parts)):
                expected.add(relative.as_posix())
    return expected


def test_wheel_ships_the_apps_with_migrations_and_data_only(wheel, checkout):
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {*PACKAGES, wheel.name.split("-py3")[0] + ".dist-info"}
    assert not any(name.startswith(("project/", "tests/", "templates/", "bench/")) for name in names)
    expected = expected_package_files(checkout)
    assert expected - names == set()
    for migration in ("files_app/migrations/0001_initial.py", "batches/migrations/0001_initial.py"):
        assert migration in names
    assert "files_app/management/commands/create_api_key.py" in names


def test_wheel_metadata_declares_django_5_2_and_6(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    classifiers = metadata.get_all("Classifier")
    assert "Framework :: Django :: 5.2" in classifiers
    assert "Framework :: Django :: 6.0" in classifiers
    assert metadata["Requires-Python"] == ">=3.11"
    requires = metadata.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.replace(" ", "").startswith("django>=5.2") for r in core)
    # The apps run without the service's extras (schema, web server, drivers).
    assert not any(name in r for r in core for name in ("drf-spectacular", "gunicorn", "psycopg", "whitenoise"))


# --- the documented install, run for real --------------------------------------------------------


def doc_blocks(kind):
    """The code blocks of README.md marked ``<!-- wheel-test: KIND -->``, in order."""
    text = INSTALL_DOC.read_text()
    return re.findall(rf"<!-- wheel-test: {re.escape(kind)} -->\s*```[a-z]*\n(.*?)```", text, flags=re.S)


def test_install_doc_has_every_step():
    assert len(doc_blocks("shell")) == 2
    assert len(doc_blocks("settings.py")) == 2
    assert len(doc_blocks("urls.py")) == 1
    assert len(doc_blocks("background")) == 1
    assert len(doc_blocks("client")) == 1


def commands(block):
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class Site:
    """A fresh Django project in its own virtualenv."""

    def __init__(self, workdir, python, upstream_url, checkout):
        self.workdir = workdir
        self.venv = workdir / "venv"
        self.dir = workdir / "site"
        self.port = free_port()
        self.processes = []
        keep = (
            "HOME",
            "LANG",
            "LC_ALL",
            "TMPDIR",
            "PIP_CACHE_DIR",
            "PIP_INDEX_URL",
            "PIP_EXTRA_INDEX_URL",
            "PIP_FIND_LINKS",
            "PIP_CONFIG_FILE",
        )
        self.env = {key: os.environ[key] for key in keep if key in os.environ}
        self.env.update(
            PATH=f"{self.venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            VIRTUAL_ENV=str(self.venv),
            CHECKOUT=str(checkout),
            BATCHES_UPSTREAM_BASE_URL=upstream_url,
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PYTHONUNBUFFERED="1",
        )
        self.run(python, "-m", "venv", str(self.venv), cwd=workdir)
        self.run("python", "-m", "pip", "install", "-q", "--upgrade", "pip", cwd=workdir)

    def run(self, *args, cwd=None, timeout=900):
        result = subprocess.run([str(a) for a in args], cwd=cwd or self.dir, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    def shell(self, command):
        return self.run("bash", "-c", command)

    def on_port(self, text):
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def start(self, command):
        log = open(self.workdir / f"process{len(self.processes)}.log", "ab")
        self.processes.append(
            subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def serving(self):
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a site process exited:\n{self.logs()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/files", timeout=2)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False
        return False

    def logs(self):
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.workdir.glob("process*.log")))

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def site(tmp_path, fake_upstream, checkout):
    fake_upstream.reset()
    fake_upstream.configure(latency_ms=0, error_500_rate=0, error_503_rate=0, error_429_rate=0, timeout_rate=0, down=False)
    python = os.environ.get("PACKAGING_PYTHON") or sys.executable
    site = Site(tmp_path, python, fake_upstream.base_url, checkout)
    yield site
    site.stop()


@pytest.mark.live
@pytest.mark.skipif(
    not os.environ.get("PACKAGING_DJANGO"), reason="set PACKAGING_DJANGO (and PACKAGING_PYTHON) to run; .ci/steps/50-packaging.sh does"
)
def test_wheel_installs_into_a_fresh_django_site_and_runs_a_batch(site):
    django_requirement = os.environ["PACKAGING_DJANGO"]
    # The existing site: its Django, and a project made by its django-admin.
    site.run("python", "-m", "pip", "install", "-q", django_requirement, cwd=site.workdir)
    site.dir.mkdir()
    site.run("django-admin", "startproject", "hostsite", ".")
    project = site.dir / "hostsite"

    install, setup = doc_blocks("shell")
    for command in commands(install):
        site.shell(command)
    with open(project / "settings.py", "a") as settings:
        for block in doc_blocks("settings.py"):
            settings.write("\n" + block)
    with open(project / "urls.py", "a") as urls:
        urls.write("\n" + doc_blocks("urls.py")[0])

    versions = json.loads(
        site.run("python", "-c", "import json, sys, django; print(json.dumps([sys.version_info[:2], django.VERSION[:2]]))")
    )
    print(f"packaging: Python {versions[0]} Django {versions[1]}")
    if "<6" in django_requirement:
        assert versions[1] == [5, 2]
    else:
        assert versions[1][0] == 6
    # The Django this run installed is one the wheel says it supports.
    classifiers = json.loads(
        site.run(
            "python",
            "-c",
            "import json, importlib.metadata as m; print(json.dumps(m.metadata('django-openai-batches').get_all('Classifier')))",
        )
    )
    assert f"Framework :: Django :: {versions[1][0]}.{versions[1][1]}" in classifiers
    # Installed without the bundled service's extras.
    missing = site.run(
        "python", "-c", "import importlib.util as u; print([m for m in ('drf_spectacular', 'gunicorn', 'whitenoise') if u.find_spec(m)])"
    )
    assert missing.strip() == "[]"
    # The documented settings pass every system check, warnings included.
    site.run("python", "manage.py", "check", "--fail-level", "WARNING")

    outputs = [site.shell(command) for command in commands(setup)]
    api_key = outputs[-1].strip().splitlines()[-1]
    assert api_key.startswith("sk-batch-")

    for command in commands(doc_blocks("background")[0]):
        site.start(site.on_port(command))
    wait_until(site.serving, 60, interval=0.5, what="the host site's web server")

    lines = [chat_line(f"q{n}", content=f"question {n}") for n in range(3)]
    (site.dir / "requests.jsonl").write_bytes(jsonl(lines))
    client = f"API_KEY = {api_key!r}\n" + site.on_port(doc_blocks("client")[0])
    try:
        output = site.run("python", "-c", client, timeout=300)
    except (AssertionError, subprocess.TimeoutExpired):
        print(site.logs())
        raise
    status, *records = output.strip().splitlines()
    assert status.startswith("completed"), output
    results = {json.loads(record)["custom_id"]: json.loads(record) for record in records}
    assert set(results) == {"q0", "q1", "q2"}
    for result in results.values():
        assert result["response"]["status_code"] == 200
        assert result["error"] is None
