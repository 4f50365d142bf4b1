"""`make up`: start the local stack, run the pipeline once for the demo universe, say where to look.

Drives the real Airflow through its REST API, as a user would from the UI: unpause the DAGs,
trigger `ohlcv_backfill` for the demo window (include/config/pipeline.yaml: demo), wait for it,
wait for the `train_models` run its asset update triggers, then print the UI address and login,
the lake prefix and what is in it, the MLflow address and the registered models.

Usage: python -m candleflow.demo [--state-dir DIR] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from candleflow.config import load_pipeline, load_universe
from candleflow.stack import REPO_ROOT, LocalStack

DEMO_DAGS = ("derivatives_ingest", "ohlcv_backfill", "features", "train_models", "ohlcv_ingest", "lake_compaction")
FINISHED = {"success", "failed"}


class AirflowClient:
    """The few Airflow 3 REST calls the demo needs (bearer token from /auth/token)."""

    def __init__(self, base_url: str, username: str = "admin", password: str = "admin"):
        self.base_url = base_url.rstrip("/")
        self.username, self.password = username, password
        self._token: str | None = None

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = resp.read()
        return json.loads(payload) if payload else {}

    def token(self) -> str:
        if self._token is None:
            out = self._request("POST", "/auth/token", {"username": self.username, "password": self.password},
                                auth=False)
            self._token = out["access_token"]
        return self._token

    def wait_for_dag(self, dag_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._request("GET", f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})

    def trigger(self, dag_id: str, conf: dict) -> dict:
        return self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})

    def runs(self, dag_id: str, limit: int = 5) -> list[dict]:
        out = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit={limit}")
        return out.get("dag_runs", [])

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id)}")

    def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
        out = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id)}"
                                   "/taskInstances?state=failed&limit=50")
        return [f"{t['task_id']}[{t.get('map_index', -1)}]" for t in out.get("task_instances", [])]

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] != last:
                print(f"  {dag_id} {run_id}: {run['state']}", flush=True)
                last = run["state"]
            if run["state"] in FINISHED:
                return run
            time.sleep(5)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish in {timeout:.0f} s")

    def wait_new_run(self, dag_id: str, after: datetime, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs(dag_id):
                queued = datetime.fromisoformat(run["queued_at"].replace("Z", "+00:00")) if run.get("queued_at") else None
                if queued and queued >= after:
                    return run
            time.sleep(3)
        raise TimeoutError(f"no {dag_id} run started after {after.isoformat()} within {timeout:.0f} s")


def _lake_summary(s3, bucket: str, prefix: str) -> tuple[int, int]:
    """(parquet objects, bytes) under a table's prefix."""
    from candleflow.lake import list_objects

    sizes = [size for key, (size, _) in list_objects(s3, bucket, prefix).items() if key.endswith(".parquet")]
    return len(sizes), sum(sizes)


