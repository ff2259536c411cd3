"""Flower's real processes on 127.0.0.1, started and stopped from Python: one `flower-superlink` (with
`--simulation`: the simulation engine, virtual clients in Ray workers), any number of `flower-supernode`s
(each a device: its own node config, its own process group so it can be killed like a dying phone), and
`flwr run` of the Flower App in federated/. Used by tests/test_federated.py and benchmarks/federated.py;
README "Federated learning" gives the same commands by hand.

Every process runs with FLWR_HOME inside `work` (Flower's config.toml there names the SuperLink connection
"local-test"), on free ports, with runtime dependency installation off (everything is installed already).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "federated"
CONNECTION = "local-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_value(value) -> str:
    """A run / node config value as Flower's `key=value` parser reads it (TOML: strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def config_string(config: dict) -> str:
    return " ".join(f"{k}={config_value(v)}" for k, v in config.items())


class LocalFederation:
    """Context manager: a SuperLink on a free port; add_supernode() / kill() / run(); everything stopped on exit."""

    def __init__(self, work: Path, bin_dir: Path, simulation: bool = False):
        self.work, self.bin, self.simulation = Path(work), Path(bin_dir), simulation
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()

    def _env(self, home: Path) -> dict:
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1", FLWR_TELEMETRY_ENABLED="0",
                   PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("PYTHONPATH", None)
        return env

    def _start(self, name: str, args: list[str], home: Path) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self._env(home),
                                cwd=self.work, start_new_session=True)
        self.procs[name] = proc
        return proc

    def __enter__(self) -> "LocalFederation":
        self.work.mkdir(parents=True, exist_ok=True)
        self.home = self.work / "flwr-home"
        self.home.mkdir(exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        args = [str(self.bin / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                "--database", ":flwr-in-memory:", "--disable-runtime-dependency-installation"]
        if self.simulation:
            args.append("--simulation")
        self._start("superlink", args, self.home)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.procs["superlink"].poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"flower-superlink did not start: {self.log('superlink')[-2000:]}")
                time.sleep(0.3)

    def add_supernode(self, name: str, node_config: dict) -> subprocess.Popen:
        args = [str(self.bin / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", config_string(node_config), "--max-retries", "3"]
        return self._start(name, args, self.work / f"home-{name}")

    def kill(self, name: str) -> None:
        """SIGKILL a process and everything it started (a SuperNode and its ClientApp process)."""
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.procs[name].wait()

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def run(self, run_config: dict, num_supernodes: int | None = None, timeout: float = 900,
            client_cpus: int = 1) -> dict:
        """`flwr run federated local-test --stream` and wait for the run to end -> {"status", "output"}.
        `num_supernodes`: the simulation engine's number of virtual clients; `client_cpus`: CPUs Ray reserves per
        client (Flower's default is 2: one client at a time on a 2-core machine; ours use 1 thread)."""
        args = [str(self.bin / "flwr"), "run", str(APP), CONNECTION, "--stream",
                "--run-config", config_string(run_config)]
        if num_supernodes is not None:
            args += ["--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus}"]
        proc = subprocess.run(args, capture_output=True, text=True, env=self._env(self.home), cwd=self.work,
                              timeout=timeout)
        output = proc.stdout + proc.stderr
        listing = subprocess.run([str(self.bin / "flwr"), "ls", CONNECTION, "--format", "json"], capture_output=True,
                                 text=True, env=self._env(self.home), cwd=self.work, timeout=60)
        try:
            status = json.loads(listing.stdout)["runs"][0]["status"]
        except (ValueError, KeyError, IndexError):
            status = f"unknown ({listing.stdout[-500:]}{listing.stderr[-500:]})"
        return {"status": status, "output": output, "returncode": proc.returncode}

    def __exit__(self, *exc) -> None:
        for name in list(self.procs):
            if self.procs[name].poll() is None:
                self.kill(name)
