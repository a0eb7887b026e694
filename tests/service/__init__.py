"""The example service (examples/service) and what a service needs of asyncdal: health, graceful
shutdown, metrics, the slow log and tracing."""
