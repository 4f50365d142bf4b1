# candleflow production image: the official Airflow image plus this project's locked runtime.
# Used by every Airflow service in docker-compose.yaml (api-server, scheduler, dag-processor,
# celery worker, triggerer, init) and by the mlflow service, so the MLflow server and its
# clients run the very same mlflow version from requirements.lock.
#
# Build: docker build -t candleflow-airflow:3.3.2 .   (docker compose build does the same)
#
# Keep the Airflow version here equal to `apache-airflow==X` in requirements.txt; the test
# tests/unit/test_deploy_files.py fails when the two drift apart.
FROM apache/airflow:3.3.2-python3.11

# The base image already runs as the unprivileged `airflow` user (uid 50000, gid 0) and sets
# PIP_USER=true, so packages install into /home/airflow/.local. Nothing here needs root, so no
# USER line: a step that ever needs root must switch back to `USER 50000:0` afterwards.
WORKDIR /opt/airflow

# The lock pins `torch==2.13.0+cpu`. Locally that wheel comes from a wheel folder
# (`--find-links /opt/wheels`, see the Makefile); PyPI itself only carries the multi-GB CUDA
# build under plain `torch==2.13.0`. In the image the same +cpu wheel is taken from PyTorch's
# CPU index, hence `--extra-index-url https://download.pytorch.org/whl/cpu`.
#
# `apache-airflow==3.3.2` is named again so pip can never move Airflow off the base image's
# version. The Celery executor and the FAB auth manager that docker-compose.yaml uses come
# from providers the base image already ships (installed with Airflow's constraints); pip
# install does not remove packages the lock does not list.
COPY --chown=airflow:0 requirements.lock /opt/airflow/requirements.lock
RUN pip install --no-cache-dir \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        "apache-airflow==3.3.2" \
        -r /opt/airflow/requirements.lock

# Project code: thin DAG files, the Airflow adapters (plugins/candleflow_airflow) and the
# business logic plus its YAML config (include/candleflow, include/config).
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 include/ /opt/airflow/include/

# The package is put on the path instead of `pip install -e .`: an editable install would
# need a writable build dir in the image, and these two folders are exactly what pyproject's
# [tool.setuptools.packages.find] exports (candleflow*, candleflow_airflow*).
# include/candleflow/config.py finds include/config next to itself, so no config path is set.
ENV PYTHONPATH=/opt/airflow/include:/opt/airflow/plugins
