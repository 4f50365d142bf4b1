"""Airflow notifier that posts failure alerts to a webhook held in an Airflow HTTP connection.

The connection (default id `candleflow_alerts`, see include/config/pipeline.yaml) holds the full
webhook URL as its host, e.g. `AIRFLOW_CONN_CANDLEFLOW_ALERTS='{"conn_type": "http",
"host": "https://hooks.slack.com/services/…"}'`. With no such connection the notifier logs a
warning instead of failing the callback: a missing alert channel must not hide the original error.
"""

from __future__ import annotations

from airflow.sdk import BaseNotifier


class WebhookNotifier(BaseNotifier):
    template_fields = ("http_conn_id",)

    def __init__(self, http_conn_id: str = "candleflow_alerts", timeout: float = 10.0):
        super().__init__()
        self.http_conn_id = http_conn_id
        self.timeout = timeout

    def notify(self, context) -> None:
        from candleflow.alerts import failure_payload

        post_webhook(self.http_conn_id, failure_payload(alert_from_context(context)), self.timeout,
                     what="failure alert")


def post_webhook(conn_id: str, payload: dict, timeout: float = 10.0, *, what: str = "alert") -> None:
    """POST a payload to the webhook of an Airflow HTTP connection. A missing connection or an
    unreachable channel is logged, never raised: an alert must not mask what it reports."""
    import logging

    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    log = logging.getLogger("candleflow.alerts")
    try:
        HttpHook(method="POST", http_conn_id=conn_id).run(endpoint=None, json=payload,
                                                           extra_options={"timeout": timeout})
    except AirflowNotFoundException:
        log.warning("No connection %r: %s not sent (define it to get alerts)", conn_id, what)
    except Exception as exc:  # an alert channel outage must not mask the task's own failure
        log.error("%s to %r could not be delivered: %s", what.capitalize(), conn_id, exc)


def ban_alert(conn_id: str):
    """A limiter's `alert` callable: delivers its ban alert (candleflow.alerts.ban_payload) to the
    failure webhook `conn_id`."""
    def send(payload: dict) -> None:
        post_webhook(conn_id, payload, what="ban alert")

    return send


def alert_from_context(context):
    from candleflow.alerts import FailureAlert

    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exception = context.get("exception")
    logical_date = context.get("logical_date")
    dag = context.get("dag")
    task = context.get("task")
    return FailureAlert(
        dag_id=getattr(ti, "dag_id", None) or getattr(dag, "dag_id", "?"),
        task_id=getattr(ti, "task_id", None) or getattr(task, "task_id", "?"),
        run_id=getattr(dag_run, "run_id", None) or getattr(ti, "run_id", "?"),
        try_number=getattr(ti, "try_number", None),
        map_index=getattr(ti, "map_index", None),
        logical_date=logical_date.isoformat() if logical_date else None,
        error=f"{type(exception).__name__}: {exception}" if exception else None,
        log_url=getattr(ti, "log_url", None),
        owner=getattr(task, "owner", None),
    )
