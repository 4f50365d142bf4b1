"""candleflow: crypto OHLCV collection, quality, lake, features, training and registry.

One module per pipeline stage; none of them imports Airflow, so each is importable and
testable on its own. The Airflow wiring lives in `dags/` and `plugins/candleflow_airflow`.
"""

__version__ = "0.1.0"
