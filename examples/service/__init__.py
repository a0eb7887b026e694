"""The example HTTP service (see app.py): `uvicorn examples.service.app:app`."""