def _registered_models(tracking_uri: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    lines = []
    for model in client.search_registered_models(filter_string="name LIKE 'candleflow-%'"):
        aliases = ", ".join(f"@{a}→v{v}" for a, v in sorted((model.aliases or {}).items()))
        latest = max((int(v.version) for v in client.search_model_versions(f"name='{model.name}'")), default=0)
        lines.append(f"{model.name}  (latest v{latest}{'; ' + aliases if aliases else ''})")
    return sorted(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m candleflow.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", default=str(REPO_ROOT / ".stack"))
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)

    cfg = load_pipeline()
    universe = load_universe()
    # The emulator replays time from the end of the demo window, so "now" for the exchanges is
    # 2024-10-30 and the demo's history (real SOL candles among it) is recent for every venue.
    clock = cfg.demo_end.strftime("%Y-%m-%dT%H:%M:%SZ")
    stack = LocalStack(Path(args.state_dir), emulator_clock=clock, lake_bucket=cfg.lake.bucket)
    started = time.monotonic()
    print("Starting the local stack (logs in .stack/logs):", flush=True)
    stack.up()

    client = AirflowClient(stack.airflow_url)
    for dag_id in DEMO_DAGS:
        client.wait_for_dag(dag_id, timeout=300)
    # ohlcv asset -> features -> features asset -> train_models. The scheduled DAGs stay paused:
    # the emulator's clock replays the demo window while Airflow's is today's.
    for dag_id in ("derivatives_ingest", "ohlcv_backfill", "features", "train_models"):
        client.unpause(dag_id)

    conf = {
        "exchanges": list(universe.exchanges),
        "symbols": list(cfg.demo_symbols),
        "timeframe": cfg.demo_timeframe,
        "start": cfg.demo_start.isoformat(),
        "end": cfg.demo_end.isoformat(),
    }
    # Funding rates first, so the features built after the backfill can join them.
    derivatives_conf = {"start": conf["start"], "end": conf["end"], "symbols": conf["symbols"]}
    print(f"Running derivatives_ingest (funding, open interest) for {', '.join(conf['symbols'])}:", flush=True)
    run = client.trigger("derivatives_ingest", derivatives_conf)
    derivatives = client.wait_run("derivatives_ingest", run["dag_run_id"], timeout=args.timeout)
    if derivatives["state"] != "success":
        print(f"  failed tasks: {', '.join(client.failed_tasks('derivatives_ingest', run['dag_run_id']))}")
    # derivatives_ingest was unpaused to run: keep its hourly schedule (today's hours) off.
    client.pause("derivatives_ingest")

    print(f"Running ohlcv_backfill for {', '.join(conf['symbols'])} on {', '.join(conf['exchanges'])}, "
          f"{conf['timeframe']}, {conf['start']} → {conf['end']}:", flush=True)
    run = client.trigger("ohlcv_backfill", conf)
    ingest_done = datetime.now(UTC)
    ingest = client.wait_run("ohlcv_backfill", run["dag_run_id"], timeout=args.timeout)
    if ingest["state"] != "success":
        print(f"  failed tasks: {', '.join(client.failed_tasks('ohlcv_backfill', run['dag_run_id']))}")
    print("Waiting for train_models (triggered by the features DAG's asset update after the ohlcv one):", flush=True)
    train = client.wait_new_run("train_models", after=ingest_done, timeout=args.timeout)
    train = client.wait_run("train_models", train["dag_run_id"], timeout=args.timeout)
    if train["state"] != "success":
        print(f"  failed tasks: {', '.join(client.failed_tasks('train_models', train['dag_run_id']))}")

    s3 = stack.s3_client()
    objects, size = _lake_summary(s3, cfg.lake.bucket, "ohlcv/")
    tables = {name: _lake_summary(s3, cfg.lake.bucket, f"{name}/")[0]
              for name in ("funding", "open_interest", "features", "quality")}
    models = _registered_models(stack.mlflow_url)
    print(f"""
candleflow is up ({time.monotonic() - started:.0f} s).
  Airflow UI     {stack.airflow_url}   login admin / admin
                 runs: derivatives_ingest {derivatives['state']}, ohlcv_backfill {ingest['state']},
                       features → train_models {train['state']}
  Lake           s3://{cfg.lake.bucket}/ohlcv/  ({objects} objects, {size / 1e6:.1f} MB) on {stack.s3_endpoint}
                 {', '.join(f'{name}/ {count} objects' for name, count in tables.items())}
                 quarantine: s3://{cfg.lake.bucket}/quarantine/   gap ledger: s3://{cfg.lake.bucket}/coverage/
  Coverage       {stack.airflow_url}/candleflow/coverage/{cfg.demo_timeframe}   (UI: Browse → OHLCV coverage)
  Data Docs      {stack.airflow_url}/candleflow/quality/{cfg.demo_timeframe}/index.html   (UI: Browse → Quality Data Docs {cfg.demo_timeframe})
  MLflow         {stack.mlflow_url}
  Models         {(chr(10) + '                 ').join(models) or '(none registered)'}
  Emulator       {stack.emulator_url}   (clock replaying from {clock})
Stop everything with: make down""")
    ok = all(r["state"] == "success" for r in (derivatives, ingest, train))
    return 0 if ok and models else 1


if __name__ == "__main__":
    sys.exit(main())
