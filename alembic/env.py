"""Alembic environment: async, on an engine built by asyncdal.engine (see asyncdal.migrations)."""

from logging.config import fileConfig

from alembic import context

from asyncdal.migrations import run_env

if context.config.config_file_name is not None and not context.config.attributes.get("connection"):
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

run_env()
