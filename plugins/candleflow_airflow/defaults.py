"""Defaults every candleflow DAG shares: owner, retries with exponential backoff, a timeout,
failure alerts through the webhook notifier, and retry rules per exception.

Kept free of I/O so DAG files stay cheap to parse.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

from candleflow_airflow.notifiers import WebhookNotifier

OWNER = "candleflow"
ALERTS_CONN_ID = "candleflow_alerts"

# Bad data and bad configuration do not heal by retrying: fail at once and alert. Everything
# else (network, throttling, S3 hiccups) takes the normal exponential-backoff retries.
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(exception="candleflow.quality.QualityError", action=RetryAction.FAIL,
                  reason="the batch failed its quality checks; it is quarantined, a retry would not change it"),
        RetryRule(exception="candleflow.config.ConfigError", action=RetryAction.FAIL,
                  reason="invalid configuration or parameters; fix them and re-run"),
    ],
)


def default_args(*, retries: int = 3, timeout: timedelta = timedelta(minutes=30)) -> dict:
    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timeout,
        "retry_policy": RETRY_POLICY,
        "on_failure_callback": [WebhookNotifier(http_conn_id=ALERTS_CONN_ID)],
    }
