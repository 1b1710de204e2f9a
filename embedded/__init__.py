"""The embedded default stack (local Airflow, GCS emulator, local pod runtime) and the demo."""
