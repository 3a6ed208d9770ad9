"""Flower's deployment engine on one machine: a SuperLink and N SuperNodes as separate processes,
TLS everywhere (a throw-away CA made here), SuperNode authentication, one `flwr run`, and every
process stopped by its pid afterwards, also on failure. Real machines: see docs/flower.md.

    python -m zorba.flower.deploy --clients 3 --rounds 1 --model PATH --out runs/flower-deploy
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from zorba.errors import UserError

REPO = Path(__file__).resolve().parents[3]  # the Flower app folder: pyproject.toml with [tool.flwr.app]


def write_tls(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, signed by that CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(name("zorba test CA")).issuer_name(name("zorba test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(san, critical=False).sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def write_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC key pair in OpenSSH format: SuperNode authentication (private key stays on the node)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    private.chmod(0o600)
    return private, public


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Started processes, each in its own process group, stopped by pid (TERM, then KILL)."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.procs = logs, []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    # the group holds the children a SuperLink / SuperNode spawns (SuperExec, ServerApp, ClientApps)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def flower_env(root: Path) -> dict[str, str]:
    env = dict(os.environ, FLWR_HOME=str(root / "flwr-home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


def write_connection(env: dict[str, str], address: str, ca: Path) -> None:
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "zorba"\n\n[superlink.zorba]\naddress = "{address}"\nroot-certificates = "{ca}"\n'
    )


def flwr(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(["flwr", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"flwr {' '.join(args)} failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return proc.stdout


def register_nodes(env: dict[str, str], public_keys: list[Path]) -> None:
    """`flwr supernode register` for each key, concurrently (each CLI start costs seconds)."""
    procs = [subprocess.Popen(["flwr", "supernode", "register", str(k), "zorba"], env=env, cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k in public_keys]
    for key, proc in zip(public_keys, procs, strict=True):
        output, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"registering {key.name} failed: {output[-2000:]}")


def wait_for_result(env: dict[str, str], procs: Processes, result: Path, timeout: float) -> None:
    """Until the ServerApp wrote result.json; fail early if a process died or the run failed."""
    deadline, next_status = time.monotonic() + timeout, time.monotonic() + 20
    while not result.is_file():
        procs.check_alive()
        if time.monotonic() > next_status:
            if "failed" in flwr(env, "ls", "zorba", "--format", "json").lower():
                raise RuntimeError(f"the Flower run failed: {flwr(env, 'ls', 'zorba')[-3000:]}")
            next_status = time.monotonic() + 20
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {result} after {timeout:.0f} s")
        time.sleep(1)


def wait_for_port(port: int, procs: Processes, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.3)
    raise RuntimeError(f"nothing listens on port {port} after {seconds:.0f} s")


@contextlib.contextmanager
def federation(clients: int, root: Path, data_dir: str = "", auth: bool = True) -> Iterator[tuple[dict, Processes]]:
    """SuperLink + `clients` authenticated SuperNodes over TLS; stopped on exit, whatever happens."""
    tls = write_tls(root)
    env = flower_env(root)
    port = free_port()
    procs = Processes(root)
    try:
        link = ["flower-superlink", "--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]),
                "--ssl-keyfile", str(tls["key"]), "--port", str(port), "--database", str(root / "state.db"),
                "--disable-runtime-dependency-installation"]
        procs.start("superlink", link + (["--enable-supernode-auth"] if auth else []), env)
        wait_for_port(port, procs)
        write_connection(env, f"127.0.0.1:{port}", tls["ca"])
        keys = [write_node_key(root, f"node{i}") for i in range(clients)] if auth else []
        register_nodes(env, [public for _, public in keys])
        for i in range(clients):
            node_cfg = f"partition-id={i} num-partitions={clients}" + (f' data-dir="{data_dir}"' if data_dir else "")
            cmd = ["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(tls["ca"]),
                   "--port", str(free_port()), "--node-config", node_cfg, "--max-retries", "20"]
            if auth:
                cmd += ["--auth-supernode-private-key", str(keys[i][0])]
            procs.start(f"supernode{i}", cmd, env)
        yield env, procs
    finally:
        procs.stop_all()


def run_config_arg(values: dict[str, object]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def deploy(run_config: dict[str, object], clients: int, out: Path, timeout: float = 600, auth: bool = True,
           keep: Path | None = None) -> dict:
    """Start the federation, `flwr run` the app with `run_config`, wait for out/result.json."""
    if shutil.which("flower-superlink") is None:
        raise UserError("flower-superlink not found: install flwr")
    root = Path(tempfile.mkdtemp(prefix="zfd", dir="/tmp"))
    values = dict(run_config, clients=clients, out=str(out.resolve()))
    try:
        with federation(clients, root, str(run_config.get("data-dir", "")), auth) as (env, procs):
            flwr(env, "run", str(REPO), "zorba", "--run-config", run_config_arg(values), "--format", "json")
            wait_for_result(env, procs, out / "result.json", timeout)
        return json.loads((out / "result.json").read_text())
    finally:
        if keep is not None:
            shutil.copytree(root, keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.key", "node*"))
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--train-size", type=int, default=60)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--out", type=Path, default=Path("runs/flower-deploy"))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-auth", action="store_true", help="skip SuperNode authentication")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the processes' logs here")
    args = parser.parse_args(argv)
    run_config = {"model": args.model, "task": args.task, "rounds": args.rounds, "local-steps": args.local_steps,
                  "train-size": args.train_size, "data-dir": str(Path(args.data_dir).resolve()) if args.data_dir else ""}
    result = deploy(run_config, args.clients, args.out, args.timeout, auth=not args.no_auth, keep=args.keep_logs)
    comm = result["comm"]
    print(json.dumps({"clients_in_sync": result["clients_in_sync"], "final_model_sha256": result["final_model_sha256"],
                      "uplink_bytes_per_client_round": comm["uplink_bytes_per_client_round"],
                      "downlink_bytes_per_client_round": comm["downlink_bytes_per_client_round"],
                      "fedavg_bytes_per_client_round": comm["fedavg_bytes_per_client_round"]}))


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"zorba: error: {exc}", file=sys.stderr)
        sys.exit(2)
