"""candleflow.stack: the local stand-ins' lifetimes stay consistent across `make down` / `make up`."""

from __future__ import annotations

from candleflow.stack import LocalStack, Ports


def test_a_new_moto_starts_the_mlflow_registry_afresh_a_running_one_keeps_it(tmp_path):
    """moto holds MLflow's artifacts in memory: a registry surviving a moto restart names models
    whose files are gone (a second `make up` failed promoting against the old champion)."""
    stack = LocalStack(tmp_path / "stack", Ports.free())
    registry = stack.state_dir / "mlflow.db"
    registry.parent.mkdir(parents=True)
    registry.write_bytes(b"a registry whose artifacts lived in the previous moto")
    try:
        pid = stack.start("moto")
        assert not registry.exists()
        registry.write_bytes(b"the registry of this moto")
        assert stack.start("moto") == pid   # already running: nothing restarted, nothing dropped
        assert registry.read_bytes() == b"the registry of this moto"
    finally:
        stack.stop("moto")


def test_a_new_moto_under_a_running_mlflow_brings_mlflow_back_on_an_empty_registry(tmp_path):
    """`stack up --only moto` after moto died: MLflow is stopped, its registry dropped (its
    artifacts died with moto) and started again, not left down."""
    from mlflow import MlflowClient

    stack = LocalStack(tmp_path / "stack", Ports.free())
    try:
        stack.start("moto")
        first = stack.start("mlflow")
        # both URIs: an earlier test in the session may have set a process-wide registry URI
        client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
        client.create_registered_model("candleflow-BTC")
        stack.stop("moto")
        stack.start("moto")
        second = stack.pid("mlflow")
        assert second is not None and second != first
        assert [m.name for m in client.search_registered_models()] == []
    finally:
        stack.down()
