"""The Airflow side of the privacy-intent pipeline: stage pods, settings, the local pod runtime."""
