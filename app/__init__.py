"""jobnode: a restart-safe job node speaking the Infernet node's REST API."""

__version__ = "0.1.0"
