"""``python -m airflow_provider_vonage_studio.testing.emulator``: see :mod:`.cli`."""

from airflow_provider_vonage_studio.testing.emulator.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
