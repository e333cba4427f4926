"""labelops: the pure logic of the pipeline. Nothing in this package imports Airflow."""

__version__ = "0.1.0"
