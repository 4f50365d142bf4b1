"""The local stack: real stand-ins for every external system, on 127.0.0.1.

- the exchange emulator (`python -m candleflow.emulator`) for binance, coinbase, kraken, bybit, okx;
- a moto server as the S3 and SageMaker APIs;
- a real `mlflow server` (sqlite store, artifacts proxied to the S3 stand-in);
- `airflow standalone` for the UI (only for `make up`; tests run DAGs with `dag.test()`).

`make up` / `make down` and the test session both use this module, so the stack the tests
exercise is the one users run. Each service runs in its own process group, its pid is kept in
`<state_dir>/pids/<name>.pid` and its log in `<state_dir>/logs/<name>.log`; `stop` kills the
group, because `airflow standalone` leaves orphans on a plain SIGTERM to its parent.

Usage: python -m candleflow.stack up|down|status|env [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
AWS_KEY = "testing"
AWS_REGION = "us-east-1"
MLFLOW_BUCKET = "candleflow-mlflow"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Ports:
    emulator: int = 8765
    moto: int = 5000
    mlflow: int = 5001
    airflow: int = 8080

    @classmethod
    def free(cls) -> Ports:
        return cls(emulator=free_port(), moto=free_port(), mlflow=free_port(), airflow=free_port())


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 120.0


@dataclass
class LocalStack:
    state_dir: Path
    ports: Ports = field(default_factory=Ports)
    emulator_clock: str = "real"
    lake_bucket: str = "candleflow-lake"

    # ---- addresses -------------------------------------------------------------------------
    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.moto}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.emulator}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.airflow}"

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    def aws_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": AWS_KEY,
            "AWS_SECRET_ACCESS_KEY": AWS_KEY,
            "AWS_DEFAULT_REGION": AWS_REGION,
        }

    def pipeline_env(self, alerts_url: str | None = None) -> dict[str, str]:
        """Environment for anything that runs pipeline code: connections and endpoints."""
        aws_conn = {
            "conn_type": "aws",
            "login": AWS_KEY,
            "password": AWS_KEY,
            "extra": {"endpoint_url": self.s3_endpoint, "region_name": AWS_REGION},
        }
        env = {
            **self.aws_env(),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws_conn),
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "http", "host": self.mlflow_url}),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "CANDLEFLOW_EMULATOR_URL": self.emulator_url,
            "CANDLEFLOW_LAKE_BUCKET": self.lake_bucket,
            "CANDLEFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AIRFLOW__SCHEDULER__CREATE_CRON_DATA_INTERVALS": "True",
        }
        if alerts_url:
            env["AIRFLOW_CONN_CANDLEFLOW_ALERTS"] = json.dumps({"conn_type": "http", "host": alerts_url})
        return env

    def airflow_env(self) -> dict[str, str]:
        home = self.airflow_home
        return {
            **self.pipeline_env(),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.ports.airflow),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        }

    # ---- services ----------------------------------------------------------------------------
    def services(self) -> dict[str, Service]:
        py = str(VENV_BIN / "python")
        return {
            "moto": Service(
                "moto",
                [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.ports.moto)],
                f"{self.s3_endpoint}/moto-api/",
                env=self.aws_env(),
                ready_timeout=60,
            ),
            "emulator": Service(
                "emulator",
                [py, "-m", "candleflow.emulator", "--host", "127.0.0.1", "--port", str(self.ports.emulator),
                 "--clock", self.emulator_clock],
                f"{self.emulator_url}/__admin/health",
                ready_timeout=60,
            ),
            "mlflow": Service(
                "mlflow",
                [str(VENV_BIN / "mlflow"), "server",
                 "--backend-store-uri", f"sqlite:///{self.state_dir / 'mlflow.db'}",
                 "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/",
                 "--host", "127.0.0.1", "--port", str(self.ports.mlflow), "--workers", "1"],
                f"{self.mlflow_url}/health",
                env={
                    **self.aws_env(),
                    "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
                    # One worker, no job runner: 2 processes and ~0.5 GB instead of ~10 and ~2.6 GB.
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                },
                ready_timeout=180,
            ),
            "airflow": Service(
                "airflow",
                [str(VENV_BIN / "airflow"), "standalone"],
                f"{self.airflow_url}/api/v2/monitor/health",
                env=self.airflow_env(),
                ready_timeout=300,
            ),
        }

    def _pid_file(self, name: str) -> Path:
        return self.state_dir / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def pid(self, name: str) -> int | None:
        path = self._pid_file(name)
        if not path.exists():
            return None
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def start(self, name: str) -> int:
        """Start a service unless it already runs and answers; return its pid."""
        service = self.services()[name]
        running = self.pid(name)
        if running and _healthy(service.health_url):
            return running
        if running:
            self.stop(name)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "pids").mkdir(exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        restart_mlflow = False
        if name == "moto":
            # moto keeps S3 in memory: a new moto has no lake and none of MLflow's artifacts, so the
            # registry a previous run left in mlflow.db would name models whose files are gone
            # (promotion then fails loading the champion). The tracking server starts afresh with it.
            restart_mlflow = self.stop("mlflow")
            (self.state_dir / "mlflow.db").unlink(missing_ok=True)
        if name == "mlflow":
            self.ensure_buckets()
        if name == "airflow":
            self._prepare_airflow_home()
        # `airflow standalone` starts its components as `airflow …` from PATH: the venv's first.
        path = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, **service.env, "PYTHONUNBUFFERED": "1", "PATH": path}
        log = self.log_file(name).open("ab")
        proc = subprocess.Popen(
            service.argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(REPO_ROOT), start_new_session=True,
        )
        self._pid_file(name).write_text(str(proc.pid))
        deadline = time.monotonic() + service.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_file(name)}")
            if _healthy(service.health_url):
                if restart_mlflow:   # it was running: bring it back, on the new moto
                    self.start("mlflow")
                return proc.pid
            time.sleep(0.5)
        self.stop(name)
        raise TimeoutError(f"{name} did not answer {service.health_url} within {service.ready_timeout:.0f} s; "
                           f"see {self.log_file(name)}")

    def stop(self, name: str, timeout: float = 20.0) -> bool:
        pid = self.pid(name)
        self._pid_file(name).unlink(missing_ok=True)
        if pid is None:
            return False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return True
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    # Reap the leader if this process started it: a zombie still "exists" to
                    # killpg(…, 0) and would hold us here until the timeout.
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return True
                time.sleep(0.2)
        return True

    def s3_client(self):
        """A boto3 client of the S3 stand-in."""
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=AWS_REGION,
                            aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_KEY)

    def ensure_buckets(self) -> None:
        s3 = self.s3_client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in (self.lake_bucket, MLFLOW_BUCKET):
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)

    def _prepare_airflow_home(self) -> None:
        home = self.airflow_home
        home.mkdir(parents=True, exist_ok=True)
        # A fixed local login (admin/admin) instead of a generated password nobody can find.
        (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "admin"}))

    def up(self, names: tuple[str, ...] = ("moto", "emulator", "mlflow", "airflow")) -> None:
        for name in names:
            pid = self.start(name)
            print(f"  {name:<9} pid {pid:<7} {self.services()[name].health_url}", flush=True)
        if "airflow" in names:
            self.ensure_pools()

    def ensure_pools(self) -> None:
        """Create or update the pools the tasks run in (one per exchange, include/config/budgets.yaml;
        the coverage report's):
        a task whose pool does not exist is never scheduled."""
        pools = self.airflow_home / "pools.json"
        pools.write_text(json.dumps(pools_spec(), indent=2, sort_keys=True))
        env = {**os.environ, **self.airflow_env(), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        subprocess.run([str(VENV_BIN / "airflow"), "pools", "import", str(pools)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(REPO_ROOT))

    def down(self) -> None:
        for name in ("airflow", "mlflow", "emulator", "moto"):
            if self.stop(name):
                print(f"  stopped {name}")


def pools_spec() -> dict[str, dict]:
    """The pools in `airflow pools import` format ({name: {slots, description, include_deferred}})."""
    from candleflow.config import pipeline_pools

    return {name: {**pool, "include_deferred": False} for name, pool in pipeline_pools().items()}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 200 <= resp.status < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m candleflow.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "env", "pools"],
                        help="pools: print the Airflow pools spec (for `airflow pools import`)")
    parser.add_argument("--state-dir", default=str(REPO_ROOT / ".stack"))
    parser.add_argument("--clock", default=os.environ.get("CANDLEFLOW_EMULATOR_CLOCK", "real"),
                        help="emulator clock: 'real' or an ISO instant to replay from")
    parser.add_argument("--only", nargs="*", help="services to start (default: all)")
    args = parser.parse_args(argv)
    stack = LocalStack(Path(args.state_dir), emulator_clock=args.clock)
    if args.command == "up":
        stack.up(tuple(args.only) if args.only else ("moto", "emulator", "mlflow", "airflow"))
    elif args.command == "down":
        stack.down()
    elif args.command == "status":
        for name, service in stack.services().items():
            pid = stack.pid(name)
            state = "up" if pid and _healthy(service.health_url) else ("starting/unhealthy" if pid else "down")
            print(f"  {name:<9} {state:<18} {service.health_url}")
    elif args.command == "pools":
        print(json.dumps(pools_spec(), indent=2, sort_keys=True))
    elif args.command == "env":
        for key, value in stack.airflow_env().items():
            print(f"export {key}='{value}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
