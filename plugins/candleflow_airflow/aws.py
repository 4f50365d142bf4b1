"""AWS clients for tasks, from the Airflow connection that holds the endpoint and keys."""

from __future__ import annotations


def s3_client(conn_id: str):
    """A boto3 S3 client from the amazon provider's S3Hook (endpoint, region and keys come from
    the Airflow connection, e.g. the moto server offline)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()
