"""Conductor: a peer-to-peer workflow runner. etcd is the only shared state.

``from conductor import Client`` gives the Python client; ``conductor.node.Conductor`` is the
daemon that ``conductor run`` starts.
"""
__version__ = "0.1.0"

from .errors import ConductorError  # noqa: E402

__all__ = ["Client", "ConductorError", "__version__"]


def __getattr__(name: str):  # the client pulls in the etcd client; import it on first use
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(name)
