# Airflow image for the labelops docker-compose stack.
# Keep this tag in step with the apache-airflow pin in requirements.txt
# (tests/test_compose.py checks it).
FROM apache/airflow:3.3.2-python3.11

# Official "extend the image" pattern: install as the airflow user and re-state the
# Airflow version so pip never up- or downgrades Airflow itself. AIRFLOW_VERSION is
# set by the base image. The extras are what the compose stack runs on
# (CeleryExecutor on Redis, Postgres metadata DB, FAB auth manager); the base image
# already ships them, naming them keeps them installed whatever requirements.txt says.
USER airflow
COPY --chown=airflow:0 requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir \
        "apache-airflow[celery,fab,postgres,redis]==${AIRFLOW_VERSION}" \
        -r /tmp/requirements.txt

# DVC (the export stage) in its own venv: its S3 plugin pins a botocore older than the amazon provider needs.
# git for the dataset repository.
USER root
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --chown=airflow:0 requirements-dvc.txt /tmp/requirements-dvc.txt
RUN python -m venv /home/airflow/dvc && /home/airflow/dvc/bin/pip install --no-cache-dir -r /tmp/requirements-dvc.txt
ENV LABELOPS_DVC=/home/airflow/dvc/bin/dvc
